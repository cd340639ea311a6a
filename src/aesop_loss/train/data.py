"""Training data for AE pretraining: dataset downloads, image folders, and aligned random crops.

- ``prepare_data("DIV2K" | "Flickr2K" | "DF2K" | "path" | "HR_DIR:LR_DIR", ...)`` resolves a
  name or path to HR images (and paired LR images when there are any). Named datasets are
  downloaded from their official source with a progress bar, resumed after an interruption,
  verified (archive integrity, image count) and extracted once. ``AESOP_DATA_MIRROR`` replaces the
  official base URLs (a local mirror, or a test server).
- ``CropDataset`` reads only image headers at start-up and decodes an image when a sample needs it
  (in the DataLoader workers), keeping decoded images in a bounded RAM cache and optionally a
  capped on-disk cache; it takes several random crops per read, applies flips and 90-degree
  rotations (and optionally per-channel colour gains) to HR and LR alike, and computes the LR crop
  with MATLAB-exact bicubic when no LR images were given. Randomness is a function of (seed, sample
  number), so a resumed run sees exactly the data it would have seen, with any number of workers or
  processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import stat
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset, Sampler, get_worker_info

from .._io import atomic_path, remove_stale_temps, save_safetensors
from ..resize import make_lr
from .budget import available_bytes
from .progress import progress

__all__ = [
    "DATASETS",
    "DECODE_ERRORS",
    "DISK_CACHE_AUTO_BYTES",
    "CropDataset",
    "DataError",
    "ImageSet",
    "RemoteArchive",
    "SampleStream",
    "check_out_outside_data",
    "collate_crops",
    "list_images",
    "load_image",
    "prepare_data",
    "prepare_validation",
    "ram_cache_default",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIRROR_ENV = "AESOP_DATA_MIRROR"


class DataError(ValueError):
    """Training data is missing, empty, unreadable, or cannot be downloaded."""


@dataclasses.dataclass(frozen=True)
class RemoteArchive:
    """One archive of a public dataset: where it is, and what it must contain once extracted."""

    url: str
    folder: str  # folder inside the extraction root that holds the images
    count: int  # number of images it must hold


_DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
DATASETS: dict[str, dict[str, RemoteArchive]] = {
    "DIV2K": {
        "hr": RemoteArchive(_DIV2K + "DIV2K_train_HR.zip", "DIV2K_train_HR", 800),
        "lr_x2": RemoteArchive(_DIV2K + "DIV2K_train_LR_bicubic_X2.zip", "DIV2K_train_LR_bicubic/X2", 800),
        "lr_x4": RemoteArchive(_DIV2K + "DIV2K_train_LR_bicubic_X4.zip", "DIV2K_train_LR_bicubic/X4", 800),
        "val": RemoteArchive(_DIV2K + "DIV2K_valid_HR.zip", "DIV2K_valid_HR", 100),
    },
    "Flickr2K": {
        "hr": RemoteArchive("https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar", "Flickr2K/Flickr2K_HR", 2650),
    },
}
"""The public datasets ``--data`` names, by part (``hr``, ``lr_x2``, ``lr_x4``, ``val``)."""
DATASET_NAMES = ("DIV2K", "Flickr2K", "DF2K")


@dataclasses.dataclass
class ImageSet:
    """HR image files, with LR files of the same names when the data is paired."""

    hr: list[Path]
    lr: list[Path] | None = None
    name: str = "images"


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted by path; linked folders are followed
    (each folder once, so a link loop ends).

    Raises:
        DataError: The folder does not exist or holds no images.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; pass --data a dataset name or a folder of images.")
    files = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of each folder walked: a link loop ends
    for root, dirs, names in os.walk(folder, followlinks=True):  # DF2K built of linked folders
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files += [Path(root, n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    files = sorted(p for p in files if p.is_file())
    if not files:
        raise DataError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def load_image(path: str | os.PathLike[str]) -> Tensor:
    """Decode an image of any mode to a ``(3, H, W)`` uint8 tensor, keeping its real values.

    8-bit modes (L, RGB, RGBA, P, CMYK ...) convert as usual (transparency over white); 16-bit and
    32-bit integer images are scaled from [0, 65535] to [0, 255]; float images (mode ``F``, e.g.
    float TIFFs) are read as [0, 1] and scaled to [0, 255].

    Raises:
        OSError, ValueError, SyntaxError, Image.DecompressionBombError: The file cannot be decoded.
    """
    with _open_image(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
        elif img.mode in ("F", "I") or img.mode.startswith("I;16"):
            return _wide_to_uint8(img)
        else:
            rgb = img.convert("RGB")
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()


@contextlib.contextmanager
def _open_image(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """``Image.open`` of a regular file only: a FIFO or device put in an image's place would block
    the reader forever, so the file is opened without blocking and refused unless it is regular.

    Raises:
        OSError: ``path`` is not a regular file (or cannot be opened).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket?)", os.fspath(path))
        with Image.open(fh) as img:
            yield img


