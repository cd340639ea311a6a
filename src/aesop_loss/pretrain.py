"""``python -m aesop_loss.pretrain``: the AE pretraining command (``aesop_loss.train`` holds the tool).

Run ``python -m aesop_loss.pretrain --help`` for the flags.
"""

from __future__ import annotations

from .cli import run_cli
from .train.cli import main
from .train.config import PretrainConfig

__all__ = ["PretrainConfig", "console_main", "main"]


def console_main() -> int:
    """The ``aesop-pretrain`` console script: ``main`` with one-line errors and exit statuses."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
