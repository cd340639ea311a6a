"""Progress for people and for logs: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws its line with carriage returns, which a log file or a pipe keeps as one endless line
(``1/10 ...\\r2/10 ...``). When the stream is not a terminal, ``progress`` writes one plain line at
most every ``every`` seconds (and one at the end), with the rate and the time left measured so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["LogProgress", "progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, every: float = 30.0, **kwargs: Any) -> Any:
    """A ``tqdm`` bar when stderr is a terminal, else a ``LogProgress`` with the same arguments.

    Args:
        iterable: What to iterate, as for ``tqdm``.
        every: Seconds between plain lines when stderr is not a terminal.
        **kwargs: ``tqdm``'s ``total``, ``initial``, ``desc``, ``unit``, ``unit_scale``,
            ``disable``, ``leave`` (others are passed to ``tqdm`` and ignored in logs).

    Examples:
        >>> import io
        >>> log = io.StringIO()
        >>> for _ in progress(range(3), desc="files", file=log, every=0):
        ...     pass
        >>> log.getvalue().splitlines()[-1].startswith("files: 3/3 it (100%)")
        True
    """
    stream = kwargs.get("file", sys.stderr)
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    return LogProgress(iterable, every=every, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """Plain progress lines (``desc: n/total unit (p%), rate, ETA``) at most every ``every`` seconds."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        initial: float = 0,
        desc: str | None = None,
        unit: str = "it",
        unit_scale: bool = False,
        every: float = 30.0,
        file: IO[str] | None = None,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start_n = total, initial, initial
        self.desc, self.unit, self.unit_scale, self.every = desc or "progress", unit, unit_scale, every
        self.file = file
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write()

    def _amount(self, n: float) -> str:
        if not self.unit_scale:
            return f"{n:g}"
        for prefix in ("", "k", "M", "G", "T"):
            if abs(n) < 1000:
                return f"{n:.1f}{prefix}"
            n /= 1000
        return f"{n:.1f}P"

    def _write(self) -> None:
        elapsed = time.monotonic() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"{self.desc}: {self._amount(self.n)}"
        if self.total:
            line += f"/{self._amount(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            line += f" {self.unit}"
        if rate > 0:
            line += f", {self._amount(rate) if self.unit_scale else f'{rate:.3g}'} {self.unit}/s"
            if self.total and self.n < self.total:
                line += f", about {_duration((self.total - self.n) / rate)} left at the rate so far"
        line += f", {_duration(elapsed)} elapsed"
        if self.postfix:
            line += f" [{self.postfix}]"
        stream = self.file or sys.stderr
        stream.write(line + "\n")
        stream.flush()


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 4 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
