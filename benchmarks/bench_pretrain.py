"""Throughput of AE pretraining: the training step alone, and what the data pipeline delivers.

Prints steps/s and images/s of the training step (compute only, on batches already in memory) and
images/s from the DataLoader with 0, 2 and N workers, so one can see whether data or compute limits
a run: if the loader delivers fewer images/s than the step consumes, add workers or crops per image.

    python benchmarks/bench_pretrain.py                       # CPU: a small AE, bundled photos
    python benchmarks/bench_pretrain.py --paper --device cuda --batch-size 16 --crop 256 --amp bf16
"""

from __future__ import annotations

import argparse
import math
import os
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from aesop_loss.train import (
    CropDataset,
    PretrainConfig,
    PretrainRun,
    SampleStream,
    collate_crops,
    prepare_data,
)

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def loader_rate(dataset: CropDataset, per_step: int, batch: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=per_step, sampler=SampleStream(), num_workers=workers,
                        collate_fn=collate_crops, prefetch_factor=4 if workers else None)  # fmt: skip
    it = iter(loader)
    next(it)  # start-up (worker spawn) is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(IMAGES))
    p.add_argument("--paper", action="store_true", help="the paper's AE (64/23/32) instead of a small one")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--crops-per-image", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--loader-batches", type=int, default=20, help="batches timed per worker count")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    arch = (64, 23, 32) if args.paper else (32, 2, 16)
    cfg = PretrainConfig(
        data=args.data,
        out=Path("/nonexistent"),
        num_feat=arch[0],
        num_block=arch[1],
        num_grow_ch=arch[2],
        batch_size=args.batch_size,
        crop=args.crop,
        amp=args.amp,
        device=args.device,
    )
    run = PretrainRun(cfg)  # one process on cfg.device
    hr = torch.randint(0, 256, (args.batch_size, 3, args.crop, args.crop), dtype=torch.uint8)
    lr = torch.randint(0, 256, (args.batch_size, 3, args.crop // 4, args.crop // 4), dtype=torch.uint8)
    for _ in range(2):
        run.train_step(hr, lr)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        rec, _, _ = run.train_step(hr, lr)
    float(rec)  # one sync at the end
    dt = (time.perf_counter() - t0) / args.steps
    print(f"# bench_pretrain  {date.today()}  device {args.device}  torch {torch.__version__}  AE {arch}")
    print(f"train step: {1 / dt:.2f} steps/s, {args.batch_size / dt:.1f} images/s "
          f"(batch {args.batch_size} x {args.crop}^2, amp {args.amp})")  # fmt: skip

    images = prepare_data(args.data, scale=4)
    cpi = math.gcd(args.crops_per_image, args.batch_size)  # as the pretraining CLI does
    dataset = CropDataset(images, crop=args.crop, scale=4, seed=0, crops_per_image=cpi)
    n = os.cpu_count() or 1
    for workers in sorted({0, 2, n}):
        rate = loader_rate(dataset, args.batch_size // cpi, args.batch_size, workers, args.loader_batches)
        verdict = "keeps up" if rate >= args.batch_size / dt else "data-bound"
        print(f"data pipeline, {workers:>2} workers: {rate:8.1f} images/s  ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
