"""Atomic file writes: a reader never sees a half-written file, a crash never corrupts an old one.

A failed write (disk full, read-only storage, no permission) surfaces as one ``WriteError`` that
names the file and the reason, whichever writer failed: ``torch.save`` and safetensors report a
full disk as a ``RuntimeError`` or ``SafetensorError`` rather than ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

__all__ = [
    "WriteError",
    "atomic_path",
    "atomic_write_text",
    "remove_stale_temps",
    "save_safetensors",
    "sha256_file",
    "tensor_bytes",
]

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
    if code == errno.EFBIG or "unexpected pos" in text:  # torch.save's word for a write cut short
        limit = _file_size_limit()
        if limit is not None:
            return f"the file would exceed the file-size limit of {limit:,} bytes (ulimit -f)"
        if code == errno.EFBIG:
            return "the file is larger than the file system allows"
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < _LOW_SPACE:  # the partial file still holds the space
            return "no space left on the device"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'write failed'}"


def _file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), or None when there is none."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


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


def remove_stale_temps(
    folder: str | os.PathLike[str], names: Iterable[str], *, older_than: float = 0.0
) -> list[Path]:
    """Remove the temporary files that ``atomic_path`` left for ``names`` in ``folder`` (a killed run's).

    Only names ``atomic_path`` makes are touched: ``.NAME.`` then ``mkstemp``'s 8 random characters
    then ``.tmp``, for the given names (``"*"``: any name); call it while holding the folder's lock,
    or, in a folder that other processes write (the decoded cache), with ``older_than`` seconds: a
    temp file modified more recently may be another process's write in progress.

    Returns:
        The removed files.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        ours = re.compile(r"\.(.+)\.[a-z0-9_]{8}" if name == "*" else re.escape(f".{name}.") + "[a-z0-9_]{8}")
        for stale in folder.glob(f".{name}.*{_TMP_SUFFIX}"):
            if (
                not ours.fullmatch(stale.name[: -len(_TMP_SUFFIX)])
                or stale.is_symlink()
                or not stale.is_file()
            ):
                continue
            if older_than and time.time() - stale.stat().st_mtime < older_than:
                continue
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


# safetensors' names for the dtypes this package writes
_SAFETENSORS_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, without NumPy.

    ``safetensors.torch.save_file`` converts every tensor through NumPy, which a plain install of
    this package does not have; this writes the same format (an 8-byte header length, a JSON
    header, the raw little-endian bytes) straight from the tensors' memory, one tensor at a time.
    ``safetensors.torch.load_file`` reads it back. Write through ``atomic_path`` for atomicity.

    Args:
        tensors: Names and tensors (any device; copied to the CPU one at a time).
        path: The file to write.
        metadata: String entries for the header's ``__metadata__``.

    Raises:
        ValueError: A tensor's dtype has no safetensors name, a tensor is named ``__metadata__``
            (the header's reserved entry: no reader could open the file), or this machine is
            big-endian.

    Examples:
        >>> import tempfile
        >>> from safetensors.torch import load_file
        >>> with tempfile.TemporaryDirectory() as d:
        ...     weights = {"w": torch.arange(3.0), "b": torch.ones(2, dtype=torch.bfloat16)}
        ...     save_safetensors(weights, f"{d}/m.st")
        ...     back = load_file(f"{d}/m.st")
        >>> back["w"].tolist(), back["b"].dtype
        ([0.0, 1.0, 2.0], torch.bfloat16)
    """
    if sys.byteorder != "little":
        raise ValueError("save_safetensors writes little-endian bytes; this machine is big-endian.")
    if "__metadata__" in tensors:
        raise ValueError(
            "a tensor named '__metadata__' clashes with the safetensors header's own entry; rename it."
        )
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        if t.dtype not in _SAFETENSORS_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store.")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for name in names:
            fh.write(tensor_bytes(tensors[name].detach().to("cpu").contiguous()))


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy and without NumPy.

    Examples:
        >>> bytes(tensor_bytes(torch.tensor([1, 2, 255], dtype=torch.uint8)))
        b'\\x01\\x02\\xff'
    """
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("tensor_bytes needs a contiguous CPU tensor.")
    size = t.numel() * t.element_size()
    if size == 0:
        return memoryview(b"")
    buffer = (ctypes.c_char * size).from_address(t.data_ptr())
    buffer._tensor = t  # type: ignore[attr-defined]  # the view keeps the tensor's memory alive
    return memoryview(buffer).cast("B")