def _wide_to_uint8(img: Image.Image, strip: int = 256) -> Tensor:
    """A single-channel 16/32-bit integer or float image as 8-bit RGB, by its real value range.

    Floats are read as [0, 1]; 16-bit integers as [0, 65535]; 32-bit integers as [0, 65535] when
    they stay in it (16-bit data in a 32-bit file), else as [0, 2^31 - 1]. Converted ``strip`` rows
    at a time, so the peak is the result plus one strip, not several float copies of the image.
    """
    width, height = img.size
    if img.mode == "F":
        full = 1.0
    elif img.mode == "I" and (img.getextrema()[1] or 0) > 65535:  # type: ignore[operator]
        full = 2**31 - 1.0
    else:
        full = 65535.0
    gray = torch.empty(height, width, dtype=torch.uint8)
    for top in range(0, height, strip):
        rows = img.crop((0, top, width, min(top + strip, height))).convert("F")
        values = torch.frombuffer(bytearray(rows.tobytes()), dtype=torch.float32).view(-1, width)
        gray[top : top + values.shape[0]] = (
            (values.double() / full * 255).round().clamp(0, 255).to(torch.uint8)
        )
    return gray.expand(3, -1, -1).contiguous()


# --- downloads ------------------------------------------------------------------------------------


def _resolve_url(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1] if mirror else url


