"""What every command-line entry point shares: one readable error line and a non-zero exit."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

from ._io import WriteError
from .checkpoints import CheckpointError
from .runs import RunFolderError

__all__ = ["CLIError", "StopRequest", "run_cli"]

logger = logging.getLogger(__name__)


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


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn expected failures into ``error: ...`` on stderr and an exit status.

    Examples:
        >>> def main(argv):
        ...     raise CLIError("no images in ./data; pass --data with a folder of PNG/JPEG files")
        >>> run_cli(main, [])
        2
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(main(argv) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except WriteError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except (CheckpointError, RunFolderError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, I/O errors
        print(f"error: {exc.strerror or exc} ({exc.filename or 'I/O'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class StopRequest:
    """Ctrl-C or SIGTERM as a request to stop a training loop at its next step boundary.

    A checkpoint written between steps resumes exactly; one written mid-step (after the optimiser
    step, before the step counter moved) would not. So the first signal only sets ``requested``,
    and the loop saves and stops when the current step is done. A second signal raises
    ``KeyboardInterrupt`` at once: the loop must then stop without saving. Signals within
    ``repeat_window`` seconds of the first count as the same request: a terminal's Ctrl-C reaches
    every process of the job, and ``torchrun`` forwards it to its workers a moment later.

    Examples:
        >>> with StopRequest() as stop:
        ...     for step in range(3):
        ...         if stop.requested:
        ...             break
        >>> stop.requested
        False
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)
    repeat_window = 1.0

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested:
            if now - self._first < self.repeat_window:
                return  # the same stop request, delivered twice
            raise KeyboardInterrupt
        self.requested, self._first = True, now
        logger.warning(
            "%s: stopping after the current step and saving; press Ctrl-C again to abort without saving",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
