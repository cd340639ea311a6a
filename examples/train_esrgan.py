"""The paper's recipe in one file: ESRGAN training with AESOP in place of the pixel loss.

    L_G = 1.0 * AESOP(G(lr), hr) + 1.0 * VGG19 perceptual + 5e-3 * relativistic average GAN

Generator: RRDBNet (optionally initialised from a PSNR-oriented checkpoint with --init, as the
paper does). Discriminator: VGG-style. EMA generator (0.999), AMP, periodic validation (PSNR,
AE-PSNR, LR-PSNR on held-out images), sample grids and checkpoints in --out. `--resume` continues
a run exactly where its last checkpoint left it; Ctrl-C saves one first.

The perceptual loss needs torchvision and its ImageNet VGG19 weights (in the torch hub cache, or
downloadable); without them the run says so and continues without it, unless --require-perceptual.

    python examples/train_esrgan.py --data DIV2K --ae ./aesop-ae-x4 --init RRDB_PSNR_x4.pth --out runs/esrgan
    python examples/train_esrgan.py --smoke          # a few steps on the bundled images (CPU)
"""

from __future__ import annotations

import aesop_loss  # noqa: F401 - first: it imports torch without torch's NumPy notice

# isort: split
import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
from aesop_loss.cli import CLIError, run_cli
from aesop_loss.metrics import ae_psnr, lr_psnr, psnr
from aesop_loss.resize import make_lr
from aesop_loss.train import (
    AMP_DTYPES,
    CropDataset,
    DataError,
    RunFolder,
    SampleStream,
    StopRequest,
    amp_dtype,
    atomic_path,
    autocast,
    check_amp,
    check_device,
    check_out_outside_data,
    collate_crops,
    ema_update,
    grad_scaler,
    ignore_stop_signals,
    list_images,
    load_image,
    prepare_data,
    save_labelled,
    weights_fingerprint,
)

