"""Pretrain an AESOP autoencoder: ``python -m aesop_loss.pretrain --data DIV2K --out runs/ae``.

Loss: ``L1(AE(HR), HR) + bottleneck_weight * L1(encode(HR), LR_bicubic)``; defaults are the paper's
(Adam 1e-4, betas 0.9/0.99, EMA 0.999, crop 256, 100k steps), meant for GPUs. On a CPU, start from
``--preset tiny`` (a tiny AE in 10 s to 1 min) or ``--preset demo`` (the bundled demo AE's
recipe). Before it starts, a run estimates its memory and time per step and refuses a step that
cannot fit the free memory (``--force`` overrides). Runs on a CPU, one GPU, or many with
``torchrun --nproc_per_node=N -m aesop_loss.pretrain ...`` (DDP is detected from the ``RANK`` /
``WORLD_SIZE`` variables: NCCL on CUDA, gloo on CPU).

``--out DIR`` is a model folder after the first save (``config.json`` + ``model.safetensors`` of the
EMA weights + model card), so ``AESOPLoss(ae=DIR)`` works on a finished or running run. The full
training state goes to ``DIR/checkpoints/last.pt`` (atomically) every ``--save-every`` steps, and
when Ctrl-C or SIGTERM stops the run: it finishes the current step, saves and exits (status 130; a
second Ctrl-C aborts at once without saving). ``--resume`` continues a run exactly. ``--out`` must
be new, empty, or a pretraining run; one run at a time.

Needs the training extra: ``pip install "aesop-loss[train]"``.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..cli import CLIError
from .config import PretrainConfig

try:  # the loop reads images with Pillow, which only the [train] extra installs
    from .loop import train

    _run: Callable[[PretrainConfig], Path] | None = train
    _missing = ""
except ModuleNotFoundError as exc:  # --help and the flag checks still work without it
    if exc.name not in ("PIL", "tqdm"):
        raise
    _run, _missing = None, exc.name

__all__ = ["main"]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "aesop-loss[train]"'


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the pretraining flags, check them, and run (or resume) the run.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 when the run finished.

    Raises:
        CLIError: A bad flag, data or output folder; or the training extra is not installed.
    """
    args = PretrainConfig.parser(prog="python -m aesop_loss.pretrain", description=__doc__).parse_args(argv)
    command = "python -m aesop_loss.pretrain " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    cfg = PretrainConfig.from_args(args, command=command, argv=sys.argv[1:] if argv is None else argv)
    cfg.validate()
    if _run is None:
        raise CLIError(f"pretraining needs {_missing}, which the training extra installs: {INSTALL_HINT}")
    out = _run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        logger.info("the model is in %s; use it with: AESOPLoss(ae=%r)", out, str(out))
    return 0
