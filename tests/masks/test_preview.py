"""Preview images of the masks (the preview command: tests/cli/test_commands.py)."""

from __future__ import annotations

import cv2
import numpy as np

from stabledub_core.masks import exposure
from stabledub_core.masks.boxes import clamp_box
from stabledub_core.masks.preview import PreviewStyle, preview_strip, render_frame
from stabledub_core.masks.crop_spans import plan_crop_spans
from helpers.occluded_media import occluded, with_missing


def _has_colour(image: np.ndarray, colour, tolerance: int = 40) -> int:
    return int((np.abs(image.astype(int) - np.array(colour)).max(axis=-1) <= tolerance).sum())


def test_render_shows_box_masks_and_patches(media_dir, face_model_path):
    frames, track = occluded(media_dir, face_model_path)
    windows = plan_crop_spans(track[0:16], length=16, crop_size=256)
    style = PreviewStyle(tile=200)
    patches = exposure.from_list([[9, 9], [9, 10]], grid=16)
    plain = render_frame(frames[0], 0, windows[0], None, style)
    shown = render_frame(frames[0], 0, windows[0], patches, style)
    assert shown.shape == (200, 200, 3) and shown.dtype == np.uint8
    assert _has_colour(shown, style.box, 10) > 300  # the crop box outline
    assert _has_colour(shown, style.coarse, 60) > 50  # Mc outline
    # The two exposed patches turn about 2 x 10 x 10 tile pixels yellow.
    changed = (shown != plain).any(axis=-1)
    assert 100 < changed.sum() < 600

    def yellowness(image):
        return image[..., :2].astype(int).mean(axis=-1) - image[..., 2]

    assert (yellowness(shown) - yellowness(plain))[changed].mean() > 40
    # Mu tints the chin blue; the tile's corner (outside Mu and the box) is the plain frame.
    x0, y0, x1, y1 = windows[0].box
    view = clamp_box((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * (1 + 2 * style.margin), frames.shape[1:3])
    raw = cv2.resize(frames[0][view[1]:view[3], view[0]:view[2]], (200, 200), interpolation=cv2.INTER_AREA)
    chin = np.round((0.6 * track.landmarks[0, 17] + 0.4 * track.landmarks[0, 152] - view[:2]) * 200
                    / (view[2] - view[0])).astype(int)
    tinted, source = plain[chin[1], chin[0]].astype(int), raw[chin[1], chin[0]].astype(int)
    assert tinted[2] - tinted[0] > source[2] - source[0] + 40
    assert np.abs(plain[-3:, -3:].astype(int) - raw[-3:, -3:]).max() <= 1

    strip = preview_strip(frames, plan_crop_spans(with_missing(track, [5]), length=16, crop_size=256), [0, 5, 40],
                          {0: patches}, style)
    assert strip.shape == (200, 600, 3)
