"""MATLAB-compatible ``imresize`` (bicubic, antialiased) in torch.

DIV2K's bicubic LR images, and the LR targets of the AESOP pretraining, were made with MATLAB's
``imresize``. Its kernel and boundary handling differ from ``F.interpolate(..., antialias=True)``,
so a faithful LR needs this function. The resize is separable and linear, so it is computed as two
matrix products with cached weight matrices (symmetric boundary padding folded into the weights):
exact, batched, differentiable and fast on any device.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["imresize", "make_lr"]


def _cubic(x: Tensor) -> Tensor:
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=64)
def _weight_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> Tensor:
    """(out_len, in_len) float64 matrix; MATLAB's kernel, normalised, symmetric padding folded in."""
    kernel_width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        kernel_width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = u[:, None] - idx
    weights = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    weights = weights / weights.sum(1, keepdim=True)
    # 1-based -> 0-based, then MATLAB 'symmetric' padding (mirror including the edge pixel)
    j = (idx - 1).long() % (2 * in_len)
    j = torch.where(j >= in_len, 2 * in_len - 1 - j, j)
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, j, weights)
    return matrix


def imresize(x: Tensor, scale: float, *, antialias: bool = True) -> Tensor:
    """Resize like MATLAB's ``imresize(x, scale, 'bicubic')``.

    Args:
        x: Images ``(..., H, W)``, float (any leading dimensions: ``CHW``, ``NCHW``).
        scale: Factor; ``1/4`` downscales x4, ``4`` upscales. The output size is
            ``ceil(H * scale) x ceil(W * scale)``, as in MATLAB.
        antialias: Widen the kernel when downscaling (MATLAB's default).

    Returns:
        The resized images, same dtype and device. Values are not clipped or rounded.

    Examples:
        >>> x = torch.rand(3, 16, 24, dtype=torch.float64)
        >>> imresize(x, 1 / 4).shape
        torch.Size([3, 4, 6])
        >>> bool(torch.allclose(imresize(torch.ones(1, 8, 8), 0.5), torch.ones(1, 4, 4)))
        True
    """
    if not x.is_floating_point():
        raise TypeError(f"imresize needs a float tensor, got {x.dtype}; use x.float() / 255.")
    if x.ndim < 2:
        raise ValueError(f"imresize needs (..., H, W), got shape {tuple(x.shape)}.")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    h, w = x.shape[-2:]
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    wh = _weight_matrix(h, out_h, float(scale), antialias).to(device=x.device, dtype=x.dtype)
    ww = _weight_matrix(w, out_w, float(scale), antialias).to(device=x.device, dtype=x.dtype)
    return wh @ x @ ww.T


def make_lr(hr: Tensor, scale: int) -> Tensor:
    """The LR image of ``hr`` as bicubic SR datasets make it: MATLAB ``imresize(hr, 1/scale)`` in
    float64 on the 0-255 scale, clipped and rounded to 8 bits as MATLAB's ``uint8`` conversion does
    (halves away from zero, where ``torch.round`` would round them to even).

    Args:
        hr: HR images ``(..., H, W)`` in [0, 1], float.
        scale: The SR scale.

    Returns:
        The LR images, ``(..., ceil(H/scale), ceil(W/scale))``, in ``hr``'s dtype, multiples of 1/255.

    Examples:
        >>> lr = make_lr(torch.rand(3, 16, 16), 4)
        >>> lr.shape, bool(((lr * 255).round() == lr * 255).all())
        (torch.Size([3, 4, 4]), True)
    """
    lr = imresize(hr.double() * 255, 1 / scale).clamp(0, 255)
    return (torch.floor(lr + 0.5) / 255).to(hr.dtype)  # non-negative: floor(v + 0.5) is MATLAB's round
