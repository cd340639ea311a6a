"""What a compact AE saves: one AESOP loss step of compact AEs against the paper's AE, same process.

For each AE it times one loss step (HR pass without grad, SR pass, backward to ``sr``; the default
``AESOPLoss``), measures its peak memory, and counts the multiply-adds of one AE forward per LR
pixel from the architecture (torch's FLOP counter on the module). Every ratio is against the
paper's AE (RRDB decoder 64/23/32, x4) on the same input, timed round-robin.

    python benchmarks/bench_compact.py                    # CPU: B=1 and 4, 64^2 and 128^2
    python benchmarks/bench_compact.py --device cuda      # adds B=16 x 256^2
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from datetime import date

import torch

from aesop_loss import AESOPLoss, AutoEncoder

from bench_loss import count_flops, peak_mib, time_interleaved

# name -> AutoEncoder arguments (x4). The rows use the paper's learned encoder (the compact ones with
# 32 features, growth 16, as the first bundled demo-compact had); the bundled AEs now use the fixed
# bicubic encoder, which has no weights and costs less than any of these.
AES: dict[str, dict[str, object]] = {
    "paper AE (rrdb 64/23/32)": {"num_feat": 64, "num_block": 23, "num_grow_ch": 32},
    "demo-size AE (rrdb 32/2/16)": {"num_feat": 32, "num_block": 2, "num_grow_ch": 16},
    "compact 32/16 (demo-compact)": {
        "num_feat": 32,
        "num_block": 16,
        "num_grow_ch": 16,
        "decoder": "compact",
    },
    "compact 64/16, growth 32": {"num_feat": 64, "num_block": 16, "num_grow_ch": 32, "decoder": "compact"},
}


def build(arch: dict[str, object], device: torch.device) -> AESOPLoss:
    ae = AutoEncoder(**arch).to(device)  # type: ignore[arg-type]
    ae.is_pretrained = True  # random weights time the same as trained ones
    return AESOPLoss(ae)


def step_fn(loss: AESOPLoss, sr: torch.Tensor, hr: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x = sr.detach().requires_grad_(True)
        loss(x, hr).backward()

    return run


def macs_per_lr_pixel(ae: AutoEncoder) -> float:
    """Multiply-adds of one AE forward per LR pixel (FLOP counter at 64^2, divided by LR pixels)."""
    x = torch.rand(1, 3, 64, 64, device=next(ae.parameters()).device)

    def forward() -> None:
        with torch.no_grad():
            ae(x)

    return count_flops(forward) / 2 / (64 // ae.scale) ** 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", default=None, help="e.g. 1x64,4x128 (default: CPU 1x64,4x64,1x128,4x128)")
    p.add_argument("--only", action="append", help="measure only these AE rows (by name), plus the paper AE")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    default_shapes = "1x64,4x64,1x128,4x128" + (",16x256" if device.type == "cuda" else "")
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or default_shapes).split(",")]
    names = [n for n in AES if n.startswith("paper") or not args.only or n in args.only]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"# bench_compact  {date.today()}  device: {where}, {torch.get_num_threads()} threads  "
          f"torch {torch.__version__}")  # fmt: skip
    print("# one AESOPLoss step (HR pass, SR pass, backward to sr), default options; ratios vs the paper AE")
    losses = {name: build(AES[name], device) for name in names}
    paper_macs = macs_per_lr_pixel(losses[names[0]].ae)
    print(f"{'AE':<30}{'params':>10}{'MAC/LR px':>12}{'x paper':>9}")
    for name, loss in losses.items():
        macs = macs_per_lr_pixel(loss.ae)
        params = sum(p.numel() for p in loss.ae.parameters())
        print(f"{name:<30}{params / 1e6:>9.2f}M{macs / 1e6:>11.2f}M{macs / paper_macs:>9.3f}")
    print()
    print(f"{'shape':<10}{'AE':<30}{'ms/step':>9}{'x paper':>9}{'peak MiB':>10}{'x paper':>9}")
    for batch, size in shapes:
        gen = torch.Generator().manual_seed(0)
        hr = torch.rand(batch, 3, size, size, generator=gen).to(device)
        sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen).to(device)).clamp(0, 1)
        fns = [step_fn(loss, sr, hr) for loss in losses.values()]
        times = time_interleaved(fns, device, args.repeats)
        peaks = [peak_mib(fn, device) for fn in fns]
        for name, t, peak in zip(losses, times, peaks, strict=True):
            shape, ratio, mem_ratio = f"{batch}x{size}^2", t / times[0], peak / peaks[0]
            print(f"{shape:<10}{name:<30}{t * 1e3:>9.1f}{ratio:>9.3f}{peak:>10.1f}{mem_ratio:>9.3f}")
    if device.type == "cpu":
        print("# CPU 'peak MiB' = tensors autograd saves for backward (the dominant, deterministic part)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
