"""The benchmark's metrics on arrays with known answers."""

import math

import numpy as np
import pytest

from stabledub_core.errors import InvalidInputError
from stabledub_core.evaluate.metrics import flicker, pearson, psnr, ssim


def test_psnr_known_values_and_masks():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf
    b[0, 0] = 255  # one pixel of 16 off by 255 in every channel: MSE = 255^2 / 16
    assert psnr(a, b) == pytest.approx(10 * math.log10(16))
    mask = np.zeros((4, 4), bool)
    mask[1:] = True
    assert psnr(a, b, mask) == math.inf  # the differing pixel is outside the mask
    assert math.isnan(psnr(a, b, np.zeros((4, 4), bool)))


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 40, image.shape), 0, 255)
    assert ssim(noisy, image) < 0.9
    with pytest.raises(InvalidInputError):
        ssim(image, image[:16])


def test_pearson():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones(10)))


def test_flicker_counts_only_changes_that_differ_from_the_truth():
    rng = np.random.default_rng(1)
    truth = rng.random((6, 8, 8)) * 255
    assert flicker(truth + 30, truth) == pytest.approx(0.0)  # a constant offset does not flicker
    jitter = truth + rng.normal(0, 10, truth.shape)
    assert flicker(jitter, truth) > 5
    with pytest.raises(InvalidInputError):
        flicker(truth[:1], truth[:1])
