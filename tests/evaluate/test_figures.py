"""Labelled grids: every label fits its column (long ones wrap onto more lines)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stabledub_core.errors import InvalidInputError
from stabledub_core.evaluate.figures import LABEL_HEIGHT, labelled_grid, wrap_label


def test_long_labels_wrap_to_fit_their_column_and_short_ones_stay_on_one_line():
    scale = 0.5
    lines = wrap_label("w/o mask exposure, occluder exposed, epsilon recipe", 248, scale)
    assert len(lines) > 1
    assert " ".join(lines) == "w/o mask exposure, occluder exposed, epsilon recipe"
    assert all(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= 248 for line in lines)
    assert wrap_label("ours", 248, scale) == ["ours"]


def test_the_label_bar_grows_with_the_longest_label():
    tile = np.zeros((192, 256, 3), np.uint8)
    short = labelled_grid([[tile, tile]], ["source", "ours"])
    long = labelled_grid([[tile, tile]], ["source", "w/o mask exposure, occluder exposed, epsilon recipe"])
    assert short.shape == (LABEL_HEIGHT + 192, 512, 3)
    assert long.shape[0] > short.shape[0] and (long.shape[0] - 192) % LABEL_HEIGHT == 0
    assert np.array_equal(long[-192:], short[-192:])  # the images themselves are unchanged
    with pytest.raises(InvalidInputError):
        labelled_grid([[tile]], ["source", "ours"])
