"""Cost of AESOPLoss per training step, against baselines run in the same process.

For the paper's AE (width 64, 23 blocks, growth 32, x4) it times one forward+backward of:
  naive      what a user would write: l1(ae(sr), target) with a no_grad target, NCHW, under
             PyTorch's defaults (on CUDA: TF32 convolutions), and the same in strict fp32
  L1         nn.L1Loss (what AESOP replaces)
  generator  one RRDBNet (ESRGAN generator) forward+backward at the same batch
  AESOPLoss  the default and each speed/memory option, under PyTorch's defaults
and prints median time, ratios against both naive baselines, the cosine of each variant's input
gradient with the strict-fp32 one, peak memory, and achieved FLOP/s against the FLOPs counted for
the three AE passes. With --fidelity it also measures, on real photos and a pretrained AE, how
reduced precision changes the loss and its gradient.

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
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
from aesop_loss.train import list_images, load_image

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

    last_grad: list[torch.Tensor] = []

    def step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            sr = sr0.clone().requires_grad_()
            loss_fn(sr, hr).backward()
            last_grad[:] = [sr.grad]  # type: ignore[list-item]

        return run

    def input_gradient(fn: Callable[[], None]) -> torch.Tensor:
        fn()
        return last_grad[0].detach().float().flatten()

    def naive(sr: torch.Tensor, target_hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = ae(target_hr)
        return F.l1_loss(ae(sr), target)

    def generator() -> None:
        gen(lr).mean().backward()

    def aesop(**options: Any) -> Callable[[], None]:
        return step(AESOPLoss(copy.deepcopy(ae), **options))  # each variant owns its AE

    # (label, step, precision of the AE passes or None for rows that are not AE passes)
    naive_label = "naive, PyTorch defaults" + (" (TF32)" if cuda else "")
    variants: list[tuple[str, Callable[[], None], str | None]] = [
        (naive_label + " (baseline)", step(naive), "tf32" if cuda else "fp32"),
        ("nn.L1Loss", step(torch.nn.L1Loss()), None),
        ("RRDBNet generator fwd+bwd", generator, None),
        ("AESOPLoss default", aesop(), "tf32" if cuda else "fp32"),
        ("AESOPLoss channels_last", aesop(channels_last=True), "tf32" if cuda else "fp32"),
        ("AESOPLoss memory_efficient", aesop(memory_efficient=True), "tf32" if cuda else "fp32"),
    ]
    if cuda:  # on a CPU, strict fp32 is PyTorch's default: the baseline row already is it
        variants.insert(1, ("naive, strict fp32", strict_fp32(step(naive)), "fp32"))

    def bf16() -> tuple[str, Callable[[], None], str]:
        return "AESOPLoss bf16 channels_last", aesop(precision="bf16", channels_last=True), "bf16"

    if cuda:
        variants += [
            ("AESOPLoss strict fp32", strict_fp32(aesop()), "fp32"),
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
    print(f"{'variant':<34}{'median ms':>11}{'vs naive':>10}{'vs strict':>10}{'grad cos':>10}"
          f"{'peak MiB':>10}{'TFLOP/s':>9}{'of peak':>9}")  # fmt: skip
    times = time_interleaved([fn for _, fn, _ in variants], device, args.repeats)
    base = times[0]
    strict = times[1] if cuda else base
    reference = input_gradient(strict_fp32(step(naive)))
    rows = []
    for (label, fn, prec), t in zip(variants, times, strict=True):
        mem = peak_mib(fn, device)
        tflops = ae_flops / t / 1e12
        share = tflops / peak[prec] if prec is not None else 0.0
        ae_row = prec is not None
        cos = cosine(input_gradient(fn), reference) if ae_row else float("nan")
        rows.append((label, prec, t, share, cos))
        flop_cols = f"{tflops:>9.3f}{share:>9.1%}" if ae_row else f"{'-':>9}{'-':>9}"
        cos_col = f"{cos:>10.5f}" if ae_row else f"{'-':>10}"
        print(
            f"{label:<34}{t * 1e3:>11.1f}{t / base:>10.2f}{t / strict:>10.2f}{cos_col}{mem:>10.1f}{flop_cols}"
        )
    if not cuda:
        print("# CPU 'peak MiB' = tensors autograd saves for backward (the dominant, deterministic part);")
        print("# benchmarks/bench_memory.py measures peak RSS growth in fresh processes")
    photo_cos = fidelity(args.ae, device) if args.fidelity else {}
    # a variant qualifies on both measurements: random inputs here, real photos with --fidelity
    ok = [
        r for r in rows if r[0].startswith("AESOPLoss") and min(r[4], photo_cos.get(r[1] or "", 1.0)) >= 0.99
    ]
    label, prec, t, share, cos = min(ok, key=lambda r: r[2])
    print(f"\n# fastest AESOPLoss with gradient cosine >= 0.99 vs strict fp32: {label}: {base / t:.2f}x "
          f"naive (PyTorch defaults), {strict / t:.2f}x naive strict fp32, {share:.1%} of the measured "
          f"{prec} conv peak")  # fmt: skip
    return 0


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=0).item()


def fidelity(src: str, device: torch.device, photos: int = 4) -> dict[str, float]:
    """Loss and gradient of each precision against strict fp32 on real photos, one photo at a time:
    the loss's relative error, the gradient's relative error (of the vector: direction and size),
    its norm's, and the gradient cosine, as mean +- sd over the photos. Returns the worst cosine of
    each precision."""
    ae = AutoEncoder.from_pretrained(src, device=device)
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for path in list_images(IMAGES)[:photos]:
        hr = (load_image(path)[:, :192, :192].float() / 255).unsqueeze(0)
        sr = (hr + 0.05 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
        pairs.append((sr.to(device), hr.to(device)))
    print(f"\n# precision fidelity on {len(pairs)} real photos, one at a time (192^2 crops, AE {ae.config})")
    print("# against strict fp32: mean +- sd over the photos (worst)")
    cuda = device.type == "cuda"
    # (label, precision option, TF32 allowed): strict fp32 first, the reference
    options = [("strict fp32", "fp32", False)]
    options += [("default (TF32)", "fp32", True), ("fp16", "fp16", True)] if cuda else []
    options += [("bf16", "bf16", True), ("auto, bf16 AMP", "auto", True)]
    runs: dict[str, list[tuple[float, Tensor]]] = {}
    for label, precision, allow_tf32 in options:
        amp = label.endswith("AMP")  # a framework's bf16 AMP: the net's output is bf16, autocast is on
        for sr0, hr in pairs:
            sr = (sr0.bfloat16() if amp else sr0.clone()).requires_grad_()
            with (
                torch.backends.cudnn.flags(enabled=True, allow_tf32=allow_tf32),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp),
            ):
                loss = AESOPLoss(ae, precision=precision)(sr, hr)  # type: ignore[arg-type]
            loss.backward()
            assert sr.grad is not None
            runs.setdefault(label, []).append((loss.item(), sr.grad.flatten().double()))
    cosines: dict[str, float] = {"fp32": 1.0}
    ref = runs["strict fp32"]
    heads = ("loss rel. error", "grad rel. error |g-g32|/|g32|", "grad-norm rel. error", "grad cosine")
    print(f"{'':<16}" + "".join(f"{h:>32}" for h in heads))
    for label, precision, allow_tf32 in options[1:]:
        loss_err = [abs(v - r) / r for (v, _), (r, _) in zip(runs[label], ref, strict=True)]
        grads = [(g, q) for (_, g), (_, q) in zip(runs[label], ref, strict=True)]
        grad_err = [((g - q).norm() / q.norm()).item() for g, q in grads]
        norm_err = [abs(g.norm() / q.norm() - 1).item() for g, q in grads]
        cos = [F.cosine_similarity(g, q, dim=0).item() for g, q in grads]
        cells = [_spread(loss_err, max), _spread(grad_err, max), _spread(norm_err, max), _spread(cos, min)]
        print(f"{label:<16}" + "".join(f"{c:>32}" for c in cells))
        if not label.endswith("AMP"):
            cosines["tf32" if allow_tf32 and precision == "fp32" else precision] = min(cos)
    return cosines


def _spread(values: list[float], worst: Callable[[list[float]], float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} +- {sd:.4f} ({worst(values):.4f})"


if __name__ == "__main__":
    raise SystemExit(main())
