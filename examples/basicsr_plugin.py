"""Use AESOPLoss from BasicSR option files (and forks that share its registry) without a dependency.

BasicSR builds losses as ``LOSS_REGISTRY.get(opt.pop("type"))(**opt)`` and calls them as
``loss(pred, target)`` (optionally with an element-wise ``weight``), with ``loss_weight`` applied
inside the loss. ``AESOPLoss`` follows exactly that convention, so registering the class is all it
takes. Call ``register()`` before ``train_pipeline`` (e.g. at the top of your ``train.py``):

    # train.py
    from basicsr.train import train_pipeline
    from basicsr_plugin import register   # this file, copied next to train.py
    register()
    if __name__ == "__main__":
        train_pipeline(".")

    # options/train_ESRGAN_AESOP.yml, under train:
    pixel_opt:
      type: AESOPLoss
      ae: path/to/aesop-ae-x4      # folder, .pth (the authors' checkpoint), Hub id, or demo (tests only)
      loss_weight: 1.0
      reduction: mean
    perceptual_opt: {type: PerceptualLoss, layer_weights: {conv5_4: 1}, perceptual_weight: 1.0}
    gan_opt: {type: GANLoss, gan_type: vanilla, loss_weight: !!float 5e-3}

Forks:
- traiNNer-redux builds losses the same way (``LOSS_REGISTRY.get(type)(**opt)``) and applies
  ``loss_weight`` inside each loss, but it already registers a loss named ``AESOPLoss`` (its own AE
  layout, MS-SSIM-L1 criterion by default, inputs cast to fp32 under autocast). Register this one
  under another name: ``register(name="AESOPLossRef")`` and ``type: AESOPLossRef``. Its training
  loop runs losses under ``torch.autocast``. This AESOPLoss still runs the AE in fp32 there by
  default (``precision: fp32``, the reference's numbers); ``precision: auto`` follows the loop's
  autocast instead, which is faster and less exact.
- neosr (checked against muslll/neosr, ``neosr/losses/__init__.py`` and ``neosr/models/image.py``)
  also builds ``LOSS_REGISTRY.get(type)(**opt)`` from ``neosr.utils.registry`` and keeps
  ``loss_weight`` inside the loss. It calls ``cri_pix(output, gt)`` with two arguments inside
  ``torch.autocast("cuda", ...)`` when ``use_amp`` is on, and moves every loss with
  ``.to(device, memory_format=torch.channels_last)``. That converts the AE's weights to
  channels-last, which moves results by ~1e-5 relative and is otherwise harmless. Register with
  ``register(LOSS_REGISTRY)`` after ``from neosr.utils.registry import LOSS_REGISTRY``, then use
  ``pixel_opt: {type: AESOPLoss, ae: ...}``.

    python examples/basicsr_plugin.py --smoke   # builds the loss from options through a registry
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from aesop_loss import AESOPLoss


class StandInRegistry:
    """BasicSR's ``Registry`` interface (``register``, ``get``), for running this file without it."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def register(self, obj: Any = None) -> Any:
        if obj is None:
            return self.register
        if obj.__name__ in self._objects:
            raise KeyError(f"An object named '{obj.__name__}' was already registered")
        self._objects[obj.__name__] = obj
        return obj

    def get(self, name: str) -> Any:
        return self._objects[name]


def register(registry: Any = None, *, name: str = "AESOPLoss") -> type[AESOPLoss]:
    """Register ``AESOPLoss`` (under ``name``) in BasicSR's ``LOSS_REGISTRY`` or the one given."""
    if registry is None:
        from basicsr.utils.registry import LOSS_REGISTRY as registry  # type: ignore[import-not-found]
    cls = AESOPLoss if name == "AESOPLoss" else type(name, (AESOPLoss,), {"__module__": __name__})
    registry.register(cls)
    return cls


def build_loss(registry: Any, opt: dict[str, Any]) -> torch.nn.Module:
    """What BasicSR's ``build_loss`` does with a ``pixel_opt`` block."""
    opt = copy.deepcopy(opt)
    return registry.get(opt.pop("type"))(**opt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ae", default="demo", help="AE for the demonstration (default: the bundled demo)")
    parser.add_argument("--smoke", action="store_true", help="small tensors (for tests)")
    args = parser.parse_args(argv)
    try:
        from basicsr.utils.registry import LOSS_REGISTRY as registry  # type: ignore[import-not-found]

        print("basicsr found: registering in its LOSS_REGISTRY")
    except ImportError:
        registry = StandInRegistry()
        print("basicsr not installed: using a stand-in registry with the same interface")
    register(registry)
    pixel_opt = {"type": "AESOPLoss", "ae": args.ae, "loss_weight": 1.0, "reduction": "mean"}
    cri_pix = build_loss(registry, pixel_opt)
    size = 32 if args.smoke else 128
    output = torch.rand(2, 3, size, size, requires_grad=True)
    gt = torch.rand(2, 3, size, size)
    l_g_pix = cri_pix(output, gt)  # as BasicSR's SRGANModel.optimize_parameters calls it
    l_g_pix.backward()
    print(f"pixel_opt {pixel_opt} -> {type(cri_pix).__name__}; l_g_pix = {l_g_pix.item():.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
