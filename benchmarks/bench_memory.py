"""Peak memory of one AESOPLoss training step, with and without ``memory_efficient=True``.

On CUDA it reports ``torch.cuda.max_memory_allocated`` above what was allocated before the step. On
a CPU, where the allocator keeps no such count, each measurement runs in a fresh process and reports
the growth of the peak resident set size (``ru_maxrss``) during the step, so one variant's pages
never count for another. Time per step is the median of a few further steps in the same process.

    python benchmarks/bench_memory.py                       # paper AE and demo-size AE, 1 x 256^2
    python benchmarks/bench_memory.py --device cuda --batch 16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date

import torch

from aesop_loss import AESOPLoss, AutoEncoder

SIZES = {  # the paper's AE, and one as small as the bundled demo AE
    "paper AE (64/23/32)": {"num_feat": 64, "num_block": 23, "num_grow_ch": 32},
    "demo-size AE (32/2/16)": {"num_feat": 32, "num_block": 2, "num_grow_ch": 16},
}


def _rss_now_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


def measure(
    arch: dict[str, int], memory_efficient: bool, batch: int, crop: int, device: str
) -> dict[str, float]:
    """One variant in this process: peak memory growth of its first step (MiB), median step time (ms)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    ae = AutoEncoder(**arch)
    ae.is_pretrained = True  # the weights do not matter for memory and time
    loss_fn = AESOPLoss(ae, memory_efficient=memory_efficient).to(dev)
    hr = torch.rand(batch, 3, crop, crop, device=dev)
    sr0 = torch.rand(batch, 3, crop, crop, device=dev)

    def step(size: int = crop) -> None:
        sr = sr0[..., :size, :size].clone().requires_grad_()
        loss_fn(sr, hr[..., :size, :size]).backward()

    step(32)  # one-time costs (thread pools, kernel libraries) are paid at a tiny size first
    if dev.type == "cuda":
        step()  # cuDNN workspaces and the allocator's caches settle first
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        before = _rss_now_kib()
        step()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return {"peak_mib": peak, "ms": statistics.median(times) * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=list(SIZES), help="measure one AE size")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON job for a fresh measuring process
    args = p.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(measure(**job)))
        return 0
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine()
    print(f"# bench_memory  {date.today()}  device: {name}  torch {torch.__version__}")
    print(f"# one loss step (HR pass + SR pass + backward), batch {args.batch} x {args.crop}^2; "
          + ("CUDA max_memory_allocated" if cuda else "peak RSS growth in a fresh process"))  # fmt: skip
    print(f"{'AE':<26}{'variant':<20}{'peak MiB':>10}{'vs default':>12}{'ms/step':>10}{'time x':>8}")
    for label, arch in SIZES.items():
        if args.only and label != args.only:
            continue
        rows = []
        for memory_efficient in (False, True):
            job = {"arch": arch, "memory_efficient": memory_efficient, "batch": args.batch,
                   "crop": args.crop, "device": args.device}  # fmt: skip
            if cuda:
                result = measure(**job)  # type: ignore[arg-type]
            else:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(job)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(result)
        base = rows[0]
        for variant, row in zip(("default", "memory_efficient"), rows, strict=True):
            mem, ms = row["peak_mib"], row["ms"]
            ratio = mem / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")  # tiny sizes: noise
            print(f"{label:<26}{variant:<20}{mem:>10.0f}{ratio:>12.2f}"
                  f"{ms:>10.0f}{ms / base['ms']:>8.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
