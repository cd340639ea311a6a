"""Cost of AESOPLoss per training step, against baselines run in the same process.

For the paper's AE (width 64, 23 blocks, growth 32, x4) it times one forward+backward of:
  naive      a plain implementation (fp32, NCHW, no_grad target, l1(ae(sr), target))
  L1         nn.L1Loss (what AESOP replaces)
  generator  one RRDBNet (ESRGAN generator) forward+backward at the same batch
  AESOPLoss  with each speed/memory option
and prints median time, ratios against the naive implementation, peak memory, and achieved FLOP/s
against the FLOPs counted for the three AE passes. With --fidelity it also measures, on real photos,
how reduced precision changes the loss and its gradient (cosine similarity with fp32).

    python benchmarks/bench_loss.py                 # CPU defaults: finishes in about a minute
    python benchmarks/bench_loss.py --gpu-defaults  # batch 16 x 256^2 on CUDA
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
from aesop_loss.data import list_images, load_image

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: list[Callable[[], None]], device: torch.device, repeats: int) -> list[float]:
    """Median seconds per call of each function, timed round-robin so that drift hits all alike."""
    for fn in fns:  # warm-up (cudnn autotuning, compilation, allocator)
        fn()
        fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Peak memory of one call in MiB (CUDA: allocator peak above the baseline; CPU: see below)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return saved_for_backward_mib(fn)


def saved_for_backward_mib(fn: Callable[[], None]) -> float:
    """CPU stand-in for peak memory: distinct tensor storages autograd keeps for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_peak_tflops(device: torch.device, precision: str, batch: int, size: int) -> float:
    """Measured conv peak: TFLOP/s of one large 3x3 convolution (channels-last, 128 -> 128) forward."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device, dtype)
    conv = conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(batch, 128, size, size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * size * size * 128 * 128 * 9

    def run() -> None:
        with torch.no_grad():
            conv(x)

    with torch.backends.cudnn.flags(
        enabled=True, benchmark=True, deterministic=False, allow_tf32=precision == "tf32"
    ):
        (t,) = time_interleaved([run], device, repeats=10)
    return flops / t / 1e12


def strict_fp32(fn: Callable[[], None]) -> Callable[[], None]:
    """Run forward and backward with TF32 convolutions off (PyTorch allows them by default)."""

    def run() -> None:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
            fn()

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--crop", type=int, default=96, help="HR crop (multiple of 4)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpu-defaults", action="store_true", help="batch 16 x 256^2, 20 repeats, CUDA")
    p.add_argument("--num-feat", type=int, default=64)
    p.add_argument("--num-block", type=int, default=23)
    p.add_argument("--num-grow-ch", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="also time compile=True (inductor)")
    p.add_argument("--cpu-bf16", action="store_true", help="also time bf16 on a CPU (slow without AMX)")
    p.add_argument("--fidelity", action="store_true", help="also measure reduced-precision error on photos")
    p.add_argument("--ae", default="demo", help="AE for --fidelity (pretrained: 'demo', folder, .pth)")
    args = p.parse_args(argv)
    if args.gpu_defaults:
        args.batch, args.crop, args.repeats, args.device = 16, 256, 20, "cuda"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    torch.manual_seed(0)
    arch = {"num_feat": args.num_feat, "num_block": args.num_block, "num_grow_ch": args.num_grow_ch}
    ae = AutoEncoder(**arch).to(device).requires_grad_(False).eval()
    ae.is_pretrained = True  # timing only: the weights do not matter
    gen = RRDBNet(**arch).to(device)
    b, c = args.batch, args.crop
    sr0 = torch.rand(b, 3, c, c, device=device)
    hr = torch.rand(b, 3, c, c, device=device)
    lr = torch.rand(b, 3, c // 4, c // 4, device=device)

    def step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            sr = sr0.clone().requires_grad_()
            loss_fn(sr, hr).backward()

        return run

    def naive(sr: torch.Tensor, target_hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = ae(target_hr)
        return F.l1_loss(ae(sr), target)

    def generator() -> None:
        gen(lr).mean().backward()

    def aesop(**options: Any) -> Callable[[], None]:
        return step(AESOPLoss(copy.deepcopy(ae), **options))  # each variant owns its AE

    # (label, step, precision of the AE passes or None for rows that are not AE passes)
    variants: list[tuple[str, Callable[[], None], str | None]] = [
        ("naive fp32 (baseline)", strict_fp32(step(naive)), "fp32"),
        ("nn.L1Loss", step(torch.nn.L1Loss()), None),
        ("RRDBNet generator fwd+bwd", generator, None),
        ("AESOPLoss fp32 (default)", aesop(), "fp32"),
        ("AESOPLoss fp32 channels_last", aesop(channels_last=True), "fp32"),
        ("AESOPLoss fp32 memory_efficient", aesop(memory_efficient=True), "fp32"),
    ]

    def bf16() -> tuple[str, Callable[[], None], str]:
        return "AESOPLoss bf16 channels_last", aesop(precision="bf16", channels_last=True), "bf16"

    if cuda:
        variants += [
            ("naive, PyTorch default (TF32)", step(naive), "tf32"),
            ("AESOPLoss tf32 channels_last", aesop(precision="tf32", channels_last=True), "tf32"),
            ("AESOPLoss fp16 channels_last", aesop(precision="fp16", channels_last=True), "fp16"),
            bf16(),
            (
                "AESOPLoss bf16 cl memory_eff.",
                aesop(precision="bf16", channels_last=True, memory_efficient=True),
                "bf16",
            ),
        ]
    elif args.cpu_bf16:
        variants.append(bf16())
    if args.compile:
        variants.append(
            ("AESOPLoss bf16 cl compile", aesop(precision="bf16", channels_last=True, compile=True), "bf16")
        )
    ae_flops = count_flops(step(naive))  # HR forward + SR forward + SR input-gradient
    precisions = sorted({v[2] for v in variants if v[2] is not None})
    peak = {prec: conv_peak_tflops(device, prec, b, max(c // 2, 8)) for prec in precisions}
    print(f"# bench_loss  {date.today()}  device: {name}  torch {torch.__version__}")
    print(f"# AE {arch} x4, batch {b} x {c}^2; three AE passes = {ae_flops / 1e9:.1f} GFLOP")
    print("# measured conv peak (3x3, 128 ch, channels-last, forward), TFLOP/s: "
          + ", ".join(f"{prec} {peak[prec]:.3f}" for prec in precisions))  # fmt: skip
    print(f"{'variant':<34}{'median ms':>11}{'vs naive':>10}{'peak MiB':>10}{'TFLOP/s':>9}{'of peak':>9}")
    times = time_interleaved([fn for _, fn, _ in variants], device, args.repeats)
    base = times[0]
    rows = []
    for (label, fn, prec), t in zip(variants, times, strict=True):
        mem = peak_mib(fn, device)
        tflops = ae_flops / t / 1e12
        share = tflops / peak[prec] if prec is not None else 0.0
        rows.append((label, prec, t, share))
        flop_cols = f"{tflops:>9.3f}{share:>9.1%}" if prec is not None else f"{'-':>9}{'-':>9}"
        print(f"{label:<34}{t * 1e3:>11.1f}{t / base:>10.2f}{mem:>10.1f}{flop_cols}")
    if not cuda:
        print("# CPU 'peak MiB' = tensors autograd saves for backward (the dominant, deterministic part)")
    cosine = {"fp32": 1.0}
    if args.fidelity:
        cosine.update(fidelity(args.ae, device))
    ok = [r for r in rows if r[0].startswith("AESOPLoss") and cosine.get(r[1] or "", 0.0) >= 0.99]
    label, prec, t, share = min(ok, key=lambda r: r[2])
    print(f"\n# fastest AESOPLoss with gradient cosine >= 0.99 vs fp32: {label}: {base / t:.2f}x faster "
          f"than naive fp32, {share:.1%} of the measured {prec} conv peak")  # fmt: skip
    if not args.fidelity:
        print("# (only fp32 variants qualify without --fidelity, which measures the others' cosine)")
    return 0


def fidelity(src: str, device: torch.device) -> dict[str, float]:
    """Loss and gradient error of reduced precision against fp32 on real photos; returns cosines."""
    ae = AutoEncoder.from_pretrained(src, device=device)
    crops = []
    for path in list_images(IMAGES)[:4]:
        img = load_image(path)[:, :192, :192].float() / 255
        crops.append(img)
    hr = torch.stack(crops).to(device)
    gen = torch.Generator().manual_seed(0)
    sr0 = (hr + 0.05 * torch.randn(hr.shape, generator=gen).to(device)).clamp(0, 1)
    print(f"\n# precision fidelity on {len(crops)} real photos (192^2 crops, AE {ae.config})")
    options = ["fp32", "bf16"] + (["tf32", "fp16"] if device.type == "cuda" else [])
    ref_loss, ref_grad = 0.0, torch.empty(0)
    cosines: dict[str, float] = {}
    for precision in options:
        sr = sr0.clone().requires_grad_()
        loss = AESOPLoss(ae, precision=precision)(sr, hr)  # type: ignore[arg-type]
        loss.backward()
        assert sr.grad is not None
        if precision == "fp32":
            ref_loss, ref_grad = loss.item(), sr.grad.flatten()
            print(f"{precision:<6} loss {ref_loss:.6f}")
            continue
        cos = F.cosine_similarity(sr.grad.flatten().float(), ref_grad, dim=0).item()
        rel = abs(loss.item() - ref_loss) / ref_loss
        cosines[precision] = cos
        print(f"{precision:<6} loss {loss.item():.6f}  rel. error {rel:.2e}  grad cosine {cos:.5f}")
    return cosines


if __name__ == "__main__":
    raise SystemExit(main())
