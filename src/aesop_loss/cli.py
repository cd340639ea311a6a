"""What every command-line entry point shares: one readable error line and a non-zero exit.

``convert``, ``pretrain`` and the bundled examples run their ``main`` through ``run_cli``: expected
failures (``CLIError``, ``CheckpointError``, a failed write, a missing file) print one ``error: ...``
line on stderr, never a traceback; an unexpected one prints one line too (the traceback with
``AESOP_LOSS_TRACEBACK=1``). Whatever happened, DataLoader workers that the command started and
that are still alive are ended before the process exits (a caller's own processes are left
alone): they ignore SIGTERM (a stop request is the training process's to handle), so the
interpreter's own exit-time clean-up would wait for them forever.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable, Collection, Sequence

from ._io import WriteError
from ._version import __version__
from .checkpoints import CheckpointError

__all__ = ["CLIError", "add_version", "end_workers", "run_cli"]


class CLIError(Exception):
    """A user-facing failure: printed as one line; exit status 2 (bad input) unless ``exit_code`` says.

    Args:
        message: The line to print, naming the problem and the fix.
        exit_code: 2 for bad input (the default), 1 for a run that failed on its way (a diverged
            loss, a failed write).
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_version(parser: argparse.ArgumentParser) -> None:
    """Give a command ``--version``: its name and the package's version, then exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (aesop-loss {__version__})")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn expected failures into ``error: ...`` on stderr and an exit status.

    Examples:
        >>> def main(argv):
        ...     raise CLIError("no images in ./data; pass --data with a folder of PNG/JPEG files")
        >>> run_cli(main, [])
        2
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    callers = {child.pid for child in multiprocessing.active_children()}  # never ours to end
    try:
        return int(main(argv) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except WriteError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except (CheckpointError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, I/O errors
        print(f"error: {exc.strerror or exc} ({exc.filename or 'I/O'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # this package's checks of settings and inputs name the problem and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "Could not determine home directory" not in str(exc):
            return _unexpected(exc)
        print(
            "error: a path starts with ~user for a user this machine does not know (or ~ without a home "
            "folder); write the path out in full.",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # a bug or an unforeseen failure: still one line and an exit status
        return _unexpected(exc)
    finally:
        end_workers(spare=callers)


def _unexpected(exc: BaseException) -> int:
    if os.environ.get("AESOP_LOSS_TRACEBACK") == "1":
        traceback.print_exception(exc)
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
    print(
        f"error: unexpected {type(exc).__name__}: {detail} (set AESOP_LOSS_TRACEBACK=1 for the "
        "traceback, and please report it)",
        file=sys.stderr,
    )
    return 1


def end_workers(timeout: float = 5.0, *, spare: Collection[int | None] = ()) -> list[int]:
    """Kill this process's daemonic children (DataLoader workers) that are still alive.

    Workers ignore SIGINT and SIGTERM (``ignore_stop_signals``), and Python's exit-time clean-up
    terminates daemonic children with SIGTERM and then joins them: after an error that left a
    loader's workers running, that join never returns. SIGKILL cannot be ignored.

    Args:
        timeout: Seconds to wait for each killed child.
        spare: PIDs left alone: ``run_cli`` passes the children its caller had before the command
            ran (a caller's ``multiprocessing.Pool``, its own processes).

    Returns:
        The PIDs killed.
    """
    ours = [
        child
        for child in multiprocessing.active_children()
        if child.daemon and child.pid not in spare and child.is_alive() and child.pid is not None
    ]
    for child in ours:
        child.kill()
    for child in ours:
        child.join(timeout)
    return [child.pid for child in ours if child.pid is not None]
