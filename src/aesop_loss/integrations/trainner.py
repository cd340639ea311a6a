"""traiNNer-redux: ``AESOPRefLoss``, the reference AESOP loss by traiNNer-redux's rules.

traiNNer-redux (``traiNNer/models/sr_model.py``, since May 2025) differs from BasicSR in three ways
that decide the value of the loss:

- **The framework applies the weight.** It adds ``loss(output, target) * abs(loss.loss_weight)`` to
  the total, so a loss must *not* multiply by ``loss_weight`` itself (``AESOPLoss`` does: registered
  as it is, ``loss_weight: 0.5`` would give ``0.25 * L_AESOP``). ``AESOPRefLoss`` keeps
  ``loss_weight`` as an attribute for the framework to read and returns the unweighted loss.
- **A negative weight changes the target.** For ``loss_weight < 0`` traiNNer-redux passes
  ``clamp(bicubic_upscale(lq), 0, 1)`` instead of the ground truth and uses ``abs(loss_weight)``.
  ``AESOPRefLoss`` accepts that meaning: ``loss_weight: -0.5`` trains with
  ``0.5 * |AE(sr) - AE(bicubic(lq))|``, which asks the output to agree with what the LR image
  determines (the AE's reconstruction of the upscaled input), not with the ground truth.
- **Names are lower-cased, and ``aesoploss`` is taken.** Its registry stores ``__name__.lower()``
  and it already has its own ``AESOPLoss`` (a different AE layout, Charbonnier by default), so any
  casing of ``AESOPLoss`` collides; this one is ``AESOPRefLoss`` (label ``l_g_aesopref``).

traiNNer-redux has no plugin hook: it imports every ``traiNNer/losses/*_loss.py``. Add one, e.g.
``traiNNer/losses/aesop_ext_loss.py``::

    from aesop_loss.integrations.trainner import register
    from traiNNer.utils.registry import LOSS_REGISTRY

    register(LOSS_REGISTRY)

and list it in the options' ``losses:`` (the ``pixel_opt`` blocks are its older format)::

    train:
      losses:
        - type: AESOPRefLoss
          ae: path/to/aesop-ae-x4   # folder, the authors' .pth, Hub id, or a traiNNer AE file
          loss_weight: 1.0
        - type: perceptualloss
          loss_weight: 1.0
        - type: ganloss
          gan_type: vanilla
          loss_weight: 0.005

traiNNer-redux runs the generator and the losses inside ``torch.autocast`` when ``use_amp`` is on
(fp16, or bf16 with ``amp_bf16``), so the output reaches the loss as fp16/bf16 and the target as
fp32; it moves losses with ``.to(device, memory_format=channels_last)`` when ``use_channels_last``
is also on. The AE still runs in fp32 (``precision: fp32``, the default: both inputs promoted, the
value that of the fp32 computation), like traiNNer-redux's own loss, which casts its inputs to
fp32. ``precision: auto`` follows the autocast instead.

traiNNer-redux keys its losses by label (the lower-cased type), so a second ``AESOPRefLoss`` entry
in one options file replaces the first; register the second under another name
(``register(LOSS_REGISTRY, name="AESOPBottleneckLoss")``) and use that as its ``type``.

To use an AE of this package with traiNNer-redux's own ``aesoploss`` (or to pretrain further with
its AE model), write it in traiNNer-redux's layout:
``python -m aesop_loss.convert AE out.safetensors --to trainner``. ``AutoEncoder.from_pretrained``
reads traiNNer-redux AE files back: plain ones and the EMA wrapper its AE model saves
(``net_ae_ema_latest``, whose EMA weights are read), with an RRDB or compact decoder; another
decoder architecture is refused naming it.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from ..archs import AutoEncoder
from ..loss import AESOPLoss
from ._registry import register_as

__all__ = ["AESOPRefLoss", "register"]


class AESOPRefLoss(AESOPLoss):
    """``AESOPLoss`` for traiNNer-redux: returns the loss *without* ``loss_weight``.

    traiNNer-redux multiplies every loss by ``abs(loss.loss_weight)`` itself and, for a negative
    weight, passes the bicubic-upscaled LR image as the target; this class leaves both to it.

    Args:
        ae: The pretrained autoencoder (anything ``AutoEncoder.from_pretrained`` reads).
        loss_weight: traiNNer-redux's weight, stored for the framework (required there; not
            applied here). Negative means "bicubic-upscaled LR as the target".
        **kwargs: Any other ``AESOPLoss`` option (``criterion``, ``precision`` ...).

    Examples:
        >>> import torch
        >>> from aesop_loss import AutoEncoder
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
        >>> ae.is_pretrained = True
        >>> loss = AESOPRefLoss(ae, loss_weight=0.5)
        >>> sr, hr = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        >>> bool(loss(sr, hr) == loss.unweighted(sr, hr)), loss.loss_weight
        (True, 0.5)
    """

    _negative_weight_ok = True  # traiNNer-redux's bicubic-target rule

    def __init__(
        self, ae: AutoEncoder | str | os.PathLike[str], *, loss_weight: float, **kwargs: Any
    ) -> None:
        super().__init__(ae, loss_weight=loss_weight, **kwargs)

    def forward(self, sr: Tensor, hr: Tensor, weight: Tensor | None = None) -> Tensor:
        """The unweighted loss: traiNNer-redux applies ``abs(loss_weight)`` (see ``AESOPLoss.forward``)."""
        return self.unweighted(sr, hr, weight)


def register(registry: Any = None, *, name: str = "AESOPRefLoss") -> type[AESOPRefLoss]:
    """Register ``AESOPRefLoss`` in traiNNer-redux's ``LOSS_REGISTRY`` (or in ``registry``) as ``name``.

    Args:
        registry: A traiNNer-redux-style registry (``register``, ``get``, names lower-cased);
            default ``traiNNer.utils.registry.LOSS_REGISTRY``.
        name: The option ``type`` that builds it (any casing); another name registers a subclass.

    Returns:
        The registered class.

    Raises:
        ValueError: ``name`` is taken (``AESOPLoss`` in any casing is traiNNer-redux's own).
        ImportError: No ``registry`` given and traiNNer-redux is not importable.
    """
    return register_as(
        registry, AESOPRefLoss, name, framework="traiNNer-redux", default_registry="traiNNer.utils.registry"
    )
