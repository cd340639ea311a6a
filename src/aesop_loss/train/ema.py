"""Exponential moving average of weights: what the pretraining run exports, and the GAN recipe's
generator EMA."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ema_update"]


@torch.no_grad()
def ema_update(ema: Sequence[Tensor], live: Sequence[Tensor], decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * live``, in place, for each pair of tensors (one fused call).

    Args:
        ema: The averaged tensors (updated in place), e.g. ``list(ema_model.parameters())``.
        live: The trained tensors, in the same order.
        decay: The EMA decay in [0, 1).

    Examples:
        >>> ema, live = [torch.zeros(2)], [torch.ones(2)]
        >>> ema_update(ema, live, 0.9)
        >>> ema[0]
        tensor([0.1000, 0.1000])
    """
    torch._foreach_lerp_(list(ema), [t.detach() for t in live], 1.0 - decay)
