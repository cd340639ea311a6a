"""neosr: ``AESOPLoss`` in neosr's ``LOSS_REGISTRY``, used as ``[train.pixel_opt]``.

neosr (``neosr/losses/__init__.py``, ``neosr/models/image.py``) builds each loss as
``LOSS_REGISTRY.get(opt.pop("type"))(**opt)`` with exact class names, moves it with
``.to(device, memory_format=torch.channels_last)``, calls ``cri_pix(output, gt)`` inside
``torch.autocast("cuda", ...)`` when ``use_amp`` is on, and adds the result as it is: the loss applies
``loss_weight`` itself, as ``AESOPLoss`` does. ``loss_weight = 0.5`` gives ``0.5 * L_AESOP``.

Under neosr's autocast the AE still runs in fp32 (``precision = "fp32"``, the default: the
reference's numbers); ``precision = "auto"`` follows the autocast instead (faster, less exact).
neosr's ``.to(..., memory_format=torch.channels_last)`` converts the AE's weights to channels-last,
which moves results by about 1e-5 relative.

neosr finds losses only as files ``neosr/losses/*_loss.py``. Add one, e.g.
``neosr/losses/aesop_ext_loss.py``::

    from aesop_loss.integrations.neosr import register
    from neosr.utils.registry import LOSS_REGISTRY

    register(LOSS_REGISTRY)

and in the TOML options::

    [train.pixel_opt]
    type = "AESOPLoss"
    ae = "path/to/aesop-ae-x4"
    loss_weight = 1.0
"""

from __future__ import annotations

from typing import Any

from ..loss import AESOPLoss
from ._registry import register_as

__all__ = ["register"]


def register(registry: Any = None, *, name: str = "AESOPLoss") -> type[AESOPLoss]:
    """Register ``AESOPLoss`` in neosr's ``LOSS_REGISTRY`` (or in ``registry``) as ``name``.

    Args:
        registry: A neosr-style registry (``register``, ``get``); default
            ``neosr.utils.registry.LOSS_REGISTRY``.
        name: The option ``type`` that builds it; another name registers a subclass of that name.

    Returns:
        The registered class.

    Raises:
        ValueError: ``name`` is taken in the registry.
        ImportError: No ``registry`` given and neosr is not importable.

    Examples:
        >>> class Registry(dict):  # neosr's Registry, as far as register() uses it
        ...     def register(self, obj): self[obj.__name__] = obj
        ...     def get(self, name): return self[name]
        >>> register(Registry(), name="aesop_loss").__name__
        'aesop_loss'
    """
    return register_as(registry, AESOPLoss, name, framework="neosr", default_registry="neosr.utils.registry")
