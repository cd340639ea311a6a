"""BasicSR: ``AESOPLoss`` in BasicSR's ``LOSS_REGISTRY``, used as ``pixel_opt``.

BasicSR builds each loss as ``LOSS_REGISTRY.get(opt.pop("type"))(**opt)`` (registry names are the
exact class names), calls it as ``cri_pix(output, gt)`` (optionally with an element-wise weight) and
adds the result to the generator's total as it is: ``loss_weight`` is applied inside the loss,
which is what ``AESOPLoss`` does. So ``loss_weight: 0.5`` gives ``0.5 * L_AESOP``.

Register before BasicSR reads the options, at the top of your ``train.py``::

    from aesop_loss.integrations.basicsr import register
    from basicsr.train import train_pipeline

    register()
    if __name__ == "__main__":
        train_pipeline(".")

and in the option file, under ``train:``::

    pixel_opt:
      type: AESOPLoss
      ae: path/to/aesop-ae-x4   # folder, the authors' .pth, Hub id
      loss_weight: 1.0
      reduction: mean
    perceptual_opt: {type: PerceptualLoss, layer_weights: {conv5_4: 1}, perceptual_weight: 1.0}
    gan_opt: {type: GANLoss, gan_type: vanilla, loss_weight: !!float 5e-3}

BasicSR's ESRGAN model trains in fp32 and contiguous memory; nothing else to set.
"""

from __future__ import annotations

from typing import Any

from ..loss import AESOPLoss
from ._registry import register_as

__all__ = ["register"]


def register(registry: Any = None, *, name: str = "AESOPLoss") -> type[AESOPLoss]:
    """Register ``AESOPLoss`` in BasicSR's ``LOSS_REGISTRY`` (or in ``registry``) as ``name``.

    Args:
        registry: A BasicSR-style registry (``register``, ``get``); default
            ``basicsr.utils.registry.LOSS_REGISTRY``.
        name: The option ``type`` that builds it; another name registers a subclass of that name.

    Returns:
        The registered class.

    Raises:
        ValueError: ``name`` is taken in the registry.
        ImportError: No ``registry`` given and BasicSR is not installed.

    Examples:
        >>> class Registry(dict):  # BasicSR's Registry, as far as register() uses it
        ...     def register(self, obj): self[obj.__name__] = obj
        ...     def get(self, name): return self[name]
        >>> registry = Registry()
        >>> register(registry).__name__, sorted(registry)
        ('AESOPLoss', ['AESOPLoss'])
    """
    return register_as(
        registry, AESOPLoss, name, framework="BasicSR", default_registry="basicsr.utils.registry"
    )
