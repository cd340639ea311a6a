"""AESOP in one minute: what it penalises, and the one-line swap for nn.L1Loss.

1. On a real photo, two perturbations of the HR image with the same energy: high-frequency detail
   that leaves the bicubic LR image unchanged (plausible texture an SR net may invent), and a
   low-frequency change that does not (a fidelity error). L1 penalises both alike; AESOP penalises
   the fidelity error and (almost) ignores the detail.
2. A small SR net trained twice on the bundled photos, once with nn.L1Loss and once with AESOPLoss,
   then PSNR, AE-PSNR and LR-PSNR on 6 crops of a held-out photo, with their spread and the paired
   difference's 95% interval (a difference whose interval holds 0 is a tie), and a labelled
   side-by-side PNG (LR bicubic | L1 | AESOP | HR), by default examples/output/quickstart.png.

It measures a few steps first and says what the run will cost on this machine before training;
on a slow or busy machine it trains fewer steps to stay within --minutes (default 2) and says so.
Ctrl-C during training keeps what was trained: the scores and the picture are made from it.

    python examples/quickstart.py            # about 1 min on an idle 2-core CPU, about 2 on a busy one
    python examples/quickstart.py --smoke    # a few steps, for tests
"""

from __future__ import annotations

import aesop_loss  # noqa: F401 - first: it imports torch without torch's NumPy notice

# isort: split
import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
from aesop_loss.diagnostics import low_frequency_change, null_space_detail
from aesop_loss.metrics import MeanInterval, ae_psnr, lr_psnr, psnr
from aesop_loss.resize import imresize, make_lr
from aesop_loss.train import CropDataset, ImageSet, collate_crops, list_images, load_image, save_labelled
from aesop_loss.train.progress import progress

HERE = Path(__file__).parent
HELD_OUT = "chelsea.png"


def part_one(ae: AutoEncoder, device: torch.device, size: int) -> None:
    img = load_image(HERE / "images" / "astronaut.png")[:, 120 : 120 + size, 150 : 150 + size]
    hr = (img.double() / 255)[None]
    gen = torch.Generator().manual_seed(0)
    detail = null_space_detail(hr, ae.scale, 0.08, gen)
    low = low_frequency_change(hr, float(detail.norm()))
    lr_change = float((imresize(hr + detail, 1 / ae.scale) - imresize(hr, 1 / ae.scale)).abs().max())
    l1, aesop = nn.L1Loss(), AESOPLoss(ae).to(device)
    print(f"1) two perturbations of one HR crop, equal L2 energy ({float(detail.norm()):.2f})")
    print(f"   detail in the downsampler's null space (LR changes by {lr_change:.1e})")
    print(f"   {'perturbation':<28}{'L1':>10}{'AESOP':>10}")
    rows = {}
    for name, delta in (("detail, same LR image", detail), ("low-frequency change", low)):
        sr = (hr + delta).float().to(device)
        ref = hr.float().to(device)
        rows[name] = (float(l1(sr, ref)), float(aesop(sr, ref)))
        print(f"   {name:<28}{rows[name][0]:>10.4f}{rows[name][1]:>10.4f}")
    (d_l1, d_ae), (f_l1, f_ae) = rows.values()
    print(f"   AESOP/L1 ratio: detail {d_ae / d_l1:.2f}, fidelity error {f_ae / f_l1:.2f}\n")


