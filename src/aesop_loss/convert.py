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
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ._cli import CLIError, run_cli
from ._io import sha256_file
from .archs import AutoEncoder
from .hub import push_folder_to_hub

__all__ = ["convert", "main"]

logger = logging.getLogger(__name__)

AUTHORS_REPO = (
    "https://github.com/2minkyulee/AESOP-Auto-Encoded-Supervision-for-Perceptual-Image-Super-Resolution"
)


def convert(
    src: str | Path, out_dir: str | Path, *, license: str = "other", training_data: str | None = None
) -> AutoEncoder:
    """Convert ``src`` into the model folder ``out_dir`` and verify it reproduces the source.

    Args:
        src: An AE checkpoint (the authors' ``.pth``, or any layout ``AutoEncoder.from_pretrained``
            reads from a file).
        out_dir: The folder to write; replaced only once the new one is verified.
        license: License id for the model card.
        training_data: Training data for the model card.

    Returns:
        The converted autoencoder.

    Raises:
        CLIError: The written folder does not reproduce the source model.
    """
    src, out_dir = Path(src), Path(out_dir)
    source = AutoEncoder.from_pretrained(src)
    digest = sha256_file(src)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if out_dir.parent.exists() else None)
    )
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
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s (%s, sha256 %s)", out_dir, converted.config, digest[:12])
    return converted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aesop_loss.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="the source checkpoint (.pth or .safetensors)")
    parser.add_argument("out_dir", type=Path, help="the model folder to write")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also publish the folder to this Hub repo")
    parser.add_argument("--license", default="other", help="license id for the model card (default: other)")
    parser.add_argument("--training-data", help="training data, for the model card (e.g. 'DF2K')")
    args = parser.parse_args(argv)
    convert(args.src, args.out_dir, license=args.license, training_data=args.training_data)
    if args.push_to_hub:
        logger.info("pushed: %s", push_folder_to_hub(args.out_dir, args.push_to_hub))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
