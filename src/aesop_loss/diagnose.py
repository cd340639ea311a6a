"""Is an AE fit for the AESOP loss? ``python -m aesop_loss.diagnose AE [--images DIR] [--json]``.

AE is anything ``AutoEncoder.from_pretrained`` takes (a model folder, a run folder of
``python -m aesop_loss.pretrain``, a ``.pth`` / ``.safetensors`` file, a Hub id, ``demo``). It
measures, on the bundled sample photos or on ``--images``: reconstruction PSNR, bottleneck-vs-LR
PSNR, how much AESOP penalises detail the LR image cannot see against a fidelity error of the same
energy (selectivity, retention), and the colour gains; then a verdict: ok, warn or unfit, with
the reasons. Exit status 0 for ok or warn, 1 for unfit, 2 for bad input. Reading ``--images``
needs the training extra (``pip install "aesop-loss[train]"``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from .archs import AutoEncoder
from .cli import CLIError, run_cli
from .diagnostics import diagnose
from .train.config import check_device  # no Pillow needed: the flag checks of the training tool

try:  # image folders are decoded with Pillow, which only the [train] extra installs
    from .train.data import DataError, list_images, load_image

    _missing = ""
except ModuleNotFoundError as exc:  # the bundled photos need no Pillow
    if exc.name not in ("PIL", "tqdm"):
        raise
    _missing = exc.name

__all__ = ["console_main", "main"]


def _images(folder: Path) -> list[torch.Tensor]:
    if _missing:
        raise CLIError(
            f'--images needs {_missing}, which the training extra installs: pip install "aesop-loss[train]"'
        )
    try:
        return [load_image(path) for path in list_images(folder)]
    except DataError as exc:
        raise CLIError(f"--images {folder}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CLIError(f"--images {folder}: an image cannot be decoded ({exc}).") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Diagnose an AE; returns 0 (ok or warn) or 1 (unfit). Run it through ``run_cli``."""
    p = argparse.ArgumentParser(
        prog="python -m aesop_loss.diagnose",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ae", help="the AE: folder, run folder, .pth, .safetensors, Hub id, or 'demo'")
    p.add_argument("--images", type=Path, help="folder of HR images (default: the bundled sample photos)")
    p.add_argument("--size", type=int, default=128, help="centre crop measured per image (default 128)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    args = p.parse_args(argv)
    if args.size < 16:
        raise CLIError(f"--size {args.size}: expected an integer >= 16.")
    check_device(args.device)
    images = _images(args.images) if args.images else None
    ae = AutoEncoder.from_pretrained(args.ae, device=args.device)
    try:
        result = diagnose(ae, images, size=args.size)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(result.to_json() if args.json else f"AE: {args.ae}\n{result.table()}")
    return 1 if result.verdict == "unfit" else 0


def console_main() -> int:
    """The ``aesop-diagnose`` console script: ``main`` with one-line errors and exit statuses."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
