"""Atomic file writes: a reader never sees a half-written file, a crash never corrupts an old one.

A failed write (disk full, read-only storage, no permission) surfaces as one ``WriteError`` that
names the file and the reason, whichever writer failed: ``torch.save`` and safetensors report a
full disk as a ``RuntimeError`` or ``SafetensorError`` rather than ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["WriteError", "atomic_path", "atomic_write_text", "remove_stale_temps", "sha256_file"]

_TMP_SUFFIX = ".tmp"
# What writers say when the storage refused bytes (safetensors: "I/O error: ... (os error 28)";
# torch.save: "PytorchStreamWriter failed writing file" or "unexpected pos A vs B").
_IO_WORDS = re.compile(
    r"os error|i/o error|ioerror|no space|storagefull|read-only|write|unexpected pos", re.IGNORECASE
)
_LOW_SPACE = 1 << 20  # bytes free after a failed write that mean the disk filled up


class WriteError(OSError):
    """A file could not be written; the message names the file and the reason (no space, ...)."""


def _reason(exc: BaseException, folder: Path) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOSPC or "No space" in text or "os error 28" in text:
        return "no space left on the device"
    if code == errno.EROFS or "Read-only" in text:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < _LOW_SPACE:  # the partial file still holds the space
            return "no space left on the device"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'write failed'}"


def _is_write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    writer_error = isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"
    return writer_error and bool(_IO_WORDS.search(str(exc)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The temporary file is ``.NAME.XXXX.tmp`` in the same folder and is removed on every exit path
    (a ``kill -9`` leaves it behind: ``remove_stale_temps`` clears those).

    Raises:
        WriteError: The write failed (disk full, read-only, permission); ``path`` is unchanged.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with atomic_path(f"{d}/a.txt") as tmp:
        ...         _ = tmp.write_text("hi")
        ...     open(f"{d}/a.txt").read()
        'hi'
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it a normal mode
        os.replace(tmp, path)
    except Exception as exc:
        if isinstance(exc, WriteError) or not _is_write_failure(exc):
            raise
        raise WriteError(
            getattr(exc, "errno", None) or errno.EIO, f"cannot write {path}: {_reason(exc, path.parent)}"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temps(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that ``atomic_path`` left for ``names`` in ``folder`` (a killed run's).

    Only ``.NAME.*.tmp`` for the given names is touched; call it while holding the folder's lock.

    Returns:
        The removed files.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        for stale in folder.glob(f".{name}.*{_TMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
