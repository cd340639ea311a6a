"""AESOP in one minute: what it penalises, and the one-line swap for nn.L1Loss.

1. On a real photo, two perturbations of the HR image with the same energy: high-frequency detail
   that leaves the bicubic LR image unchanged (plausible texture an SR net may invent), and a
   low-frequency change that does not (a fidelity error). L1 penalises both alike; AESOP penalises
   the fidelity error and (almost) ignores the detail.
2. A small SR net trained twice on the bundled photos, once with nn.L1Loss and once with AESOPLoss,
   then PSNR, AE-PSNR and LR-PSNR on a held-out photo and a side-by-side PNG
   (LR bicubic | L1 | AESOP | HR).

    python examples/quickstart.py            # about a minute on a laptop CPU
    python examples/quickstart.py --smoke    # a few steps, for tests
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
from aesop_loss.metrics import ae_psnr, lr_psnr, psnr
from aesop_loss.resize import imresize, make_lr
from aesop_loss.train import CropDataset, ImageSet, collate_crops, list_images, load_image

HERE = Path(__file__).parent
HELD_OUT = "chelsea.png"


def null_space_detail(hr: Tensor, scale: int, amplitude: float, gen: torch.Generator) -> Tensor:
    """Random detail d with imresize(hr + d, 1/scale) == imresize(hr, 1/scale) (to ~1e-12)."""
    h, w = hr.shape[-2:]
    eye_h, eye_w = torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)
    # the 1-D resize operators, (h/s, h) and (w/s, w): resize the columns of an identity matrix
    down_h = imresize(eye_h[:, :, None], 1 / scale)[..., 0].T
    down_w = imresize(eye_w[:, :, None], 1 / scale)[..., 0].T
    # project the noise off each operator's row space: what remains is invisible after resizing
    proj_h = eye_h - torch.linalg.pinv(down_h) @ down_h
    proj_w = eye_w - torch.linalg.pinv(down_w) @ down_w
    noise = torch.randn(hr.shape, generator=gen, dtype=torch.float64)
    detail = proj_h @ noise @ proj_w.T
    return (detail / detail.abs().max() * amplitude).to(hr.dtype)


def low_frequency_change(hr: Tensor, energy: float) -> Tensor:
    """A smooth colour shift (a fidelity error) with the given L2 norm."""
    h, w = hr.shape[-2:]
    ramp = torch.linspace(-1, 1, w).expand(h, w)
    change = torch.stack((ramp, -ramp, 0.5 * torch.ones(h, w)))[None].to(hr.dtype)
    return change * (energy / change.norm())


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


def train(criterion: nn.Module, loader_iter, steps: int, device: torch.device, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = ResidualSR().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4, betas=(0.9, 0.99))
    for hr, lr in loader_iter(steps):
        hr, lr = hr.to(device).float() / 255, lr.to(device).float() / 255
        loss = criterion(net(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ae", default="demo", help="AE: 'demo' (bundled), a folder, a .pth, or a Hub id")
    parser.add_argument("--steps", type=int, default=300, help="SR training steps per loss")
    parser.add_argument("--out", type=Path, default=Path("quickstart.png"), help="side-by-side image")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="a few steps on small crops (for tests)")
    args = parser.parse_args(argv)
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

    print(f"2) training a small RRDBNet x4 for {steps} steps with each loss ({device})")
    l1_net = train(nn.L1Loss(), batches, steps, device, seed=0)
    aesop_net = train(AESOPLoss(ae).to(device), batches, steps, device, seed=0)  # the one-line swap

    held = load_image(HERE / "images" / HELD_OUT)[:, 40 : 40 + 2 * size, 100 : 100 + 2 * size]
    hr = (held.float() / 255)[None].to(device)
    lr = make_lr(hr, 4)
    with torch.no_grad():
        outs = {"L1": l1_net(lr).clamp(0, 1), "AESOP": aesop_net(lr).clamp(0, 1)}
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    print(f"   held-out {HELD_OUT}, dB:   {'PSNR-Y':>8}{'PSNR-RGB':>10}{'AE-PSNR':>10}{'LR-PSNR':>10}")
    for name, sr in {"bicubic": bicubic, **outs}.items():
        p = float(psnr(sr, hr, crop_border=4))
        rgb = float(psnr(sr, hr, crop_border=4, y_channel=False))
        a, lp = float(ae_psnr(ae, sr, hr)), float(lr_psnr(sr, hr, scale=4))
        print(f"   {name:<25}{p:>8.2f}{rgb:>10.2f}{a:>10.2f}{lp:>10.2f}")
    panel = torch.cat([bicubic, outs["L1"], outs["AESOP"], hr], dim=-1)[0]
    pixels = (panel * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(args.out)
    print(f"   wrote {args.out} (LR bicubic | L1 | AESOP | HR) in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