class ResidualSR(nn.Module):
    """A small RRDBNet that predicts the residual over bicubic upsampling (starts at bicubic)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = RRDBNet(num_feat=16, num_block=1, num_grow_ch=8, scale=4)
        nn.init.zeros_(self.net.conv_last.weight)
        nn.init.zeros_(self.net.conv_last.bias)

    def forward(self, lr: Tensor) -> Tensor:
        return self.net(lr) + F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)


def train(
    criterion: nn.Module, loader_iter, steps: int, device: torch.device, seed: int, label: str
) -> tuple[nn.Module, int]:
    """The net trained for ``steps`` steps, and the steps done: Ctrl-C stops early and keeps it."""
    torch.manual_seed(seed)
    net = ResidualSR().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4, betas=(0.9, 0.99))
    done = 0
    try:
        for hr, lr in progress(
            loader_iter(steps), total=steps, desc=f"   training with {label}", leave=False
        ):
            hr, lr = hr.to(device).float() / 255, lr.to(device).float() / 255
            loss = criterion(net(lr), hr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    except KeyboardInterrupt:
        print(f"   interrupted: {label} trained {done} of {steps} steps; scoring what there is")
    return net.eval(), done


def seconds_per_step(criterion: nn.Module, batch: tuple[Tensor, Tensor], device: torch.device) -> float:
    """One training step's time, measured on a throwaway net (the second of two steps: no warm-up)."""
    net = ResidualSR().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    hr, lr = batch[0].to(device).float() / 255, batch[1].to(device).float() / 255
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        loss = criterion(net(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times[-1]


MATTERS_DB = 0.1  # a difference whose interval lies within +-0.1 dB is too small to matter


def verdict(d: MeanInterval) -> str:
    """``tie`` (the interval holds 0), ``negligible`` (it lies within +-MATTERS_DB), or who is higher."""
    if d.tie:
        return "tie"
    if max(abs(d.low), abs(d.high)) < MATTERS_DB:
        return f"negligible (< {MATTERS_DB} dB)"
    return "AESOP higher" if d.mean > 0 else "L1 higher"


# AE-PSNR under the bundled yardstick AE, trained independently of the AE the loss uses; AE-PSNR*
# under the AE AESOPLoss trains with: the distance it minimises, so partly true by construction
METRICS = ("PSNR-Y", "PSNR-RGB", "AE-PSNR", "AE-PSNR*", "LR-PSNR")
PSNR_CAP = 60.0  # dB: an exact match (a flat crop reproduced) scores inf, which no mean survives


@torch.no_grad()
def evaluate(
    net: nn.Module | None,
    held: Tensor,
    ae: AutoEncoder,
    yardstick: AutoEncoder,
    size: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Each metric on 6 crops of ``size`` on a 3 x 2 grid over the held-out photo (``None``: bicubic)."""
    h, w = held.shape[-2:]
    scores: dict[str, list[float]] = {m: [] for m in METRICS}
    for top in (0, h - size):
        for left in (0, (w - size) // 2 // 4 * 4, w - size):
            hr = held[None, :, top : top + size, left : left + size].to(device)
            lr = make_lr(hr, 4)
            up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
            sr = (up if net is None else net(lr)).clamp(0, 1)
            # an exact match scores an infinite PSNR: every crop of every method is capped alike
            scores["PSNR-Y"].append(float(psnr(sr, hr, crop_border=4, max_db=PSNR_CAP)))
            scores["PSNR-RGB"].append(float(psnr(sr, hr, crop_border=4, y_channel=False, max_db=PSNR_CAP)))
            scores["AE-PSNR"].append(float(ae_psnr(yardstick, sr, hr, max_db=PSNR_CAP)))
            scores["AE-PSNR*"].append(float(ae_psnr(ae, sr, hr, max_db=PSNR_CAP)))
            scores["LR-PSNR"].append(float(lr_psnr(sr, hr, scale=4, max_db=PSNR_CAP)))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ae", default="demo", help="AE: 'demo' (bundled), a folder, a .pth, or a Hub id")
    parser.add_argument("--steps", type=int, default=300, help="SR training steps per loss (at most)")
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="train fewer steps if the measured pace would take longer"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "output" / "quickstart.png",
        help="side-by-side image (default: %(default)s)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="a few steps on small crops (for tests)")
    args = parser.parse_args(argv)
    if args.steps < 1 or not args.minutes > 0:
        parser.error("--steps must be >= 1 and --minutes > 0")
    device = torch.device(args.device)
    steps, crop, batch, size = (2, 32, 2, 64) if args.smoke else (args.steps, 48, 8, 128)
    t0 = time.perf_counter()
    ae = AutoEncoder.from_pretrained(args.ae, device=device)
    part_one(ae, device, size)

    files = [p for p in list_images(HERE / "images") if p.name != HELD_OUT]
    data = CropDataset(ImageSet(files), crop=crop, scale=4, seed=0, crops_per_image=batch)

    def batches(n: int):
        for g in range(n):
            yield collate_crops([data[g]])

    criteria = {"nn.L1Loss": nn.L1Loss(), "AESOPLoss": AESOPLoss(ae).to(device)}  # the swap
    pace = sum(seconds_per_step(c, collate_crops([data[0]]), device) for c in criteria.values())
    fits = max(1, int(args.minutes * 60 * 0.8 / pace))  # the rest of the run: part one, scoring, picture
    if fits < steps:
        print(
            f"   this machine takes {pace:.2f} s per step of both losses: {steps} steps would take "
            f"about {steps * pace / 60:.1f} min, so {fits} steps instead (--minutes {args.minutes:g})"
        )
        steps = fits
    print(f"2) training a small RRDBNet x4 for {steps} steps with each loss ({device}): about "
          f"{steps * pace:.0f} s at the pace just measured (Ctrl-C keeps what is trained)")  # fmt: skip
    l1_net, _ = train(criteria["nn.L1Loss"], batches, steps, device, seed=0, label="nn.L1Loss")
    aesop_net, _ = train(criteria["AESOPLoss"], batches, steps, device, seed=0, label="AESOPLoss")
    nets = {"bicubic": None, "L1": l1_net, "AESOP": aesop_net}

    held = load_image(HERE / "images" / HELD_OUT).float() / 255
    with warnings.catch_warnings():  # its "demo weights" warning: scoring is what it is for
        warnings.simplefilter("ignore", UserWarning)
        yardstick = AutoEncoder.from_pretrained("yardstick", device=device)
    scores = {name: evaluate(net, held, ae, yardstick, size, device) for name, net in nets.items()}
    n = len(scores["bicubic"]["PSNR-Y"])
    capped = f"dB (each capped at {PSNR_CAP:g})"
    print(f"   held-out {HELD_OUT}: {n} crops of {size}^2, {capped}, mean +- sd over the crops")
    print("   " + " " * 10 + "".join(f"{m:>16}" for m in METRICS))
    for name, rows in scores.items():
        cells = [f"{statistics.fmean(rows[m]):.2f} +- {statistics.stdev(rows[m]):.2f}" for m in METRICS]
        print(f"   {name:<10}" + "".join(f"{c:>16}" for c in cells))
    print("   AE-PSNR: under the bundled 'yardstick' AE, trained independently of the AE the loss uses;")
    print(f"   AE-PSNR*: under the AE AESOPLoss trained with ({args.ae}): the distance it minimised")
    print("   AESOP - L1, paired over the crops (mean [95% interval]):")
    for m in METRICS:
        d = MeanInterval.of([a - b for a, b in zip(scores["AESOP"][m], scores["L1"][m], strict=True)])
        print(f"     {m:<9}{d.mean:+6.2f} [{d.low:+.2f}, {d.high:+.2f}]  {verdict(d)}")
    print("   (one training seed per loss: these intervals hold crop-to-crop noise, not seed-to-seed noise,")
    print("   which is larger; benchmarks/bench_guidance.py pairs several seeds and held-out photos)")

    window = held[None, :, 40 : 40 + 2 * size, 100 : 100 + 2 * size].to(device)
    lr = make_lr(window, 4)
    with torch.no_grad():
        outs = {"L1": nets["L1"](lr).clamp(0, 1), "AESOP": nets["AESOP"](lr).clamp(0, 1)}
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    hr = window
    panels = {"LR, bicubic x4": bicubic, "trained with L1": outs["L1"], "trained with AESOP": outs["AESOP"],
              "HR (ground truth)": hr}  # fmt: skip
    save_labelled(panels, args.out)
    print(f"   wrote {args.out} ({' | '.join(panels)}) in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
