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
    if device.type == "cuda":
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

    variants: list[tuple[str, Callable[[], None]]] = [
        ("naive fp32 (baseline)", step(naive)),
        ("nn.L1Loss", step(torch.nn.L1Loss())),
        ("RRDBNet generator fwd+bwd", generator),
        ("AESOPLoss fp32 (default)", aesop()),
        ("AESOPLoss fp32 channels_last", aesop(channels_last=True)),
        ("AESOPLoss fp32 memory_efficient", aesop(memory_efficient=True)),
    ]
    if device.type == "cuda" or args.cpu_bf16:
        variants.append(("AESOPLoss bf16 channels_last", aesop(precision="bf16", channels_last=True)))
    if device.type == "cuda":
        variants += [
            ("AESOPLoss bf16 channels_last", aesop(precision="bf16", channels_last=True)),
            ("AESOPLoss fp16 channels_last", aesop(precision="fp16", channels_last=True)),
            (
                "AESOPLoss bf16 cl memory_eff.",
                aesop(precision="bf16", channels_last=True, memory_efficient=True),
            ),
        ]
    if args.compile:
        variants.append(
            ("AESOPLoss bf16 cl compile", aesop(precision="bf16", channels_last=True, compile=True))
        )
    ae_flops = count_flops(step(naive))  # HR forward + SR forward + SR input-gradient
    print(f"# bench_loss  {date.today()}  device: {name}  torch {torch.__version__}")
    print(f"# AE {arch} x4, batch {b} x {c}^2; three AE passes = {ae_flops / 1e9:.1f} GFLOP")
    print(f"{'variant':<34}{'median ms':>11}{'vs naive':>10}{'peak MiB':>10}{'TFLOP/s':>9}")
    times = time_interleaved([fn for _, fn in variants], device, args.repeats)
    base = times[0]
    for (label, fn), t in zip(variants, times, strict=True):
        mem = peak_mib(fn, device)
        tflops = ae_flops / t / 1e12 if label.startswith(("AESOP", "naive")) else float("nan")
        print(f"{label:<34}{t * 1e3:>11.1f}{t / base:>10.2f}{mem:>10.1f}{tflops:>9.3f}")
    if device.type != "cuda":
        print("# CPU 'peak MiB' = tensors autograd saves for backward (the dominant, deterministic part)")
    if args.fidelity:
        fidelity(args.ae, device)
    return 0


def fidelity(src: str, device: torch.device) -> None:
    """Loss and gradient error of reduced precision against fp32 on real photos and perturbations."""
    ae = AutoEncoder.from_pretrained(src, device=device)
    crops = []
    for path in list_images(IMAGES)[:4]:
        img = load_image(path)[:, :192, :192].float() / 255
        crops.append(img)
    hr = torch.stack(crops).to(device)
    gen = torch.Generator().manual_seed(0)
    sr0 = (hr + 0.05 * torch.randn(hr.shape, generator=gen).to(device)).clamp(0, 1)
    print(f"\n# precision fidelity on {len(crops)} real photos (192^2 crops, AE {ae.config})")
    ref_loss, ref_grad = None, None
    options = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    for precision in options:
        sr = sr0.clone().requires_grad_()
        loss = AESOPLoss(ae, precision=precision)(sr, hr)  # type: ignore[arg-type]
        loss.backward()
        assert sr.grad is not None
        if ref_loss is None:
            ref_loss, ref_grad = loss.item(), sr.grad.flatten()
            print(f"{precision:<6} loss {ref_loss:.6f}")
            continue
        assert ref_grad is not None
        cos = F.cosine_similarity(sr.grad.flatten().float(), ref_grad, dim=0).item()
        rel = abs(loss.item() - ref_loss) / ref_loss
        print(f"{precision:<6} loss {loss.item():.6f}  rel. error {rel:.2e}  grad cosine {cos:.5f}")


if __name__ == "__main__":
    raise SystemExit(main())
