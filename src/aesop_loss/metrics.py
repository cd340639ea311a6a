"""Fidelity metrics as the SR literature reports them, and the paper's AE-PSNR and LR-PSNR."""

from __future__ import annotations

import torch
from torch import Tensor

from .archs import AutoEncoder
from .resize import imresize

__all__ = ["ae_psnr", "lr_psnr", "psnr", "rgb_to_y"]


def rgb_to_y(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma of RGB images in [0, 1] (as MATLAB's ``rgb2ycbcr``), scaled to [0, 1].

    Examples:
        >>> float(rgb_to_y(torch.ones(1, 3, 1, 1)))  # white -> 235/255
        0.9215686321258545
    """
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr(x: Tensor, y: Tensor, *, crop_border: int = 0, y_channel: bool = True) -> Tensor:
    """PSNR in dB per image, on the Y channel with ``crop_border`` pixels removed (SR convention).

    Args:
        x: Images ``(N, 3, H, W)`` in [0, 1]; clipped and rounded to 8 bits first.
        y: Reference images of the same shape.
        crop_border: Pixels to drop at each edge (usually the SR scale).
        y_channel: Measure on BT.601 luma instead of RGB.

    Returns:
        ``(N,)`` PSNR values; ``inf`` for identical images (as BasicSR's ``calculate_psnr``).

    Examples:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> round(float(psnr(x, x + 0.1, y_channel=False)), 2)
        19.83
        >>> float(psnr(x, x))
        inf
    """
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}.")
    x = (x.detach().float().clamp(0, 1) * 255).round() / 255
    y = (y.detach().float().clamp(0, 1) * 255).round() / 255
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()  # mse 0 -> inf


@torch.no_grad()
def ae_psnr(ae: AutoEncoder, sr: Tensor, hr: Tensor, *, crop_border: int | None = None) -> Tensor:
    """The paper's AE-PSNR: PSNR(AE(hr), AE(sr)), fidelity in AE space (higher is better)."""
    border = ae.scale if crop_border is None else crop_border
    return psnr(ae(sr), ae(hr), crop_border=border)


def lr_psnr(sr: Tensor, hr: Tensor, *, scale: int) -> Tensor:
    """The paper's LR-PSNR: PSNR of the MATLAB-bicubic downsampled pair (LR consistency)."""
    return psnr(imresize(sr.double(), 1 / scale), imresize(hr.double(), 1 / scale))
