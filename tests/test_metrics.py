"""PSNR as BasicSR computes it: Y channel of 8-bit-rounded images, inf for identical images."""

from __future__ import annotations

import math

import pytest
import torch

from aesop_loss.metrics import psnr


def test_identical_images_give_inf():
    x = torch.rand(2, 3, 32, 32)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.isinf(psnr(x, x, crop_border=4, y_channel=False)).all()


@pytest.mark.parametrize(("channel", "weight"), [(0, 65.481), (1, 128.553), (2, 24.966)])
def test_one_level_off_in_a_512_image_is_not_capped(channel, weight):
    x = torch.full((1, 3, 512, 512), 0.5)
    x = (x * 255).round() / 255
    y = x.clone()
    y[0, channel, 100, 100] += 1 / 255  # one 8-bit level, one pixel
    # BasicSR: Y = 16 + 65.481 R + 128.553 G + 24.966 B (in [0, 255] units, inputs in [0, 1])
    dy = weight / 255 / 255  # the Y difference in [0, 1] units
    expected = 10 * math.log10(1 / (dy**2 / 512**2))
    assert float(psnr(x, y)) == pytest.approx(expected, rel=1e-6)
    assert float(psnr(x, y)) > 100  # the old 100 dB cap is gone


def test_crop_border_is_off_by_default():
    x = torch.rand(1, 3, 16, 16)
    y = x.clone()
    y[..., 0, 0] = 1 - y[..., 0, 0]  # a border pixel
    assert math.isfinite(float(psnr(x, y)))
    assert math.isinf(float(psnr(x, y, crop_border=4)))
