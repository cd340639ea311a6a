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

``--to trainner`` instead writes one ``.safetensors`` file in traiNNer-redux's AE layout (its
``pretrain_network_ae``; SRC may then be anything ``AutoEncoder.from_pretrained`` reads, ``demo``
included), checks that reading it back gives the source's weights exactly, and prints the options
that use it. Such an OUT must not exist; ``--overwrite`` replaces only a file this tool wrote.

OUT must be a new or empty folder; ``--overwrite`` lets it replace the model folder's own three
files in an existing OUT that already is a model folder (nothing else there is touched), in an
order that leaves a loadable, consistent folder after a kill at any point. OUT may never be the
current folder, a folder that holds SRC, a folder inside SRC, or a symbolic link. The files are written to a
staging folder beside OUT first, removed on every exit path; one left by a killed run (its process
gone) is removed by the next convert into the same OUT.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ._io import atomic_path, atomic_write_text, remove_stale_temps, save_safetensors, sha256_file
from .archs import AutoEncoder
from .checkpoints import canonicalize_autoencoder, trainner_autoencoder_state_dict
from .cli import CLIError, add_version, run_cli
from .hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, prepare_push, push_folder_to_hub

__all__ = ["console_main", "convert", "main", "to_trainner", "trainner_options"]

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
    if out_dir.is_symlink():
        raise CLIError(
            f"OUT {out_dir} is a symbolic link; name the folder itself (this tool never writes through it)."
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise CLIError(
                f"OUT {out_dir} exists and is not empty; choose a new folder, or pass --overwrite to replace "
                f"only its {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}."
            )
        links = [out_dir / n for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if (out_dir / n).is_symlink()]
        if links:
            raise CLIError(
                f"OUT {out_dir}: {links[0].name} is a symbolic link; this tool never writes through links."
            )
        if not _is_model_folder(out_dir):
            raise CLIError(
                f"OUT {out_dir} is not a model folder (an AutoEncoder's {CONFIG_NAME} + {WEIGHTS_NAME}); "
                "--overwrite replaces only a model folder's files. Choose a new folder."
            )


def _is_model_folder(folder: Path) -> bool:
    """An AutoEncoder model folder, as ``save_pretrained`` writes it (read from its config.json)."""
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not (config.is_file() and weights.is_file()) or config.stat().st_size > 1 << 20:
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("architecture") == "AutoEncoder"
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        return False


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.staging$")


def _remove_dead_staging(out_dir: Path) -> None:
    """Remove staging folders that a killed ``convert`` left beside ``out_dir`` (its pid is gone)."""
    for folder in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*.staging"):
        m = _STAGING.match(folder.name)
        if m is None or m["name"] != out_dir.name or folder.is_symlink() or not folder.is_dir():
            continue
        if _alive(int(m["pid"])):
            continue
        ours = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}
        if all(p.is_file() and (p.name in ours or p.name.endswith(".tmp")) for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)  # only the model files this tool stages
            logger.info("removed %s, left by a convert that was killed", folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


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
    if not src.is_file():  # checked before anything is loaded: the card records the file's SHA-256
        what = "a folder" if src.is_dir() else "not a file (a Hub id, 'demo', or a missing path)"
        raise CLIError(
            f"SRC {src} is {what}: convert turns a checkpoint file (.pth or .safetensors) into a model "
            "folder, and a model folder or Hub id needs none (AutoEncoder.from_pretrained reads it as it "
            "is); --to trainner takes any source."
        )
    _check_destination(src, out_dir, overwrite=overwrite)
    source = AutoEncoder.from_pretrained(src)
    digest = sha256_file(src)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out_dir)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".staging", dir=out_dir.parent)
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
        out_dir.mkdir(exist_ok=True)
        # The folder loads, consistently, after a kill at any point: first a config.json that states
        # only the architecture (the loader takes the rest from the weights, old or new), then the
        # weights, then the full config.json and the card.
        if (out_dir / CONFIG_NAME).exists():
            atomic_write_text(out_dir / CONFIG_NAME, json.dumps({"architecture": "AutoEncoder"}) + "\n")
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the staging folder is this function's own
    logger.info("wrote %s (%s, sha256 %s)", out_dir, converted.config, digest[:12])
    return converted


# Recorded in the header of the traiNNer-redux files this tool writes: --overwrite replaces only those.
_TRAINNER_MARK = {"aesop_loss_layout": "traiNNer-redux AutoEncoder"}


