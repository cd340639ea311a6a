"""Convert an AESOP autoencoder checkpoint into a Hub model folder.

    python -m aesop_loss.convert AE_RRDBdecoder_100K.pth ./aesop-ae-x4 [--push-to-hub org/name]

The authors publish their pretrained AEs (``AE_RRDBdecoder_100K.pth`` for bicubic x4 SR,
``RealAE_RRDBdecoder_100K.pth`` for real-world SR) through the links in the README of
https://github.com/2minkyulee/AESOP-Auto-Encoded-Supervision-for-Perceptual-Image-Super-Resolution ;
the authors release that project under the Apache 2.0 license (pass ``--license apache-2.0`` when
converting their files). This tool reads such a file (or any checkpoint
of that layout) with ``weights_only=True``, removes the duplicated encoder keys, writes
``config.json`` + ``model.safetensors`` + a model card recording the source's SHA-256, and checks,
before it reports success, that the written folder reproduces the source model's output on a random
input exactly.

OUT must be a new or empty folder; ``--overwrite`` lets it replace the model folder's own three
files in an existing OUT (nothing else there is touched). OUT may never be the current folder, a
folder that holds SRC, or a folder inside SRC. The files are written to a staging folder beside OUT
first, and that staging folder is removed on every exit path.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ._io import sha256_file
from .archs import AutoEncoder
from .cli import CLIError, run_cli
from .hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, push_folder_to_hub

__all__ = ["console_main", "convert", "main"]

logger = logging.getLogger(__name__)

AUTHORS_REPO = (
    "https://github.com/2minkyulee/AESOP-Auto-Encoded-Supervision-for-Perceptual-Image-Super-Resolution"
)


def _check_destination(src: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Refuse any OUT whose writing could destroy a file this tool did not write."""
    here, src_abs, out_abs = Path.cwd().resolve(), src.resolve(), out_dir.resolve()
    if out_abs == here:
        raise CLIError(f"OUT {out_dir} is the current folder; name a new folder for the model.")
    if out_abs == src_abs or out_abs in src_abs.parents:
        raise CLIError(f"OUT {out_dir} holds the source {src}; name a folder outside it.")
    if src_abs in out_abs.parents:
        raise CLIError(f"OUT {out_dir} is inside the source {src}; name a folder outside it.")
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"OUT {out_dir} is a file; name a folder for the model.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise CLIError(
            f"OUT {out_dir} exists and is not empty; choose a new folder, or pass --overwrite to replace "
            f"only its {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}."
        )


def convert(
    src: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    license: str = "other",
    training_data: str | None = None,
) -> AutoEncoder:
    """Convert ``src`` into the model folder ``out_dir`` and verify it reproduces the source.

    Args:
        src: An AE checkpoint (the authors' ``.pth``, or any layout ``AutoEncoder.from_pretrained``
            reads from a file).
        out_dir: The folder to write: new or empty, or with ``overwrite`` an existing one whose
            model files (``config.json``, ``model.safetensors``, ``README.md``) are replaced once
            the new ones are verified; nothing else in it is touched.
        overwrite: Allow replacing the model files of a non-empty ``out_dir``.
        license: License id for the model card.
        training_data: Training data for the model card.

    Returns:
        The converted autoencoder.

    Raises:
        CLIError: ``out_dir`` is not allowed (see the module docstring), or the written folder does
            not reproduce the source model.
        CheckpointError: ``src`` is not a readable AE checkpoint.
    """
    src, out_dir = Path(src), Path(out_dir)
    _check_destination(src, out_dir, overwrite=overwrite)
    source = AutoEncoder.from_pretrained(src)
    digest = sha256_file(src)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging", dir=out_dir.parent))
    try:
        source.save_pretrained(
            staging,
            source_checkpoint=src.name,
            source_sha256=digest,
            license=license,
            training_data=training_data,
            description=(
                "The AESOP autoencoder converted from the authors' checkpoint "
                f"(see {AUTHORS_REPO}). Use it as AESOPLoss(ae=...)."
            ),
        )
        converted = AutoEncoder.from_pretrained(staging)
        gen = torch.Generator().manual_seed(0)
        size = 16 * source.scale
        x = torch.rand(1, source.num_in_ch, size, size, generator=gen)
        with torch.no_grad():
            if not torch.equal(source(x), converted(x)):
                raise CLIError(
                    f"{src}: the converted model does not reproduce the source's output; nothing written."
                )
        out_dir.mkdir(exist_ok=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):  # the weights first: config.json describes them
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the staging folder is this function's own
    logger.info("wrote %s (%s, sha256 %s)", out_dir, converted.config, digest[:12])
    return converted


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aesop_loss.convert SRC OUT [--overwrite] [--push-to-hub REPO_ID]``; returns 0.

    Run it through ``aesop_loss.cli.run_cli`` for one-line errors and exit statuses.
    """
    parser = argparse.ArgumentParser(
        prog="python -m aesop_loss.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="the source checkpoint (.pth or .safetensors)")
    parser.add_argument("out_dir", type=Path, help="the model folder to write (new or empty)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model files (config.json, model.safetensors, README.md) of an existing OUT",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also publish the folder to this Hub repo")
    parser.add_argument("--license", default="other", help="license id for the model card (default: other)")
    parser.add_argument("--training-data", help="training data, for the model card (e.g. 'DF2K')")
    args = parser.parse_args(argv)
    card = {"license": args.license, "training_data": args.training_data}
    convert(args.src, args.out_dir, overwrite=args.overwrite, **card)
    if args.push_to_hub:
        logger.info("pushed: %s", push_folder_to_hub(args.out_dir, args.push_to_hub))
    return 0


def console_main() -> int:
    """The ``aesop-convert`` console script: ``main`` with one-line errors and exit statuses."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
