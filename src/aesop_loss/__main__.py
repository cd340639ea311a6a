"""``python -m aesop_loss``: the package's commands, with what each does (``--version`` too)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cli import add_version

__all__ = ["COMMANDS", "main"]

COMMANDS = {  # module: (console script, what it does)
    "aesop_loss.pretrain": ("aesop-pretrain", "pretrain an AE (--preset tiny to try it on a CPU)"),
    "aesop_loss.diagnose": ("aesop-diagnose", "is an AE fit for AESOP? reconstruction, colour, gradients"),
    "aesop_loss.convert": (
        "aesop-convert",
        "an authors' .pth or a traiNNer-redux AE to a model folder, and back",
    ),
}
"""Each command's module, its console script and what it does."""


def main(argv: Sequence[str] | None = None) -> int:
    """Print the commands (any argument but ``--help`` / ``--version`` is refused in one line)."""
    parser = argparse.ArgumentParser(
        prog="python -m aesop_loss",
        description="The AESOP loss for SR training; its commands are:",
        allow_abbrev=False,
    )
    add_version(parser)
    parser.parse_args(argv)
    width = max(len(m) for m in COMMANDS) + len("python -m ")
    lines = ["commands (python -m MODULE or the console script; --help for their flags):"]
    for module, (script, what) in COMMANDS.items():
        lines.append(f"  {'python -m ' + module:<{width}}  {script:<15} {what}")
    lines.append("the loss itself: from aesop_loss import AESOPLoss (README.md)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
