"""Run folders: where a training tool writes, claimed by one run at a time, never a user's folder.

A training tool (``python -m aesop_loss.pretrain``, ``examples/train_esrgan.py``) writes into its
``--out`` folder only after claiming it with ``RunFolder``:

- a folder that exists, is not empty and holds no run marker (``.aesop-run.json``) is a user's
  folder: it is refused, and nothing in it is touched;
- a run folder of another tool is refused;
- an exclusive lock (``.lock``, a POSIX record lock, which forked data-loader workers do not
  inherit) keeps a second run out while the first one runs; the OS drops it when its process dies,
  so a run killed with ``kill -9`` does not block its ``--resume``, even while orphaned workers live;
- no file or folder the tool writes or deletes there may be a symbolic link (it could point at a
  user's file): such a folder is refused before anything is written, and checked again before every
  save (``verify``), in case a link appeared during the run; files written in place (the lock, the
  metrics log) are opened without following links and refused when they have another hard link;
- a folder from before run markers existed is adopted only when its checkpoint reads as this tool's
  (``legacy_keys``), never on the word of ``--resume`` alone;
- temporary files that a killed run left behind (``.NAME.XXXX.tmp``, see ``atomic_path``) are removed,
  for the file names the tool says it writes, once the folder is claimed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .._compat import load_weights
from .._io import atomic_write_text, remove_stale_temps, tensor_bytes
from .._version import __version__
from ..cli import CLIError

__all__ = ["RunFolder", "RunFolderError", "files_fingerprint", "weights_fingerprint"]

MARKER_NAME = ".aesop-run.json"
LOCK_NAME = ".lock"


class RunFolderError(CLIError):
    """The output folder cannot be used: a user's folder, another tool's run, or a run in progress."""


# Folders this process holds: POSIX record locks do not conflict within one process.
_HELD: set[Path] = set()


def _try_lock(fh: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:  # a record lock, not flock(): fork()ed workers do not inherit it, so it dies with the run
        fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _legacy_checkpoint_has(path: Path, keys: Iterable[str]) -> bool:
    """Whether ``path`` reads (weights only, memory-mapped) as a dict holding every key in ``keys``."""
    try:
        state = load_weights(path, mmap=True)
    except Exception:  # any unreadable or foreign file: not this tool's checkpoint
        return False
    return isinstance(state, dict) and all(k in state for k in keys)


class RunFolder:
    """Claim ``path`` for one run of ``tool``; release it on exit.

    Args:
        path: The ``--out`` folder.
        tool: Which tool's run this is (``"pretrain"``, ``"train_esrgan"``); a folder marked by
            another tool is refused.
        writes: ``{subfolder: file names}`` this tool writes atomically (``""`` is the folder
            itself; ``"*"`` stands for any name in a subfolder the tool owns whole). Their stale
            temporary files are removed when the folder is claimed.
        legacy: The checkpoint of a run written before run markers existed; such a folder is
            adopted (and marked) only when ``resume`` is true and the file reads as a checkpoint
            holding every key in ``legacy_keys``.
        legacy_keys: The top-level keys of this tool's checkpoints.
        resume: Whether the run resumes (a legacy folder is adopted only then).

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
        legacy_keys: Iterable[str] = (),
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.tool = tool
        self.writes = {sub: tuple(names) for sub, names in (writes or {}).items()}
        self.legacy = legacy
        self.legacy_keys = tuple(legacy_keys)
        self.resume = resume
        self._lock: IO[str] | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the folder once claimed

    @property
    def marker(self) -> Path:
        return self.path / MARKER_NAME

    def check(self) -> None:
        """Refuse a folder this tool must not write to; reads only, creates nothing.

        Raises:
            RunFolderError: As for ``claim``, except the lock.
        """
        out = self.path
        if out.is_symlink():  # its writes would land wherever it points (and a later resume would differ)
            raise RunFolderError(
                f"--out {out} is a symbolic link (to {os.path.realpath(out)}); the tool never writes through "
                "links, so pass the folder itself."
            )
        if out.exists() and not out.is_dir():
            raise RunFolderError(f"--out {out} is a file, not a folder; choose a folder for the run.")
        if not out.is_dir() or not any(out.iterdir()):
            return
        self._refuse_links()
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
        legacy = out / self.legacy if self.legacy else None
        if self.resume and legacy is not None and legacy.is_file():
            if _legacy_checkpoint_has(legacy, self.legacy_keys):
                return  # a run from before run markers, by its checkpoint: adopted on --resume
            raise RunFolderError(
                f"--out {out} has no run marker, and its {self.legacy} is not a {self.tool} checkpoint "
                "(unreadable, or other keys); nothing was written. Choose a new or empty folder for --out."
            )
        raise RunFolderError(
            f"--out {out} is a folder that holds other files and no {self.tool} run; nothing was "
            "written. Choose a new or empty folder for --out."
        )

    def _refuse_links(self) -> None:
        """Refuse a folder where a path this tool writes or deletes is a symbolic link."""
        paths = [self.path / LOCK_NAME, self.marker]
        if self.legacy:
            paths.append(self.path / self.legacy)
        for sub, names in self.writes.items():
            folder = self.path / sub
            paths.append(folder)
            if folder.is_dir() and not folder.is_symlink():
                # "*": the tool owns every name there, so no entry may be a link
                paths += list(folder.iterdir()) if "*" in names else [folder / name for name in names]
                paths += list(folder.glob(".*.tmp"))
        links = [p for p in paths if p.is_symlink()]
        if links:
            raise RunFolderError(
                f"--out {self.path}: {links[0].relative_to(self.path)} is a symbolic link, and the tool "
                "never writes or deletes through links; nothing was touched. Remove the link, or choose "
                "another --out."
            )

    def claim(self) -> RunFolder:
        """Check the folder, create it, take its lock, mark it as this tool's run, clear stale temps.

        Returns:
            ``self``.

        Raises:
            RunFolderError: See the class.
        """
        self.check()
        key = self.path.resolve()
        if key in _HELD:
            raise RunFolderError(
                f"--out {self.path} is in use by another run (pid {os.getpid()}, this process); choose "
                "another --out."
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # never through a link
            fh = os.fdopen(os.open(self.path / LOCK_NAME, flags, 0o644), "r+", encoding="utf-8")
        except OSError as exc:  # read-only storage, no permission, a full disk, a link
            raise RunFolderError(
                f"--out {self.path}: cannot write there ({exc.strerror or exc}); choose a writable folder."
            ) from None
        if os.fstat(fh.fileno()).st_nlink > 1:  # truncating it would truncate a file elsewhere
            fh.close()
            raise RunFolderError(_shared(self.path, LOCK_NAME))
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
        stat = os.stat(self.path)
        self._identity = (stat.st_dev, stat.st_ino)
        _HELD.add(key)
        if not self.marker.is_file():
            atomic_write_text(
                self.marker, json.dumps({"tool": self.tool, "aesop_loss_version": __version__}) + "\n"
            )
        for sub, names in self.writes.items():
            folder = self.path / sub
            if folder.is_dir():
                remove_stale_temps(folder, names)
        return self

    def verify(self) -> None:
        """Check again, right before a save, that the folder is the one claimed and that nothing the
        tool writes has become a symbolic link since (a link made during the run could point at a
        user's file).

        Raises:
            RunFolderError: The folder was replaced or a link appeared; exit status 1, the files
                already saved are left as they are.
        """
        try:
            stat = os.lstat(self.path)
        except OSError:
            stat = None
        if stat is None or (self._identity is not None and (stat.st_dev, stat.st_ino) != self._identity):
            raise RunFolderError(
                f"--out {self.path} was moved, deleted or replaced during the run; the run stopped without "
                "writing into whatever is there now.",
                exit_code=1,
            )
        try:
            self._refuse_links()
        except RunFolderError as exc:
            raise RunFolderError(
                f"{exc} (the link appeared during the run, which stopped)", exit_code=1
            ) from None

    def open_log(self, name: str) -> IO[str]:
        """Open the folder's log ``name`` for appending, never through a link or into a file that has
        other hard links (it could be a user's file).

        Raises:
            RunFolderError: ``name`` is a symbolic link or shares its data with another name.
        """
        path = self.path / name
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:
            if path.is_symlink():
                raise RunFolderError(
                    f"--out {self.path}: {name} is a symbolic link, and the tool never writes through links; "
                    "the run stopped.",
                    exit_code=1,
                ) from None
            raise
        if os.fstat(fd).st_nlink > 1:
            os.close(fd)
            raise RunFolderError(_shared(self.path, name), exit_code=1)
        return os.fdopen(fd, "a", encoding="utf-8")

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
                if os.fstat(self._lock.fileno()).st_nlink == 1:  # never truncate a file shared since
                    self._lock.seek(0)
                    self._lock.truncate()
            self._lock.close()
            self._lock = None
            _HELD.discard(self.path.resolve())

    def __enter__(self) -> RunFolder:
        return self.claim()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _shared(folder: Path, name: str) -> str:
    return (
        f"--out {folder}: {name} has another hard link (it shares its data with a file elsewhere, maybe "
        "one of yours), and the tool never writes into such a file; nothing was written to it. Remove "
        f"{folder / name} and run again."
    )


def weights_fingerprint(model: Any) -> str:
    """A digest of a module's weights (names, dtypes, shapes and bytes): the same weights, wherever
    they were loaded from, give the same digest.

    Examples:
        >>> import torch
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> b.load_state_dict(a.state_dict())
        <All keys matched successfully>
        >>> same, other = weights_fingerprint(b), weights_fingerprint(torch.nn.Linear(2, 2))
        >>> weights_fingerprint(a) == same, weights_fingerprint(a) == other
        (True, False)
    """
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    """A digest of a set of files by name, size and modification time: a file added, removed or
    rewritten changes it (their bytes are not read, so it costs one ``stat`` per file)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in paths):
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()
