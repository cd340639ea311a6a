"""Fidelity metrics as the SR literature reports them, the paper's AE-PSNR and LR-PSNR, and the
95% interval of a mean that comparisons of them are reported with."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .archs import AutoEncoder
from .resize import imresize

__all__ = ["MeanInterval", "ae_psnr", "lr_psnr", "psnr", "rgb_to_y"]


def rgb_to_y(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma of RGB images in [0, 1] (as MATLAB's ``rgb2ycbcr``), scaled to [0, 1].

    Examples:
        >>> float(rgb_to_y(torch.ones(1, 3, 1, 1)))  # white -> 235/255
        0.9215686321258545
    """
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr(
    x: Tensor, y: Tensor, *, crop_border: int = 0, y_channel: bool = True, max_db: float | None = None
) -> Tensor:
    """PSNR in dB per image, on the Y channel with ``crop_border`` pixels removed (SR convention).

    Args:
        x: Images ``(N, 3, H, W)`` in [0, 1]; clipped and rounded to 8 bits first.
        y: Reference images of the same shape.
        crop_border: Pixels to drop at each edge (usually the SR scale).
        y_channel: Measure on BT.601 luma instead of RGB.
        max_db: Cap every value at this many dB. Identical 8-bit images (common on flat or black
            crops) score ``inf``, which no mean or interval survives; a cap applied to every
            method alike keeps such crops in a paired comparison. ``None``: no cap.

    Returns:
        ``(N,)`` PSNR values; ``inf`` for identical images (as BasicSR's ``calculate_psnr``) unless
        ``max_db`` caps them.

    Examples:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> round(float(psnr(x, x + 0.1, y_channel=False)), 2)
        19.83
        >>> float(psnr(x, x)), float(psnr(x, x, max_db=60))
        (inf, 60.0)
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
    db = (10 * torch.log10(1.0 / mse)).float()  # mse 0 -> inf
    return db if max_db is None else db.clamp(max=max_db)


@torch.no_grad()
def ae_psnr(
    ae: AutoEncoder, sr: Tensor, hr: Tensor, *, crop_border: int | None = None, max_db: float | None = None
) -> Tensor:
    """The paper's AE-PSNR: PSNR(AE(hr), AE(sr)), fidelity in AE space (higher is better);
    ``max_db`` as in ``psnr``."""
    border = ae.scale if crop_border is None else crop_border
    return psnr(ae(sr), ae(hr), crop_border=border, max_db=max_db)


def lr_psnr(sr: Tensor, hr: Tensor, *, scale: int, max_db: float | None = None) -> Tensor:
    """The paper's LR-PSNR: PSNR of the MATLAB-bicubic downsampled pair (LR consistency);
    ``max_db`` as in ``psnr``."""
    return psnr(imresize(sr.double(), 1 / scale), imresize(hr.double(), 1 / scale), max_db=max_db)


def _t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (bisection on its CDF).

    Examples:
        >>> round(_t_quantile_975(1), 3), round(_t_quantile_975(10), 3), round(_t_quantile_975(1000), 2)
        (12.706, 2.228, 1.96)
    """
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:  # one half plus Simpson's rule on the density over [0, x]
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 100.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class MeanInterval:
    """A mean over ``n`` units with its 95% interval (Student's t), e.g. of paired differences.

    A difference whose interval holds 0 is a tie: the data cannot tell its sign.

    Examples:
        >>> d = MeanInterval.of([0.4, 0.6, 0.5, 0.7])  # e.g. dB gained by one loss over another, 4 seeds
        >>> round(d.mean, 2), round(d.low, 2), round(d.high, 2), d.tie
        (0.55, 0.34, 0.76, False)
        >>> MeanInterval.of([1.0, -0.8, 0.5]).tie
        True
    """

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanInterval:
        """The mean of ``values`` and its 95% interval (infinite for fewer than two values).

        Raises:
            ValueError: A value is NaN or infinite (an exact match's PSNR is ``inf``: cap the
                scores, e.g. ``psnr(..., max_db=60)``, for every method alike).
        """
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"MeanInterval: {len(bad)} of {len(values)} values are not finite ({bad[0]}); an exact "
                "match scores an infinite PSNR: cap the scores first (psnr(..., max_db=60)), for every "
                "method alike so that pairs stay paired."
            )
        m = statistics.fmean(values)
        if len(values) < 2:
            return cls(m, -math.inf, math.inf, len(values))
        half = _t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return cls(m, m - half, m + half, len(values))

    @property
    def tie(self) -> bool:
        """Whether the interval holds 0."""
        return self.low <= 0 <= self.high

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]" + (" tie" if self.tie else "")