HERE = Path(__file__).parent
logger = logging.getLogger("train_esrgan")


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator; adaptive pooling lets it take any crop of 32 px or more."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        ch = num_feat
        for i, out in enumerate((num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8)):
            if i:
                layers += [
                    nn.Conv2d(ch, out, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.LeakyReLU(0.2, True),
                ]
            layers += [nn.Conv2d(out, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(ch * 16, 100), nn.LeakyReLU(0.2, True), nn.Linear(100, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class VGGPerceptualLoss(nn.Module):
    """L1 between VGG19 conv5_4 features (before ReLU) of ImageNet-normalised images (ESRGAN's)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.features((hr - self.mean) / self.std)
        return F.l1_loss(self.features((sr - self.mean) / self.std).float(), target.float())


def load_perceptual(required: bool) -> VGGPerceptualLoss | None:
    try:
        from torchvision.models import VGG19_Weights, vgg19

        vgg = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
    except Exception as exc:  # no torchvision, no cached weights and no network, a broken install
        message = f"VGG19 perceptual loss unavailable ({exc.__class__.__name__}: {str(exc)[:120]})"
        if required:
            raise CLIError(
                message + "; install torchvision and its VGG19 weights, or drop --require-perceptual."
            ) from exc
        logger.warning(
            "%s; training continues without it (pass --require-perceptual to stop instead).", message
        )
        return None
    return VGGPerceptualLoss(vgg.features[:35])  # up to conv5_4, before its ReLU


def relativistic_g(real: Tensor, fake: Tensor) -> Tensor:
    """Generator side of RaGAN: fakes should look more real than the average real, and vice versa."""
    real = real.detach()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real - fake.mean(), torch.zeros_like(real))
        + F.binary_cross_entropy_with_logits(fake - real.mean(), torch.ones_like(fake))
    )


def relativistic_d(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real - fake.mean(), torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake - real.mean(), torch.zeros_like(fake))
    )


def validation_pairs(paths: list[Path], size: int) -> list[tuple[Tensor, Tensor]]:
    pairs = []
    for path in paths:
        img = load_image(path)
        h, w = (min(size, d) // 4 * 4 for d in img.shape[-2:])
        hr = (img[:, :h, :w].double() / 255)[None]
        lr = make_lr(hr, 4)
        pairs.append((hr.float(), lr.float()))
    return pairs


@torch.no_grad()
def validate(
    g: nn.Module, ae: AutoEncoder, pairs: list[tuple[Tensor, Tensor]], device: torch.device
) -> dict[str, float]:
    scores: dict[str, list[float]] = {"psnr": [], "ae_psnr": [], "lr_psnr": []}
    for hr, lr in pairs:
        hr, lr = hr.to(device), lr.to(device)
        sr = g(lr).clamp(0, 1)
        scores["psnr"].append(float(psnr(sr, hr, crop_border=4)))
        scores["ae_psnr"].append(float(ae_psnr(ae, sr, hr)))
        scores["lr_psnr"].append(float(lr_psnr(sr, hr, scale=4)))
    return {k: sum(v) / len(v) for k, v in scores.items()}


def save_grid(
    g: nn.Module, pairs: list[tuple[Tensor, Tensor]], device: torch.device, path: Path, step: int
) -> None:
    """LR (bicubic x4) | the generator's SR | HR, each under its label, written atomically."""
    hr, lr = pairs[0]
    with torch.no_grad():
        sr = g(lr.to(device)).clamp(0, 1).cpu()
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    save_labelled({"LR, bicubic x4": bicubic, f"SR, step {step} (EMA)": sr, "HR (ground truth)": hr}, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE / "images"), help="as pretrain's --data (name, folder, HR:LR)")
    p.add_argument("--data-dir", help="dataset download cache")
    p.add_argument("--val", default=None, help="folder of validation HR images (default: 2 bundled photos)")
    p.add_argument("--ae", default="demo", help="pretrained AE: folder, .pth, Hub id, or 'demo'")
    p.add_argument("--init", help="PSNR-oriented RRDBNet checkpoint for the generator (any ESRGAN layout)")
    p.add_argument("--pixel-loss", choices=("aesop", "l1"), default="aesop", help="what fills L_pix's slot")
    p.add_argument("--num-feat", type=int, default=64)
    p.add_argument("--num-block", type=int, default=23)
    p.add_argument("--steps", type=int, default=None, help="total steps (default 400000; --smoke: 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=128, help="HR crop (ESRGAN: 128)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gan-weight", type=float, default=5e-3)
    p.add_argument("--perceptual-weight", type=float, default=1.0)
    p.add_argument("--pixel-weight", type=float, default=1.0)
    p.add_argument("--require-perceptual", action="store_true")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/esrgan; --smoke: a new temp folder)"
    )
    p.add_argument("--val-every", type=int, default=5000)
    p.add_argument("--save-every", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    p.add_argument("--smoke", action="store_true", help="a few steps of a tiny model on the bundled images")
    args = p.parse_args(argv)
    if args.smoke:
        args.num_feat, args.num_block, args.batch_size, args.crop = 16, 1, 2, 64
        args.workers, args.val_every, args.save_every = 0, 2, 2
    args.steps = args.steps or (2 if args.smoke else 400_000)
    if args.out is None:  # a smoke run writes to a folder of its own, so it runs any number of times
        args.out = Path(tempfile.mkdtemp(prefix="aesop-esrgan-smoke-")) if args.smoke else Path("runs/esrgan")
    check_flags(args)
    try:
        check_out_outside_data(args.out, args.data)  # its sample grids would become training images
    except DataError as exc:
        raise CLIError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # --out must be new, empty, or this script's own run; one run at a time (see aesop_loss.train.runs)
    writes = {"": ["*"], "generator": ["*"]}
    folder = RunFolder(args.out, tool="train_esrgan", writes=writes, legacy="state.pt",
                       legacy_keys=("step", "g", "d", "g_ema"), resume=args.resume)  # fmt: skip
    folder.claim()  # a RunFolderError is a CLIError: one line, exit 2
    try:
        return train(args, folder)
    finally:
        folder.release()


_STATE_KEYS = ("step", "g", "d", "g_ema", "opt_g", "opt_d", "scaler", "rng")


def load_state(path: Path, device: torch.device) -> dict:
    """``state.pt``, checked: readable, every entry there, a step that is a count (one line otherwise)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated, corrupted, or not a checkpoint at all
        raise CLIError(
            f"--resume: {path} cannot be read ({type(exc).__name__}; truncated or damaged?); delete it "
            "to start over in this folder, or choose another --out."
        ) from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    step = state.get("step") if isinstance(state, dict) else None
    if missing or type(step) is not int or step < 0:
        problem = f"no {', '.join(missing)}" if missing else f"step {step!r} is not a count of steps"
        raise CLIError(
            f"--resume: {path} is not a train_esrgan state ({problem}); delete it to start over in this "
            "folder, or choose another --out."
        )
    return state


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag in range before anything is built (one line, exit 2, otherwise)."""
    for name in ("num_feat", "num_block", "steps", "batch_size", "crop", "val_every", "save_every"):
        if getattr(args, name) < (0 if name == "num_block" else 1):
            raise CLIError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer.")
    for name in ("lr", "gan_weight", "perceptual_weight", "pixel_weight"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            raise CLIError(f"--{name.replace('_', '-')} {value}: expected a finite number >= 0 (lr > 0).")
    if args.workers < 0 or args.seed < 0:
        raise CLIError("--workers and --seed must be >= 0.")
    if args.crop % 4:
        raise CLIError(f"--crop {args.crop} is not a multiple of 4 (this recipe trains x4).")
    check_device(args.device)
    check_amp(args.amp, args.device)


def train(args: argparse.Namespace, folder: RunFolder) -> int:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    amp = amp_dtype(args.amp)

    ae = AutoEncoder.from_pretrained(args.ae, device=device)
    ae_key = weights_fingerprint(ae)
    if ae.scale != 4:
        raise CLIError(f"--ae is a x{ae.scale} AE; this recipe trains x4 generators.")
    if args.init:
        g = RRDBNet.from_pretrained(args.init, device=device).train()
    else:
        g = RRDBNet(
            num_feat=args.num_feat, num_block=args.num_block, num_grow_ch=32 if args.num_feat >= 64 else 8
        ).to(device)
    d = VGGStyleDiscriminator(num_feat=16 if args.smoke else 64).to(device)
    g_ema = copy.deepcopy(g).requires_grad_(False).eval()
    pixel: nn.Module = AESOPLoss(ae).to(device) if args.pixel_loss == "aesop" else nn.L1Loss()
    perceptual = load_perceptual(args.require_perceptual)
    if perceptual is not None:
        perceptual.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=args.lr, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=args.lr, betas=(0.9, 0.99))
    scaler = grad_scaler(device.type, enabled=args.amp == "fp16")

    state_path = args.out / "state.pt"
    start = 0
    if args.resume:
        if not state_path.is_file():
            raise CLIError(f"--resume: no {state_path}; start without --resume.")
        state = load_state(state_path, device)
        try:
            for module, key in ((g, "g"), (d, "d"), (g_ema, "g_ema"), (opt_g, "opt_g"), (opt_d, "opt_d")):
                module.load_state_dict(state[key])
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = str(exc).strip().splitlines()[-1].strip()[:200]
            raise CLIError(
                f"--resume: {state_path} was saved by a run with other settings ({detail}); resume with "
                "the flags it was started with (--num-feat, --num-block, --init), or choose another --out."
            ) from None
        if state.get("ae_fingerprint", ae_key) != ae_key:  # the loss's AE, by its weights
            raise CLIError(
                f"--resume: the --ae weights differ from those the run in {args.out} trained with; resume "
                "with the same AE, or choose another --out."
            )
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())  # map_location moved it to --device
        start = state["step"]
        folder.trim_log("metrics.jsonl", start)
        logger.info("resumed %s at step %d", args.out, start)
    elif state_path.exists():
        raise CLIError(
            f"{args.out} already holds a run; pass --resume to continue it, or choose another --out."
        )

    def save(step: int) -> None:
        folder.verify()  # no link appeared in the run folder since it was claimed
        g_ema.save_pretrained(
            args.out / "generator", description="ESRGAN generator trained with AESOP (EMA)."
        )
        state = {"step": step, "g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict()}
        state |= {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "scaler": scaler.state_dict()}
        state["rng"], state["ae_fingerprint"] = torch.get_rng_state(), ae_key
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)

    images = prepare_data(args.data, scale=4, data_dir=args.data_dir)
    data = CropDataset(images, crop=args.crop, scale=4, seed=args.seed)
    # crops depend only on (seed, sample number): starting the stream at the next sample resumes it
    loader = DataLoader(data, batch_size=args.batch_size, sampler=SampleStream(start=start * args.batch_size),
                        num_workers=args.workers, collate_fn=collate_crops, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_stop_signals if args.workers else None)  # fmt: skip
    val_paths = (
        list_images(args.val)
        if args.val
        else [HERE / "images" / "chelsea.png", HERE / "images" / "coffee.png"]
    )
    val = validation_pairs(val_paths, 64 if args.smoke else 256)
    args.out.mkdir(parents=True, exist_ok=True)
    log = folder.open_log("metrics.jsonl")  # never through a link, never into a file shared elsewhere
    batches, t0 = iter(loader), time.perf_counter()
    logger.info(
        "training %s steps: %s as L_pix, perceptual %s",
        args.steps,
        args.pixel_loss,
        "on" if perceptual else "off",
    )

    def train_step(batch: tuple[Tensor, Tensor], step: int) -> None:
        hr, lr = batch
        hr = hr.to(device, non_blocking=True).float() / 255
        lr = lr.to(device, non_blocking=True).float() / 255
        # generator
        d.requires_grad_(False)
        with autocast(device.type, amp):
            sr = g(lr)
            l_pix = pixel(sr, hr)
            l_percep = perceptual(sr, hr) if perceptual is not None else sr.new_zeros(())
            l_gan = relativistic_g(d(hr), d(sr))
            loss_g = args.pixel_weight * l_pix + args.perceptual_weight * l_percep + args.gan_weight * l_gan
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        # discriminator
        d.requires_grad_(True)
        with autocast(device.type, amp):
            loss_d = relativistic_d(d(hr), d(sr.detach()))
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        scaler.update()
        ema_update(list(g_ema.parameters()), list(g.parameters()), 0.999)
        if step % args.val_every == 0 or step == args.steps:
            scores = validate(g_ema, ae, val, device)
            losses = {"l_pix": l_pix.item(), "l_gan": l_gan.item(), "l_d": loss_d.item()}
            record = {
                "step": step,
                **losses,
                **scores,
                "s_per_step": (time.perf_counter() - t0) / (step - start),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            logger.info(
                "step %d: PSNR %.2f, AE-PSNR %.2f, LR-PSNR %.2f",
                step,
                scores["psnr"],
                scores["ae_psnr"],
                scores["lr_psnr"],
            )
            save_grid(g_ema, val, device, args.out / f"samples_{step:07d}.png", step)
        if step % args.save_every == 0 or step == args.steps:
            save(step)

    step = start
    try:
        with StopRequest() as stop:  # Ctrl-C: finish the step, save, exit; twice: abort unsaved
            while step < args.steps:
                step += 1
                train_step(next(batches), step)
                if stop.requested and step < args.steps:
                    if step % args.save_every:
                        save(step)
                    logger.info("stopped at step %d; saved %s (continue with --resume)", step, state_path)
                    raise KeyboardInterrupt
    finally:
        log.close()
    logger.info("done: %s (samples and metrics.jsonl beside it)", args.out / "generator")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