def download(url: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, resuming a ``.part`` file left earlier.

    Raises:
        DataError: The download failed; the partial file is kept so the next call resumes.
    """
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with (
                open(part, "ab" if have else "wb") as fh,
                progress(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise DataError(
                f"download of {url} stopped at {part.stat().st_size} of {total} bytes; partial file kept "
                f"at {part}, run again to resume."
            )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
            raise DataError(f"out of disk space while downloading to {dest.parent}.") from exc
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"download of {url} failed ({reason}); partial file kept at {part}, run again to resume "
            f"(or set {MIRROR_ENV} to a mirror)."
        ) from exc
    part.replace(dest)
    return dest


def _extract(archive: Path, root: Path) -> None:
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise DataError(f"{archive}: corrupted member {bad}; delete the file and run again.")
                zf.extractall(root)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(root, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"{archive}: not a valid archive ({exc}); it was deleted, run again to re-download."
        ) from exc


def fetch_archive(item: RemoteArchive, root: Path) -> Path:
    """Download, verify and extract ``item`` under ``root`` once; returns its image folder."""
    folder = root / item.folder
    marker = root / f".{hashlib.sha1(item.url.encode()).hexdigest()[:12]}.complete"
    if marker.is_file() and folder.is_dir():
        return folder
    archive = download(_resolve_url(item.url), root / "archives" / item.url.rsplit("/", 1)[1])
    _extract(archive, root)
    found = len(list_images(folder)) if folder.is_dir() else 0
    if found != item.count:
        raise DataError(
            f"{archive.name}: expected {item.count} images in {folder}, found {found}; delete {archive} "
            "and run again."
        )
    marker.touch()
    return folder


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aesop-loss" / "datasets"


def _paired(hr_files: list[Path], lr_dir: Path, scale: int | None) -> list[Path]:
    lr_files = {p.stem: p for p in list_images(lr_dir)}
    out = []
    for hr in hr_files:
        # DIV2K names LR files 0001x4.png for HR 0001.png
        match = lr_files.get(hr.stem) or (lr_files.get(f"{hr.stem}x{scale}") if scale else None)
        if match is None:
            raise DataError(f"{lr_dir}: no LR image for {hr.name} (matched by file name).")
        out.append(match)
    return out


def _dataset_name(data: str) -> str | None:
    """The dataset ``data`` names (any case), unless it is an existing path."""
    name = next((n for n in DATASET_NAMES if n.upper() == data.upper()), None)
    return name if name is not None and not Path(data).expanduser().exists() else None


def prepare_data(data: str, *, scale: int, data_dir: str | os.PathLike[str] | None = None) -> ImageSet:
    """Resolve ``--data`` to image files, downloading a named dataset when needed.

    Args:
        data: ``DIV2K``, ``Flickr2K``, ``DF2K``, a folder of HR images, or ``HR_DIR:LR_DIR``.
        scale: SR scale (selects DIV2K's official bicubic LR set).
        data_dir: Cache for downloads (default ``~/.cache/aesop-loss/datasets``).

    Returns:
        The images. Named datasets pair DIV2K HR with its official LR; Flickr2K's LR is computed.

    Raises:
        DataError: Unknown name, missing or empty folder, failed download.
    """
    root = Path(data_dir).expanduser() if data_dir else _default_data_dir()
    path = Path(data).expanduser()
    name = _dataset_name(data)
    if name is not None:
        hr: list[Path] = []
        if name in ("DIV2K", "DF2K"):
            hr += list_images(fetch_archive(DATASETS["DIV2K"]["hr"], root / "DIV2K"))
        if name in ("Flickr2K", "DF2K"):
            hr += list_images(fetch_archive(DATASETS["Flickr2K"]["hr"], root / "Flickr2K"))
        # official LR exists only for DIV2K; mixing paired and computed LR in one set would be
        # inconsistent, so DF2K computes LR for all images with the same MATLAB bicubic
        if name == "DIV2K" and f"lr_x{scale}" in DATASETS["DIV2K"]:
            lr_dir = fetch_archive(DATASETS["DIV2K"][f"lr_x{scale}"], root / "DIV2K")
            return ImageSet(hr, _paired(hr, lr_dir, scale), name=name)
        return ImageSet(hr, None, name=name)
    if ":" in data and not path.exists():
        hr_text, lr_text = data.split(":", 1)
        hr = list_images(hr_text)
        return ImageSet(hr, _paired(hr, Path(lr_text).expanduser(), scale), name=Path(hr_text).name)
    if not path.exists():
        raise DataError(
            f"--data {data!r}: neither a dataset name ({', '.join(DATASET_NAMES)}) nor an existing folder."
        )
    return ImageSet(list_images(path), None, name=path.name)


def check_out_outside_data(out: str | os.PathLike[str], data: str) -> None:
    """Refuse an output folder inside the data: the run's own files would become training images.

    Raises:
        DataError: ``out`` is one of ``data``'s folders (``DIR`` or ``HR_DIR:LR_DIR``) or inside one.
    """
    if _dataset_name(data) is not None:
        return
    folders = data.split(":") if ":" in data and not Path(data).expanduser().exists() else [data]
    target = Path(out).expanduser().resolve()
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        if target == root or root in target.parents:
            raise DataError(
                f"--out {out} is inside --data {folder}: the run's own images (samples, ...) would become "
                "training data. Choose an --out outside the data folder."
            )


def prepare_validation(
    val: str | None, data: str, *, data_dir: str | os.PathLike[str] | None, count: int = 10
) -> list[Path]:
    """Validation HR images for ``--val``.

    ``None`` means DIV2K's first ``count`` validation images when ``data`` is a dataset name (none
    for a folder); ``"none"`` means no validation; ``"DIV2K"`` asks for DIV2K's explicitly; anything
    else is a folder of images.
    """
    if val is None:
        val = "DIV2K" if _dataset_name(data) else "none"
    if val.lower() == "none":
        return []
    if _dataset_name(val) == "DIV2K":
        root = Path(data_dir).expanduser() if data_dir else _default_data_dir()
        return list_images(fetch_archive(DATASETS["DIV2K"]["val"], root / "DIV2K"))[:count]
    return list_images(val)


# --- crops ----------------------------------------------------------------------------------------


DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What decoding an unreadable image raises (truncated, corrupt, a decompression bomb, unknown format)."""

DISK_CACHE_AUTO_BYTES = 200 << 20
"""The on-disk cache is used without being asked when the set's decoded pixels fit this (200 MiB)."""
_HEADER_THREADS = 16  # header reads wait on the disk more than on the CPU
_HEADER_PROGRESS = 1_000  # files from which reading the headers shows a progress bar
_CACHE_NAME = re.compile(r"[0-9a-f]{16}\.safetensors")  # what this package writes in a cache folder
_CACHE_TEMP = re.compile(r"\.([0-9a-f]{16}\.safetensors)\.[a-z0-9_]{8}\.tmp")  # atomic_path's, of an entry


def ram_cache_default() -> int:
    """Default in-RAM cache of decoded images per process: an eighth of the free memory, at most 2 GiB."""
    free = available_bytes(torch.device("cpu"))
    return min(2 << 30, free // 8) if free else 512 << 20


def _stamp(path: Path) -> str:
    """What identifies a file's content for the decoded cache: its size and modification time.

    A file edited in place whose size and modification time are both restored afterwards (a
    same-size edit, then ``touch -r`` or ``cp -p`` of the old time) keeps its stamp, and its cache
    entry is served: delete ``.decoded/`` after such an edit (hashing every image at every read
    would cost more than decoding it).
    """
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


_SKIPS_SHOWN = 10  # start-up skips named one by one; the rest are counted in one warning


def _warn_skipped(skipped: list[tuple[Path, str, str]], what: str) -> None:
    """One warning per skipped file (path, reason, detail) for the first few, then one that counts
    the rest by reason."""
    for path, _, detail in skipped[:_SKIPS_SHOWN]:
        warnings.warn(f"skipping {path}: {detail}.", stacklevel=4)
    rest = skipped[_SKIPS_SHOWN:]
    if rest:
        reasons = Counter(reason for _, reason, _ in rest)
        summary = ", ".join(f"{n:,} {reason}" for reason, n in reasons.most_common())
        warnings.warn(f"skipping {len(rest):,} more {what}s: {summary}.", stacklevel=4)


def _header(path: Path) -> tuple[int, int] | BaseException:
    try:
        with _open_image(path) as img:  # reads the header only
            return img.size
    except DECODE_ERRORS as exc:
        return exc


def _read_headers(files: Sequence[Path], crop: int, what: str) -> dict[int, tuple[int, int]]:
    """``{index: (width, height)}`` of files whose header opens and whose sides reach ``crop``.

    Headers are read in parallel, with a progress bar on large folders; no pixel is decoded.
    """
    threads = min(_HEADER_THREADS, max(1, len(files)))
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(
            progress(
                pool.map(_header, files),
                total=len(files),
                desc=f"reading {what} headers",
                unit="file",
                leave=False,
                disable=len(files) < _HEADER_PROGRESS,
            )
        )
    keep: dict[int, tuple[int, int]] = {}
    skipped: list[tuple[Path, str, str]] = []
    for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
        if isinstance(size, BaseException):
            kind = size.__class__.__name__
            skipped.append((path, f"not readable ({kind})", f"not a readable image ({kind})"))
        elif min(size) < crop:
            detail = f"{size[0]}x{size[1]} is smaller than the {crop}px crop"
            skipped.append((path, "smaller than the crop", detail))
        else:
            keep[i] = size
    _warn_skipped(skipped, what)
    return keep


_CACHE_MARK = {"aesop_loss": "decoded image"}  # in each cache entry's header: what pruning may remove


def _our_cache_entry(path: Path) -> bool:
    """Whether ``path`` is a plain file whose safetensors header carries this cache's mark."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("aesop_loss") == _CACHE_MARK["aesop_loss"]
    except Exception:  # not a safetensors file: not ours to remove
        return False


class _LRUBytes:
    """Decoded images by path, least recently used dropped first, holding at most ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.items: OrderedDict[Path, Tensor] = OrderedDict()

    def get(self, key: Path) -> Tensor | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Path, value: Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.budget or key in self.items:
            return
        while self.used + size > self.budget:
            _, dropped = self.items.popitem(last=False)
            self.used -= dropped.numel() * dropped.element_size()
        self.items[key] = value
        self.used += size


class CropDataset(Dataset[tuple[Tensor, Tensor]]):
    """Aligned random HR/LR crops with flips and rotations, deterministic in (seed, sample number).

    Item ``g`` is the ``g``-th sample of an endless stream: the image is chosen by a per-epoch
    permutation, the crop and augmentation by a generator seeded with ``(seed, g)``. Each item
    holds ``crops_per_image`` crops of one decoded image.

    Start-up reads only the image headers (sizes; in parallel, with a progress bar on large
    folders); pixels are decoded when a sample needs them, in the DataLoader worker that makes it.
    Decoded images are kept in a bounded in-RAM cache per process (least recently used dropped
    first; the budget is shared by the DataLoader workers) and, optionally, in an on-disk cache of
    raw pixels with a size cap, shared by workers, processes and later runs. An image that fails
    to decode when a sample reaches it is skipped with a warning: that sample reads the next image
    in the list, so every other sample is unchanged and a resumed run sees the same data.

    Args:
        images: HR files, with optional paired LR files.
        crop: HR crop size (a multiple of ``scale``).
        scale: SR scale.
        seed: Base seed.
        crops_per_image: Crops taken per image read.
        augment: Random flips and 90-degree rotations.
        color_jitter: Also scale each RGB channel of a crop by a random gain in
            ``[1 - color_jitter, 1 + color_jitter]`` (HR and LR alike; the bicubic LR of a scaled
            crop is the scaled LR). Colour augmentation for small training sets, where an AE
            otherwise memorises the photos' colours instead of reading them from its input.
        cache_dir: Folder of the on-disk cache (``None``: no disk cache).
        ram_cache_bytes: In-RAM cache budget of one process, split evenly between its DataLoader
            workers (default ``ram_cache_default()``: an eighth of the free memory, at most 2 GiB).
        disk_cache_bytes: Size cap of the on-disk cache. ``None`` (default): used only when the
            whole set's decoded pixels fit ``DISK_CACHE_AUTO_BYTES`` (200 MiB); ``0``: off; a
            number: the images (in list order) whose pixels fit it are cached, the rest are not.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Image.new("RGB", (40, 36), "gray").save(f"{d}/a.png")
        ...     ds = CropDataset(ImageSet([Path(f"{d}/a.png")]), crop=16, scale=4, seed=0)
        ...     hr, lr = ds[0]
        >>> tuple(hr.shape), tuple(lr.shape), hr.dtype
        ((1, 3, 16, 16), (1, 3, 4, 4), torch.uint8)
    """

    def __init__(
        self,
        images: ImageSet,
        *,
        crop: int,
        scale: int,
        seed: int,
        crops_per_image: int = 1,
        augment: bool = True,
        color_jitter: float = 0.0,
        cache_dir: str | os.PathLike[str] | None = None,
        ram_cache_bytes: int | None = None,
        disk_cache_bytes: int | None = None,
    ) -> None:
        if crop % scale:
            raise DataError(f"--crop {crop} is not a multiple of --scale {scale}.")
        self.crop, self.scale, self.seed = crop, scale, seed
        self.crops_per_image, self.augment = crops_per_image, augment
        self.color_jitter = color_jitter
        sizes = _read_headers(images.hr, crop, "image")
        keep = list(sizes)
        if images.lr is not None:
            lr_sizes = _read_headers([images.lr[i] for i in keep], crop // scale, "LR image")
            paired, mismatched = [], []
            for j, i in enumerate(keep):
                w, h = sizes[i]
                if j in lr_sizes and lr_sizes[j] != (w // scale, h // scale):
                    lw, lh = lr_sizes[j]
                    why = f"its LR {images.lr[i]} is {lw}x{lh}, not {w // scale}x{h // scale}"
                    mismatched.append((images.hr[i], "with an LR image of the wrong size", why))
                elif j in lr_sizes:
                    paired.append(i)
            _warn_skipped(mismatched, "image")
            keep = paired
        if not keep:
            raise DataError(
                f"{images.name}: no usable images: all {len(images.hr)} were unreadable, smaller than "
                f"the {crop}px crop, or had a mismatched LR image (see the warnings)."
            )
        self.hr = [images.hr[i] for i in keep]
        self.lr = [images.lr[i] for i in keep] if images.lr is not None else None
        self.sizes = [sizes[i] for i in keep]  # (width, height) at start-up: re-checked at decode
        lr_share = 1 + 1 / scale**2 if images.lr is not None else 1.0
        self.image_bytes = [int(3 * sizes[i][0] * sizes[i][1] * lr_share) for i in keep]
        self.ram_cache_bytes = ram_cache_default() if ram_cache_bytes is None else ram_cache_bytes
        self._ram: _LRUBytes | None = None  # made in the process (worker) that reads
        self._bad: set[int] = set()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._on_disk = self._disk_cache_plan(disk_cache_bytes)
        skipped = len(images.hr) - len(keep)
        total = sum(self.image_bytes)
        logger.info(
            "%d images usable%s (%.1f GB decoded); decoded when sampled, %d MiB RAM cache%s",
            len(self.hr),
            f", {skipped} skipped (see the warnings)" if skipped else "",
            total / 1e9,
            self.ram_cache_bytes >> 20,
            f", {len(self._on_disk)} images cached in {self.cache_dir}" if self._on_disk else "",
        )

    def _disk_cache_plan(self, cap: int | None) -> set[Path]:
        """The files the on-disk cache holds: those (in list order) that fit the cap. Entries of this
        cache folder that are not in the plan (other sets, replaced files) are removed."""
        if self.cache_dir is None or cap == 0:
            return set()
        if self.cache_dir.is_symlink():
            warnings.warn(
                f"the decoded-image cache is off for this run: {self.cache_dir} is a symbolic link "
                f"(to {os.readlink(self.cache_dir)}); this package writes and prunes only its own folder.",
                stacklevel=3,
            )
            return set()
        if cap is None:
            if sum(self.image_bytes) > DISK_CACHE_AUTO_BYTES:
                return set()
            cap = DISK_CACHE_AUTO_BYTES
        planned, used = set(), 0
        for i, size in enumerate(self.image_bytes):
            if used + size <= cap:
                planned.add(self.hr[i])
                if self.lr is not None:
                    planned.add(self.lr[i])
                used += size
        keys = {self._cache_file(p).name for p in planned}
        if self.cache_dir.is_dir():
            for entry in self.cache_dir.iterdir():
                if _CACHE_NAME.fullmatch(entry.name) and entry.name not in keys and _our_cache_entry(entry):
                    entry.unlink(missing_ok=True)
            # a killed run's half-written entries (atomic_path's temp names of this cache's entry
            # names), left over a minute ago: newer ones may be another process's write in progress
            entries = {m.group(1) for e in self.cache_dir.iterdir() if (m := _CACHE_TEMP.fullmatch(e.name))}
            for tmp in remove_stale_temps(self.cache_dir, sorted(entries), older_than=60.0):
                logger.debug("removed %s, a killed run's unfinished cache entry", tmp)
        return planned

    def _cache_file(self, path: Path) -> Path:
        """One entry per image path: a file replaced under the same name overwrites its entry, so
        the cache never holds more than the planned images (the cap holds across replacements)."""
        assert self.cache_dir is not None
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
        return self.cache_dir / f"{key}.safetensors"

    def __len__(self) -> int:
        return len(self.hr)

    def _ram_cache(self) -> _LRUBytes:
        if self._ram is None:  # first read in this process: its share of the budget
            info = get_worker_info()
            self._ram = _LRUBytes(self.ram_cache_bytes // (info.num_workers if info else 1))
        return self._ram

    def _pixels(self, path: Path, size: tuple[int, int]) -> Tensor:
        """``path``'s pixels, which must still be ``size`` (width, height) as at start-up.

        Raises:
            ValueError: The image now has another size (replaced during the run).
            OSError, ...: It cannot be decoded any more (``DECODE_ERRORS``).
        """
        ram = self._ram_cache()
        pixels = ram.get(path)
        if pixels is not None:
            return pixels
        shape = (3, size[1], size[0])
        cached = self._cache_file(path) if path in self._on_disk else None
        stamp = _stamp(path) if cached is not None else ""
        if cached is not None and cached.is_file() and not cached.is_symlink():
            try:
                with safe_open(str(cached), framework="pt") as fh:
                    if (fh.metadata() or {}).get("source") == stamp:  # the same file: size and mtime
                        pixels = fh.get_tensor("pixels")
            except Exception:  # a broken entry: decode again (and overwrite it)
                pixels = None
            if pixels is not None and (pixels.dtype != torch.uint8 or tuple(pixels.shape) != shape):
                pixels = None  # an entry of another shape is not this image's: decode again
        if pixels is None:
            pixels = load_image(path)
            if tuple(pixels.shape) != shape:
                raise ValueError(
                    f"it is now {pixels.shape[2]}x{pixels.shape[1]}, not the {size[0]}x{size[1]} it was "
                    "at start-up (replaced during the run?)"
                )
            if cached is not None:
                self._write_cache(cached, pixels, stamp)
        ram.put(path, pixels)
        return pixels

    def _write_cache(self, cached: Path, pixels: Tensor, stamp: str) -> None:
        """A failed cache write (disk full, read-only) turns this process's disk cache off, once."""
        try:
            with atomic_path(cached) as tmp:
                save_safetensors({"pixels": pixels}, tmp, metadata={**_CACHE_MARK, "source": stamp})
        except OSError as exc:
            warnings.warn(f"the decoded-image cache is off for this run: {exc}.", stacklevel=4)
            self._on_disk = set()

    def image_index(self, g: int) -> int:
        """The image that sample ``g`` reads: a fresh permutation of the images every epoch."""
        n = len(self.hr)
        epoch, pos = divmod(g, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return int(perm[pos])

    def __getitem__(self, g: int) -> tuple[Tensor, Tensor]:
        index = self.image_index(g)
        for attempt in range(len(self.hr)):
            i = (index + attempt) % len(self.hr)  # an unreadable image: the next one, in list order
            if i in self._bad:
                continue
            w, h = self.sizes[i]
            try:
                hr = self._pixels(self.hr[i], (w, h))
                lr = (
                    self._pixels(self.lr[i], (w // self.scale, h // self.scale))
                    if self.lr is not None
                    else None
                )
            except DECODE_ERRORS as exc:
                self._bad.add(i)
                detail = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
                warnings.warn(f"skipping {self.hr[i]}: cannot be decoded ({detail}).", stacklevel=2)
                continue
            return self._crops(hr, lr, torch.Generator().manual_seed(self.seed * 7_919 + g))
        raise DataError(
            f"none of the {len(self.hr)} images could be decoded (see the warnings); check the data folder."
        )

    def _crops(self, hr: Tensor, lr: Tensor | None, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        s, c = self.scale, self.crop
        lc = c // s
        h, w = lr.shape[-2:] if lr is not None else (hr.shape[-2] // s, hr.shape[-1] // s)
        hrs, lrs = [], []
        for _ in range(self.crops_per_image):
            y = int(torch.randint(0, h - lc + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - lc + 1, (1,), generator=gen))
            hr_crop = hr[:, y * s : y * s + c, x * s : x * s + c]
            lr_crop = lr[:, y : y + lc, x : x + lc] if lr is not None else _bicubic_lr(hr, y * s, x * s, c, s)
            if self.augment:
                flips = torch.randint(0, 2, (3,), generator=gen).tolist()
                for flag, op in zip(
                    flips,
                    (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2)),
                    strict=True,
                ):
                    if flag:
                        hr_crop, lr_crop = op(hr_crop), op(lr_crop)
            if self.color_jitter > 0:  # drawn only when on: runs without it keep their crops
                gain = 1 + self.color_jitter * (2 * torch.rand(3, 1, 1, generator=gen) - 1)
                hr_crop, lr_crop = (_scaled(t, gain) for t in (hr_crop, lr_crop))
            hrs.append(hr_crop.contiguous())
            lrs.append(lr_crop.contiguous())
        return torch.stack(hrs), torch.stack(lrs)


def _scaled(pixels: Tensor, gain: Tensor) -> Tensor:
    return (pixels.float() * gain).round().clamp(0, 255).to(torch.uint8)


def _bicubic_lr(hr: Tensor, top: int, left: int, crop: int, scale: int) -> Tensor:
    """MATLAB-bicubic LR of one HR crop, computed with enough context that it equals the crop of the
    full image's LR (the kernel reaches 2*scale pixels; at the image border MATLAB's symmetric
    padding applies, as it does to the whole image), rounded to 8 bits like a stored LR PNG."""
    pad = 2 * scale  # the antialiased kernel reaches 2*scale HR pixels from an LR pixel's centre
    height, width = hr.shape[-2] // scale * scale, hr.shape[-1] // scale * scale
    t0, l0 = max(0, top - pad), max(0, left - pad)
    b0, r0 = min(height, top + crop + pad), min(width, left + crop + pad)
    lr = make_lr(hr[:, t0:b0, l0:r0].double() / 255, scale)
    y, x = (top - t0) // scale, (left - l0) // scale
    return (lr[:, y : y + crop // scale, x : x + crop // scale] * 255).round().to(torch.uint8)


def collate_crops(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Concatenate items of several crops each into one batch."""
    return torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])


class SampleStream(Sampler[int]):
    """The endless sample numbers ``start + rank, start + rank + world, ...`` of one process.

    With ``world`` processes, process ``rank`` reads every ``world``-th sample, so the union over
    processes is the single-process stream; resuming at ``start`` continues it exactly.
    """

    def __init__(self, *, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        g = self.start + self.rank
        while True:
            yield g
            g += self.world
