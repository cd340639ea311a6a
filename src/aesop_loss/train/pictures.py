"""Labelled side-by-side pictures, as the examples write them (LR | SR | HR, each under its name)."""

from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .._io import atomic_path, tensor_bytes

__all__ = ["save_labelled"]

_BAND = 16  # pixels of the dark label band above the images


def save_labelled(panels: dict[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Save images side by side as one PNG, each with its label on a dark band above it, atomically.

    Args:
        panels: ``{label: image}``, images ``(1, 3, H, W)`` (or ``(3, H, W)``) in [0, 1], all of one
            height.
        path: The PNG to write (its folder is created).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_labelled({"a": torch.zeros(3, 8, 8), "b": torch.ones(3, 8, 8)}, f"{d}/x.png")
        ...     Image.open(f"{d}/x.png").size
        (16, 24)
    """
    images = [p if p.ndim == 4 else p[None] for p in panels.values()]
    row = torch.cat(images, dim=-1)[0].clamp(0, 1)
    pixels = (row * 255).round().byte().permute(1, 2, 0).cpu().contiguous()  # (H, W, 3), no NumPy
    height, width = pixels.shape[0], images[0].shape[-1]
    canvas = Image.new("RGB", (pixels.shape[1], height + _BAND), (24, 24, 24))
    strip = Image.frombytes("RGB", (pixels.shape[1], height), bytes(tensor_bytes(pixels)))
    canvas.paste(strip, (0, _BAND))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(panels):
        draw.text((i * width + 4, 3), label, fill=(255, 255, 255))  # Pillow's built-in font
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
