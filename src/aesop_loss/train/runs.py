"""Run folders: where a training tool writes, claimed by one run at a time, never a user's folder.

A training tool (``python -m aesop_loss.pretrain``, ``examples/train_esrgan.py``) writes into its
``--out`` folder only after claiming it with ``RunFolder``:

- a folder that exists, is not empty and holds no run marker (``.aesop-run.json``) is a user's
  folder: it is refused, and nothing in it is touched;
- a run folder of another tool is refused;
- an exclusive lock (``.lock``, an OS file lock) keeps a second run out while the first one runs;
  the OS drops the lock when its process dies, so a run killed with ``kill -9`` does not block its
  ``--resume``;
- temporary files that a killed run left behind (``.NAME.XXXX.tmp``, see ``atomic_path``) are removed,
  for the file names the tool says it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from .._io import atomic_write_text, remove_stale_temps
from .._version import __version__
from ..cli import CLIError

__all__ = ["RunFolder", "RunFolderError"]

MARKER_NAME = ".aesop-run.json"
LOCK_NAME = ".lock"


class RunFolderError(CLIError):
    """The output folder cannot be used: a user's folder, another tool's run, or a run in progress."""


def _try_lock(fh: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class RunFolder:
    """Claim ``path`` for one run of ``tool``; release it on exit.

    Args:
        path: The ``--out`` folder.
        tool: Which tool's run this is (``"pretrain"``, ``"train_esrgan"``); a folder marked by
            another tool is refused.
        writes: ``{subfolder: file names}`` this tool writes atomically (``""`` is the folder
            itself; ``"*"`` stands for any name in a subfolder the tool owns whole). Their stale
            temporary files are removed when the folder is claimed.
        legacy: A file whose presence marks a run written before run markers existed; such a folder
            is adopted (and marked) only when ``resume`` is true.

    Raises:
        RunFolderError: From ``claim``: the folder is a file, a user's non-empty folder, another
            tool's run, or locked by a running process.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with RunFolder(f"{d}/run", tool="pretrain") as run:
        ...         sorted(p.name for p in run.path.iterdir())
        ['.aesop-run.json', '.lock']
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tool: str,
        writes: Mapping[str, Iterable[str]] | None = None,
        legacy: str | None = None,
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.tool = tool
        self.writes = {sub: tuple(names) for sub, names in (writes or {}).items()}
        self.legacy = legacy
        self.resume = resume
        self._lock: IO[str] | None = None

    @property
    def marker(self) -> Path:
        return self.path / MARKER_NAME

    def check(self) -> None:
        """Refuse a folder this tool must not write to; reads only, creates nothing.

        Raises:
            RunFolderError: As for ``claim``, except the lock.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise RunFolderError(f"--out {out} is a file, not a folder; choose a folder for the run.")
        if not out.is_dir() or not any(out.iterdir()):
            return
        if self.marker.is_file():
            try:
                owner = json.loads(self.marker.read_text(encoding="utf-8")).get("tool")
            except (OSError, ValueError, AttributeError):
                owner = None
            if owner != self.tool:
                raise RunFolderError(
                    f"--out {out} is a run folder of {owner or 'an unknown tool'}, not of {self.tool}; "
                    "choose another --out."
                )
            return
        if self.resume and self.legacy and (out / self.legacy).is_file():
            return  # a run from before run markers: adopted on --resume
        raise RunFolderError(
            f"--out {out} is a folder that holds other files and no {self.tool} run; nothing was "
            "written. Choose a new or empty folder for --out."
        )

    def claim(self) -> RunFolder:
        """Check the folder, create it, take its lock, mark it as this tool's run, clear stale temps.

        Returns:
            ``self``.

        Raises:
            RunFolderError: See the class.
        """
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        except OSError as exc:  # read-only storage, no permission, a full disk
            raise RunFolderError(
                f"--out {self.path}: cannot write there ({exc.strerror or exc}); choose a writable folder."
            ) from None
        if not _try_lock(fh):
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunFolderError(
                f"--out {self.path} is in use by another run ({holder}); wait for it to finish, or "
                "choose another --out."
            )
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._lock = fh
        if not self.marker.is_file():
            atomic_write_text(
                self.marker, json.dumps({"tool": self.tool, "aesop_loss_version": __version__}) + "\n"
            )
        for sub, names in self.writes.items():
            folder = self.path / sub
            if folder.is_dir():
                remove_stale_temps(folder, names)
        return self

    def trim_log(self, name: str, step: int) -> None:
        """Keep only the records of steps up to ``step`` in the JSON-lines log ``name``.

        A run resumed from its checkpoint of ``step`` logs the later steps again; records written
        after that checkpoint, and a line cut short by a kill, are dropped so each step appears once.
        """
        path = self.path / name
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(f"{line}\n")
        atomic_write_text(path, "".join(kept))

    def release(self) -> None:
        """Drop the lock (the OS also drops it when the process ends)."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.seek(0)
                self._lock.truncate()
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self.claim()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
