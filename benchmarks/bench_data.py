"""The pretraining data pipeline at scale: start-up, throughput and memory on folders of 1k-10k images.

Makes synthetic folders of photo-like images (tiles of the bundled photos, flipped and tinted, saved
as PNG and JPEG; kept in --work and reused), then measures, each in a fresh process:

- for each folder and 0, 2 and N DataLoader workers: the time from nothing to the first batch
  (listing, headers, worker start, first decodes), images/s and crops/s after it, and the peak RSS
  of the main process and of the largest worker;
- whether that keeps up with a training step that takes --step-ms at --batch-size (measure it with
  `benchmarks/bench_pretrain.py --paper --device cuda ...` on your GPU);
- the pretraining command's own cost of a big folder: `--preset tiny --steps 2 --val none
  --workers 0` on 150 and on 1,500 PNGs of 640x480: wall time, peak RSS and the decoded cache left.

Cost on a 2-core CPU: making the images takes about 25 s per 1,000 PNGs and 10 s per 1,000 JPEGs
at 640x480 (the default 1k + 10k of each, once: about 6 minutes, 3.5 GB in --work); each row about
--seconds plus its start-up; the whole default run about 9 minutes the first time, 3 after.

    python benchmarks/bench_data.py                          # the default run (results in the README)
    python benchmarks/bench_data.py --files 1000 --formats png --step-ms 180 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _make_one(job: tuple[Path, int, int, int, str]) -> None:
    from PIL import Image, ImageOps

    path, index, width, height, fmt = job
    rng = random.Random(index)
    photos = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    with Image.open(photos[index % len(photos)]) as src:
        img = src.convert("RGB")
    scale = max(width / img.width, height / img.height) * rng.uniform(1.0, 1.6)
    img = img.resize(
        (int(img.width * scale) + 1, int(img.height * scale) + 1), Image.BICUBIC
    )  # Image.Resampling is Pillow 9.1+
    left, top = rng.randrange(img.width - width + 1), rng.randrange(img.height - height + 1)
    img = img.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    tint = Image.new("RGB", img.size, tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    img = Image.blend(img, tint, rng.uniform(0.0, 0.2))
    if fmt == "png":
        img.save(path, compress_level=1)  # faster to write; decoding costs about the same
    else:
        img.save(path, quality=92)


def make_folder(root: Path, files: int, fmt: str, width: int, height: int) -> Path:
    """A folder of ``files`` photo-like images, made once (a complete folder is reused)."""
    folder = root / f"{fmt}_{files}_{width}x{height}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "png" if fmt == "png" else "jpg"
    jobs = [(folder / f"{i:06d}.{suffix}", i, width, height, fmt) for i in range(files)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_make_one, jobs, chunksize=64))
    done.touch()
    print(f"# made {folder.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def measure(folder: str, workers: int, batch: int, crop: int, cpi: int, seconds: float) -> dict[str, float]:
    """In this (fresh) process: start-up to the first batch, then images/s for ``seconds``."""
    import torch
    from torch.utils.data import DataLoader

    from aesop_loss.train import CropDataset, SampleStream, collate_crops, prepare_data

    t0 = time.perf_counter()
    images = prepare_data(folder, scale=4)
    dataset = CropDataset(images, crop=crop, scale=4, seed=0, crops_per_image=cpi)
    loader = DataLoader(dataset, batch_size=batch // cpi, sampler=SampleStream(), num_workers=workers,
                        collate_fn=collate_crops, prefetch_factor=4 if workers else None)  # fmt: skip
    it = iter(loader)
    next(it)
    startup = time.perf_counter() - t0
    reads, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
        hr, _ = next(it)
        reads += hr.shape[0] // cpi
    rate = reads / (time.perf_counter() - t1)
    del it, loader  # workers exit: their peak shows in RUSAGE_CHILDREN
    torch.cuda.empty_cache()
    peaks = {"main_mib": _peak_mib(resource.RUSAGE_SELF), "worker_mib": _peak_mib(resource.RUSAGE_CHILDREN)}
    return {"startup_s": startup, "images_s": rate, "crops_s": rate * cpi, **peaks}


def _fresh(*args: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--measure", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pretrain_cost(folder: Path, out: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and decoded-cache MiB of the tiny 2-step pretraining run."""
    code = (
        "import resource, sys, time\n"
        "from aesop_loss.pretrain import console_main\n"
        "t0 = time.perf_counter()\n"
        "sys.argv = ['pretrain', '--data', sys.argv[1], '--out', sys.argv[2], '--preset', 'tiny',\n"
        "            '--steps', '2', '--val', 'none', '--workers', '0']\n"
        "try:\n"
        "    console_main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    _, peak = (float(x) for x in proc.stdout.split()[-2:])
    cache = sum(p.stat().st_size for p in (out / ".decoded").glob("*")) if (out / ".decoded").is_dir() else 0
    return wall, peak, cache / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--formats", nargs="+", default=["png", "jpeg"], choices=("png", "jpeg"))
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the synthetic images")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aesop-bench-data")
    p.add_argument("--batch-size", type=int, default=16, help="crops per training step")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--crops-per-image", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0, help="timed after the first batch, per row")
    p.add_argument("--step-ms", type=float, default=None, help="a training step's time, to compare with")
    p.add_argument("--no-pretrain-check", action="store_true", help="skip the 150 vs 1,500 PNG runs")
    p.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        folder, workers, batch, crop, cpi, seconds = args.measure
        print(json.dumps(measure(folder, int(workers), int(batch), int(crop), int(cpi), float(seconds))))
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    n = os.cpu_count() or 1
    print(f"# bench_data  {date.today()}  {n} CPUs  images {width}x{height}, batch {args.batch_size} x "
          f"{args.crop}^2, {args.crops_per_image} crops per decode")  # fmt: skip
    need = args.batch_size / (args.step_ms / 1000) if args.step_ms else None
    if need:
        print(f"# a {args.step_ms:g} ms step at batch {args.batch_size} consumes {need:.0f} crops/s")
    print(f"{'folder':<22} {'workers':>7} {'start s':>8} {'images/s':>9} {'crops/s':>8} "
          f"{'main MiB':>9} {'worker MiB':>10}  verdict")  # fmt: skip
    for fmt in args.formats:
        for files in args.files:
            folder = make_folder(args.work, files, fmt, width, height)
            for workers in sorted({0, 2, n}):
                r = _fresh(str(folder), str(workers), str(args.batch_size), str(args.crop),
                           str(args.crops_per_image), str(args.seconds))  # fmt: skip
                verdict = "-" if need is None else "keeps up" if r["crops_s"] >= need else "data-bound"
                rates = f"{r['startup_s']:>8.2f} {r['images_s']:>9.1f} {r['crops_s']:>8.1f}"
                peaks = f"{r['main_mib']:>9.0f} {r['worker_mib']:>10.0f}"
                print(f"{folder.name:<22} {workers:>7} {rates} {peaks}  {verdict}")
    if not args.no_pretrain_check:
        print("# pretrain --preset tiny --steps 2 --val none --workers 0: 150 vs 1,500 PNGs of 640x480")
        big = make_folder(args.work, 1500, "png", 640, 480)
        small = args.work / "png_150_640x480"
        if not (small / ".complete").exists():
            small.mkdir(parents=True, exist_ok=True)
            for f in sorted(big.glob("*.png"))[:150]:
                (small / f.name).write_bytes(f.read_bytes())
            (small / ".complete").touch()
        rows = {}
        with tempfile.TemporaryDirectory() as d:
            for name, folder in (("150", small), ("1500", big)):
                rows[name] = pretrain_cost(folder, Path(d) / name)
                wall, peak, cache = rows[name]
                print(f"{name:>5} PNGs: {wall:6.1f} s wall, peak RSS {peak:6.0f} MiB, cache {cache:.1f} MiB")
        dw, dp = rows["1500"][0] - rows["150"][0], rows["1500"][1] - rows["150"][1]
        print(f"1,500 minus 150: {dw:+.1f} s wall, {dp:+.0f} MiB peak RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
