"""AESOPLoss as BasicSR's ``pixel_opt``: register it, then build it from options as BasicSR does.

BasicSR builds losses as ``LOSS_REGISTRY.get(opt.pop("type"))(**opt)``, calls them as
``cri_pix(output, gt)`` and applies ``loss_weight`` inside the loss, as ``AESOPLoss`` does. Call
``register()`` at the top of your ``train.py``, before ``train_pipeline``:

    # train.py
    from aesop_loss.integrations.basicsr import register
    from basicsr.train import train_pipeline

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

neosr and traiNNer-redux have their own rules (traiNNer-redux applies the weight itself and gives a
negative weight a meaning of its own): use ``aesop_loss.integrations.neosr`` and
``aesop_loss.integrations.trainner`` there; the README's "In your framework" has their snippets.

    python examples/basicsr_plugin.py --smoke   # builds the loss from options through a registry
"""

from __future__ import annotations

import aesop_loss  # noqa: F401 - first: it imports torch without torch's NumPy notice

# isort: split
import argparse
import copy
from typing import Any

import torch

from aesop_loss.integrations.basicsr import register


class StandInRegistry:
    """BasicSR's ``Registry`` interface (``register``, ``get``), for running this file without it."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def register(self, obj: Any) -> None:
        self._objects[obj.__name__] = obj

    def get(self, name: str) -> Any:
        return self._objects[name]


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
    l_g_pix = cri_pix(output, gt)  # as BasicSR's ESRGANModel.optimize_parameters calls it
    l_g_pix.backward()
    print(f"pixel_opt {pixel_opt} -> {type(cri_pix).__name__}; l_g_pix = {l_g_pix.item():.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
