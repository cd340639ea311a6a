"""Is an AE fit for the AESOP loss? ``python -m aesop_loss.diagnose AE [--images DIR] [--json]``.

AE is anything ``AutoEncoder.from_pretrained`` takes (a model folder, a run folder of
``python -m aesop_loss.pretrain``, a ``.pth`` / ``.safetensors`` file, a Hub id, ``demo``). It
measures, on the bundled sample photos or on ``--images`` (up to ``--tiles`` tiles of ``--size``
per image, covering it): reconstruction PSNR, bottleneck-vs-LR
PSNR, how much AESOP penalises detail the LR image cannot see against a fidelity error of the same
energy (selectivity, retention), and the colour gains; with ``--teacher AE``, also how alike the
two AEs' AESOP gradients are (cosine) and their loss ratio; then a verdict: ok, warn or unfit,
with the reasons. Exit status 0 for ok or warn, 1 for unfit, 2 for bad input. Reading ``--images``
needs the training extra (``pip install "aesop-loss[train]"``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .archs import AutoEncoder
from .cli import CLIError, add_version, run_cli
from .diagnostics import MAX_SIZE, diagnose
from .train.config import check_device  # no Pillow needed: the flag checks of the training tool

try:  # image folders are decoded with Pillow, which only the [train] extra installs
    from PIL import Image

    from .train.data import DECODE_ERRORS, DataError, list_images, load_image

    _missing = ""
except ModuleNotFoundError as exc:  # the bundled photos need no Pillow
    if exc.name not in ("PIL", "tqdm"):
        raise
    _missing = exc.name

__all__ = ["console_main", "main"]


class _Images:
    """The images of a folder, decoded one at a time as ``diagnose`` reaches them (not all at once).

    At most ``limit`` of them, spread evenly over the sorted list; an image that cannot be decoded
    (truncated, not an image, a decompression bomb) or is smaller than 16 pixels on a side is
    skipped with a warning, as pretraining skips it.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        if _missing:
            extra = 'pip install "aesop-loss[train]"'
            raise CLIError(f"--images needs {_missing}, which the training extra installs: {extra}")
        try:
            paths = list_images(folder)
        except DataError as exc:
            raise CLIError(f"--images {folder}: {exc}") from None
        if len(paths) > limit:
            paths = [paths[i * len(paths) // limit] for i in range(limit)]
        self.folder, self.paths = folder, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[torch.Tensor]:
        used = 0
        for path in self.paths:
            try:
                with Image.open(path) as header:  # its size first: decoding a huge image takes minutes
                    width, height = header.size
                if width * height > _MAX_PIXELS:
                    warnings.warn(
                        f"skipping {path}: {width}x{height} is over {_MAX_PIXELS // 10**6} megapixels; "
                        "diagnose measures tiles of at most 512 pixels, so crop it first.",
                        stacklevel=2,
                    )
                    continue
                image = load_image(path)
            except DECODE_ERRORS as exc:
                warnings.warn(f"skipping {path}: cannot be decoded ({type(exc).__name__}).", stacklevel=2)
                continue
            if min(image.shape[-2:]) < _MIN_SIDE:
                h, w = image.shape[-2:]
                warnings.warn(f"skipping {path}: {w}x{h} is smaller than {_MIN_SIDE} pixels.", stacklevel=2)
                continue
            used += 1
            yield image
        if not used:
            raise CLIError(f"--images {self.folder}: none of its images could be decoded and measured.")


_MIN_SIDE = 16  # the smallest tile diagnose measures
_MAX_PIXELS = 64 * 10**6  # larger images are skipped: decoding one takes longer than measuring 64 others


class _Progress:
    """A progress count on stderr, shown once a run has taken more than a couple of seconds: one
    line redrawn on a terminal; elsewhere (a log, a pipe) a plain line at most every ``every``
    seconds and one at the end."""

    def __init__(self, after: float = 2.0, every: float = 10.0) -> None:
        self.start, self.after, self.every, self.shown = time.monotonic(), after, every, False
        self.last = -math.inf
        self.terminal = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.shown and now - self.start < self.after:
            return
        self.shown = True
        text = f"diagnose: {done}/{total} images measured"
        if self.terminal:
            end = "\n" if done == total else ""  # the report starts on a line of its own
            print(f"\r{text}", end=end, file=sys.stderr, flush=True)
        elif done == total or now - self.last >= self.every:
            self.last = now
            print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Diagnose an AE; returns 0 (ok or warn) or 1 (unfit). Run it through ``run_cli``."""
    p = argparse.ArgumentParser(
        prog="python -m aesop_loss.diagnose",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviated flag (--overwr) would be taken for the whole one silently
    )
    add_version(p)
    p.add_argument("ae", help="the AE: folder, run folder, .pth, .safetensors, Hub id, or 'demo'")
    p.add_argument("--images", type=Path, help="folder of HR images (default: the bundled sample photos)")
    p.add_argument(
        "--max-images",
        type=int,
        default=64,
        help="measure at most this many of --images, spread over the folder (default 64; each image costs "
        "about --tiles AE passes of --size)",
    )
    p.add_argument("--size", type=int, default=128, help="tile size (default 128)")
    p.add_argument(
        "--tiles", type=int, default=4, help="at most this many tiles per image, covering it (default 4)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument(
        "--teacher",
        metavar="AE",
        help="also compare AESOP gradients with this AE (e.g. the one a compact AE was distilled from)",
    )
    args = p.parse_args(argv)
    if not 16 <= args.size <= MAX_SIZE:
        raise CLIError(f"--size {args.size}: expected an integer from 16 to {MAX_SIZE}.")
    if not 1 <= args.tiles <= 64:
        raise CLIError(f"--tiles {args.tiles}: expected an integer from 1 to 64.")
    check_device(args.device)
    if not 1 <= args.max_images <= 100_000:
        raise CLIError(f"--max-images {args.max_images}: expected an integer from 1 to 100000.")
    images = _Images(args.images, args.max_images) if args.images else None
    ae = AutoEncoder.from_pretrained(args.ae, device=args.device)
    teacher = AutoEncoder.from_pretrained(args.teacher, device=args.device) if args.teacher else None
    for name, model in ((args.ae, ae), (args.teacher, teacher)):
        if model is not None and model.num_in_ch != 3:
            raise CLIError(
                f"{name} is an AE of {model.num_in_ch}-channel images; diagnose measures RGB AEs "
                "(its probes are colour photos and colour offsets)."
            )
    if teacher is not None and teacher.scale != ae.scale:
        raise CLIError(f"--teacher {args.teacher} is a x{teacher.scale} AE; {args.ae} is x{ae.scale}.")
    try:
        result = diagnose(ae, images, size=args.size, tiles=args.tiles, teacher=teacher, progress=_Progress())
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        text = result.to_json() if args.json else f"AE: {args.ae}\n{result.table()}"
        if teacher is not None and not args.json:
            text += (
                "\nThe gradient cosine is a proxy. What each AE does to a trained SR net, with its noise, "
                f"is what benchmarks/bench_guidance.py measures (--ae {args.teacher} --ae {args.ae})."
            )
        print(text, flush=True)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; the verdict still counts
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if result.verdict == "unfit" else 0


def console_main() -> int:
    """The ``aesop-diagnose`` console script: ``main`` with one-line errors and exit statuses."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