def _written_by_us(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception:  # not a safetensors file at all: certainly not ours
        return False
    return all(metadata.get(k) == v for k, v in _TRAINNER_MARK.items())


def trainner_options(ae: AutoEncoder, path: str | Path) -> str:
    """The traiNNer-redux options that use an AE written by ``to_trainner`` (YAML, as text)."""
    if ae.decoder_kind == "compact":
        decoder = f"{{type: compact, num_feat: {ae.num_feat}, num_conv: {ae.num_block}}}"
    else:
        decoder = f"{{type: esrgan, num_filters: {ae.num_feat}, num_blocks: {ae.num_block}}}"
    lines = [
        "# traiNNer-redux, under train: losses: (its own AESOP loss)",
        "- type: aesoploss",
        "  loss_weight: 1.0",
        f"  scale: {ae.scale}",
        f"  pretrain_network_ae: {path}",
        f"  decoder_opt: {decoder}",
        "  criterion: l1            # the paper's distance (traiNNer-redux's default: charbonnier)",
        "# or, to pretrain it further with traiNNer-redux's AE model:",
        f"# network_ae: {{type: autoencoder, nf: {ae.num_feat}, decoder_opt: {decoder}}}",
        f"# path: {{pretrain_network_ae: {path}}}",
    ]
    if ae.num_feat != 64:
        lines.insert(
            1,
            f"# note: this AE has nf={ae.num_feat}; traiNNer-redux's aesoploss builds its encoder with "
            "nf=64, so only its AE model (network_ae with nf) reads this file",
        )
    return "\n".join(lines)


def to_trainner(src: str | os.PathLike[str], out_file: str | Path, *, overwrite: bool = False) -> AutoEncoder:
    """Write an AE as one traiNNer-redux ``pretrain_network_ae`` file and verify it reads back exactly.

    Args:
        src: Anything ``AutoEncoder.from_pretrained`` reads (folder, file, Hub id, ``"demo"``).
        out_file: The ``.safetensors`` file to write; it must not exist, unless ``overwrite`` and
            it is a file this function wrote.
        overwrite: Allow replacing a file this function wrote before.

    Returns:
        The source autoencoder.

    Raises:
        CLIError: ``out_file`` is not allowed, or the file does not read back to the same weights.
        CheckpointError: ``src`` is unreadable or has no traiNNer-redux equivalent.
    """
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise CLIError(f"OUT {out_file} must be a .safetensors file (traiNNer-redux's pretrain_network_ae).")
    if out_file.is_dir():
        raise CLIError(f"OUT {out_file} is a folder; name a .safetensors file to write.")
    if out_file.is_symlink() or (out_file.exists() and not (overwrite and _written_by_us(out_file))):
        why = "pass --overwrite to replace it" if not overwrite else "it was not written by this tool"
        raise CLIError(f"OUT {out_file} exists and is left alone ({why}); name a new file.")
    source = AutoEncoder.from_pretrained(src)
    if os.fspath(src) != "demo" and Path(src).resolve() == out_file.resolve():
        raise CLIError(f"OUT {out_file} is the source; name a new file.")
    tensors = trainner_autoencoder_state_dict(source.state_dict(), source.config)
    if out_file.parent.is_dir():  # what a killed conversion to this OUT left (.OUT.XXXX.tmp, only those)
        for stale in remove_stale_temps(out_file.parent, [out_file.name]):
            logger.info("removed %s, left by an interrupted conversion", stale)
    with atomic_path(out_file) as tmp:
        save_safetensors(tensors, tmp, metadata={"format": "pt", **_TRAINNER_MARK})
        back, config = canonicalize_autoencoder(load_file(str(tmp)), source=str(out_file))
        expected = source.state_dict()
        if (
            config != source.config
            or set(back) != set(expected)
            or not all(torch.equal(back[k], v) for k, v in expected.items())
        ):
            raise CLIError(
                f"{src}: the traiNNer-redux file does not read back to the same weights; nothing written."
            )
    logger.info("wrote %s (traiNNer-redux AE layout, %d tensors)", out_file, len(tensors))
    return source


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aesop_loss.convert SRC OUT [--overwrite] [--push-to-hub REPO_ID]``; returns 0.

    Run it through ``aesop_loss.cli.run_cli`` for one-line errors and exit statuses.
    """
    parser = argparse.ArgumentParser(
        prog="python -m aesop_loss.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviated flag (--overwr) would be taken for the whole one silently
    )
    add_version(parser)
    parser.add_argument(
        "src",
        help="the source checkpoint (.pth or .safetensors; with --to trainner also a folder, Hub id, demo)",
    )
    parser.add_argument(
        "out_dir",
        type=Path,
        help="the model folder to write (new or empty); with --to trainner a .safetensors file",
    )
    parser.add_argument(
        "--to",
        choices=("folder", "trainner"),
        default="folder",
        help="folder: this package's model folder (default); trainner: one traiNNer-redux AE file",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model files (config.json, model.safetensors, README.md) of an existing OUT",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also publish the folder to this Hub repo")
    parser.add_argument("--license", default="other", help="license id for the model card (default: other)")
    parser.add_argument("--training-data", help="training data, for the model card (e.g. 'DF2K')")
    args = parser.parse_args(argv)
    if args.to == "trainner":
        if args.push_to_hub:
            raise CLIError("--push-to-hub publishes model folders; it does not combine with --to trainner.")
        ae = to_trainner(args.src, args.out_dir, overwrite=args.overwrite)
        print(trainner_options(ae, args.out_dir))
        return 0
    card = {"license": args.license, "training_data": args.training_data}
    if args.push_to_hub:
        prepare_push(args.push_to_hub)  # a bad id or no Hub fails before anything is written
    convert(Path(args.src), args.out_dir, overwrite=args.overwrite, **card)
    if args.push_to_hub:
        logger.info("pushed: %s", push_folder_to_hub(args.out_dir, args.push_to_hub))
    return 0


def console_main() -> int:
    """The ``aesop-convert`` console script: ``main`` with one-line errors and exit statuses."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
