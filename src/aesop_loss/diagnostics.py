"""Is an autoencoder fit for the AESOP loss? Measurements of what it keeps and what it ignores.

AESOP works when ``AE(x)`` keeps what the LR image determines and drops what it cannot. Five
measurements on real photos tell whether an AE does:

- ``recon_psnr``: PSNR of ``AE(x)`` against ``x`` (Y channel, border = scale), dB. An AE that does
  not reconstruct its input cannot guide an SR net.
- ``lr_psnr``: PSNR of the encoder's bottleneck against the MATLAB-bicubic LR image, dB.
- ``detail_ratio`` and ``fidelity_ratio``: the paper's argument in two numbers. Two perturbations of
  ``x`` with equal energy: detail in the downsampler's null space (the LR image does not change:
  plausible texture an SR net may invent) and a low-frequency change (the LR image changes: a
  fidelity error). Each ratio is ``AESOP / L1`` on that perturbation. ``selectivity`` =
  fidelity ratio / detail ratio (how much more AESOP penalises the error than the detail) and
  ``retention`` = fidelity ratio (how much of the error AESOP still sees).
- ``colour_gains``: a uniform offset of the input along Y, Cb and Cr comes out of a faithful AE with
  gain about 1; an AE that memorised its training photos' colours passes Cb/Cr with a small gain,
  and AESOP with it cannot see colour errors.
- ``colour_floor``: the smallest gain over *all* colour directions of a uniform offset (the smallest
  singular value of the 3x3 map from input offset to output offset), and ``colour_blind``, the RGB
  direction it belongs to. Near 0, AESOP cannot see a colour cast along that direction at all, and
  an SR net trained with it drifts along it freely (differently for every seed). A learned encoder
  whose first conv has fewer channels than the image (``num_feat / scale**2 < 3``: the demo-size
  ``num_feat=32`` at x4 has 2) loses one direction by construction; a wider one can learn to drop
  one when pretrained on few photos. The fixed bicubic encoder keeps all three.

With a ``teacher`` AE (a compact AE distilled from a larger one, say), two more: the cosine
similarity between the student's and the teacher's AESOP gradients with respect to an SR-like input
(``x`` plus null-space detail plus a low-frequency error), and the ratio of their loss values. A
student with cosine near 1 steers an SR net the way its teacher would.

``THRESHOLDS`` turns them into a verdict, ``"ok"``, ``"warn"`` or ``"unfit"``, with the reasons.
``python -m aesop_loss.diagnose`` is the command; pretraining prints the same report at its end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from .archs import AutoEncoder
from .metrics import psnr
from .resize import imresize, make_lr

__all__ = [
    "MAX_SIZE",
    "THRESHOLDS",
    "Diagnosis",
    "Thresholds",
    "colour_floor",
    "colour_transfer",
    "diagnose",
    "gradient_agreement",
    "low_frequency_change",
    "null_space_detail",
    "sample_images",
]

SAMPLE_IMAGES = Path(__file__).parent / "pretrained" / "diagnose_images.safetensors"
MAX_SIZE = 512
"""The largest tile ``diagnose`` measures (its null-space detail costs O(size^3))."""
# ITU-R BT.601 RGB -> YCbCr (rows Y, Cb, Cr; no offsets), in [0, 1] units
_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Where a measurement makes an AE unfit for AESOP, or worth a warning.

    The values come from measuring untrained AEs (random weights, with or without a pretrained
    flag), AEs from short and long pretraining runs, and the bundled demo AE on the bundled photos;
    the numbers are in docs/diagnose.md.

    Args:
        unfit_recon_psnr: Below this reconstruction PSNR (dB) the AE does not reconstruct.
        warn_recon_psnr: Below this, it reconstructs poorly.
        warn_lr_psnr: Below this bottleneck-vs-LR PSNR (dB), the bottleneck is not the LR image.
        unfit_retention: Below this, AESOP barely sees fidelity errors.
        warn_retention: Below this, it sees them weakly.
        unfit_selectivity: Below this, AESOP penalises detail about as much as error (like L1).
        warn_selectivity: Below this, it separates them weakly.
        warn_colour_gain: A Cb or Cr gain below this: colour errors are under-weighted.
        unfit_colour_floor: Below this smallest gain over all colour directions, AESOP is blind to
            a colour cast along one of them.
        warn_colour_floor: Below this, it sees one only weakly.
        warn_luma_gain: The Y gain outside ``[a, b]``: brightness errors are mis-weighted.
        warn_teacher_cosine: Below this gradient cosine to a teacher (when one is given), the
            student steers an SR net differently from it.
    """

    unfit_recon_psnr: float = 20.0
    warn_recon_psnr: float = 26.0
    warn_lr_psnr: float = 32.0
    unfit_retention: float = 0.2
    warn_retention: float = 0.4
    unfit_selectivity: float = 3.0
    warn_selectivity: float = 10.0
    warn_colour_gain: float = 0.5
    unfit_colour_floor: float = 0.1
    warn_colour_floor: float = 0.3
    warn_luma_gain: tuple[float, float] = (0.8, 1.25)
    warn_teacher_cosine: float = 0.9

    def judge(self, d: Diagnosis) -> tuple[str, list[str]]:
        """The verdict on measurements: ``("ok" | "warn" | "unfit", reasons)``."""
        unfit, warn = [], []

        def low(name: str, value: float, limit: float, digits: int, why: str, unit: str = "") -> str:
            return f"{name} {_below(value, limit, digits)}{unit} < {limit:g}: {why}"

        recon, ret, sel = d.recon_psnr, d.retention, d.selectivity
        if not recon >= self.unfit_recon_psnr:
            why = "the AE does not reconstruct its input (untrained, or trained on something else)"
            unfit.append(low("reconstruction PSNR", recon, self.unfit_recon_psnr, 1, why, " dB"))
        elif recon < self.warn_recon_psnr:
            warn.append(low("reconstruction PSNR", recon, self.warn_recon_psnr, 1, "train longer", " dB"))
        if not ret >= self.unfit_retention:
            unfit.append(
                low("retention", ret, self.unfit_retention, 2, "AESOP would barely see fidelity errors")
            )
        elif ret < self.warn_retention:
            warn.append(low("retention", ret, self.warn_retention, 2, "fidelity errors are under-weighted"))
        if not sel >= self.unfit_selectivity:
            why = "AESOP would penalise invented detail about as much as errors, like L1"
            unfit.append(low("selectivity", sel, self.unfit_selectivity, 1, why))
        elif sel < self.warn_selectivity:
            warn.append(low("selectivity", sel, self.warn_selectivity, 1, "detail is still penalised"))
        if d.lr_psnr < self.warn_lr_psnr:
            why = "the bottleneck is not the bicubic LR image"
            warn.append(low("bottleneck vs LR PSNR", d.lr_psnr, self.warn_lr_psnr, 1, why, " dB"))
        gains = d.colour_gains
        low_colour = [
            f"{k.capitalize()} {_below(gains[k], self.warn_colour_gain)}"
            for k in ("cb", "cr")
            if gains[k] < self.warn_colour_gain
        ]
        if low_colour:
            warn.append(
                f"colour gains {', '.join(low_colour)} < {self.warn_colour_gain:g}: colour errors are "
                "under-weighted (pretrain with --color-jitter, or on more varied images)"
            )
        floor, cast = d.colour_floor, f"a colour cast along RGB ({_rgb(d.colour_blind)})"
        fix = "pretrain with --encoder bicubic and --color-jitter, longer, or on more varied photos"
        if not floor >= self.unfit_colour_floor:
            why = f"{cast} is invisible to AESOP, so an SR net drifts along it ({fix})"
            unfit.append(low("colour floor", floor, self.unfit_colour_floor, 2, why))
        elif floor < self.warn_colour_floor:
            why = f"{cast} is under-weighted ({fix})"
            warn.append(low("colour floor", floor, self.warn_colour_floor, 2, why))
        lo, hi = self.warn_luma_gain
        if not lo <= gains["y"] <= hi:
            warn.append(
                f"Y gain {gains['y']:.2f} outside [{lo:g}, {hi:g}]: brightness errors are mis-weighted"
            )
        cosine = d.teacher_grad_cosine
        if cosine is not None and not cosine >= self.warn_teacher_cosine:
            why = "the student steers an SR net differently (distil longer, or with a larger student)"
            warn.append(low("gradient cosine to the teacher", cosine, self.warn_teacher_cosine, 3, why))
        if unfit:
            return "unfit", unfit + warn
        return ("warn" if warn else "ok"), warn


def _rgb(direction: Sequence[float]) -> str:
    """An RGB direction as ``+0.10, -0.98, +0.16``."""
    return ", ".join(f"{v:+.2f}" for v in direction)


def _below(value: float, limit: float, digits: int = 2) -> str:
    """``value`` with as many decimals as it takes to show it below ``limit`` (0.195 is not "0.20 < 0.2").

    Examples:
        >>> _below(0.195, 0.2), _below(0.15, 0.2), _below(25.96, 26.0, 1)
        ('0.195', '0.15', '25.96')
    """
    text = f"{value:.{digits}f}"
    while float(text) >= limit and digits < 8:
        digits += 1
        text = f"{value:.{digits}f}"
    return text


THRESHOLDS = Thresholds()
"""The thresholds ``diagnose`` uses by default (justified in docs/diagnose.md)."""


@dataclasses.dataclass
class Diagnosis:
    """The measurements of one AE on a set of images, and the verdict they give.

    Attributes:
        recon_psnr: PSNR(AE(x), x), dB, mean over the images.
        lr_psnr: PSNR(encode(x), bicubic LR), dB.
        detail_ratio: AESOP / L1 on null-space detail (small is good).
        fidelity_ratio: AESOP / L1 on a low-frequency change (large is good).
        selectivity: fidelity_ratio / detail_ratio.
        retention: fidelity_ratio.
        colour_gains: ``{"y", "cb", "cr"}`` gains of a uniform input offset (about 1 is good).
        colour_floor: The smallest gain of a uniform input offset over all colour directions.
        colour_blind: That direction, a unit RGB vector (its largest component positive).
        images: How many images were measured.
        tiles: How many tiles, over all images.
        recon_psnr_per_image: Each image's reconstruction PSNR (mean over its tiles), dB.
        teacher_grad_cosine: With a teacher: cosine between the two AEs' AESOP gradients w.r.t.
            an SR-like input (1 = the same direction), else None.
        teacher_loss_ratio: With a teacher: the student's AESOP value over the teacher's on those
            inputs, else None.
        verdict: ``"ok"``, ``"warn"`` or ``"unfit"``.
        reasons: Why, one line each (empty for ``"ok"``).
    """

    recon_psnr: float
    lr_psnr: float
    detail_ratio: float
    fidelity_ratio: float
    selectivity: float
    retention: float
    colour_gains: dict[str, float]
    colour_floor: float
    colour_blind: list[float]
    images: int
    tiles: int = 0
    recon_psnr_per_image: list[float] = dataclasses.field(default_factory=list)
    teacher_grad_cosine: float | None = None
    teacher_loss_ratio: float | None = None
    verdict: str = "ok"
    reasons: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The measurements and verdict as plain JSON-ready values."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One JSON object (non-finite numbers as ``null``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return json.dumps({k: clean(v) for k, v in self.to_dict().items()})

    def table(self) -> str:
        """A short plain-text report: one line per measurement, then the verdict and its reasons."""
        g = self.colour_gains
        rows = [
            ("reconstruction PSNR", f"{self.recon_psnr:.2f} dB", "AE(x) vs x"),
            ("bottleneck vs LR PSNR", f"{self.lr_psnr:.2f} dB", "encode(x) vs bicubic LR"),
            ("detail ratio", f"{self.detail_ratio:.3f}", "AESOP/L1 on detail the LR cannot see (low)"),
            ("fidelity ratio", f"{self.fidelity_ratio:.3f}", "AESOP/L1 on a low-frequency error (high)"),
            ("selectivity", f"{self.selectivity:.1f}", "fidelity ratio / detail ratio"),
            ("colour gains", f"Y {g['y']:.2f} Cb {g['cb']:.2f} Cr {g['cr']:.2f}", "offsets passed (about 1)"),
            ("colour floor", f"{self.colour_floor:.2f} along RGB ({_rgb(self.colour_blind)})",
             "the least-passed colour offset (about 1)"),
        ]  # fmt: skip
        if self.teacher_grad_cosine is not None and self.teacher_loss_ratio is not None:
            rows += [
                ("gradient cosine", f"{self.teacher_grad_cosine:.4f}", "to the teacher's AESOP gradient (1)"),
                ("loss ratio", f"{self.teacher_loss_ratio:.3f}", "AESOP value / the teacher's (about 1)"),
            ]
        per_image = self.recon_psnr_per_image
        if len(per_image) > 1:
            name, value, what = rows[0]
            rows[0] = (name, f"{value} (images {min(per_image):.1f}-{max(per_image):.1f})", what)
        width = max(len(value) for _, value, _ in rows) + 2
        lines = [f"{name:<23}{value:<{width}}{what}" for name, value, what in rows]
        tiles = f", {self.tiles} tiles" if self.tiles else ""
        lines.append(f"verdict: {self.verdict} ({self.images} images{tiles})")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def sample_images() -> list[Tensor]:
    """The bundled photos (centre 128x128 crops of the 7 CC0 / public-domain sample images), uint8."""
    crops = load_file(SAMPLE_IMAGES)
    return [crops[name] for name in sorted(crops)]


def null_space_detail(hr: Tensor, scale: int, amplitude: float, generator: torch.Generator) -> Tensor:
    """Random detail ``d`` that MATLAB-bicubic downsampling does not see: ``imresize(hr + d, 1/scale)``
    equals ``imresize(hr, 1/scale)`` to ~1e-12.

    Args:
        hr: Images ``(..., H, W)``.
        scale: The downsampling factor.
        amplitude: The largest ``|d|``.
        generator: Random source.

    Examples:
        >>> hr = torch.rand(1, 3, 32, 32, dtype=torch.float64)
        >>> d = null_space_detail(hr, 4, 0.1, torch.Generator().manual_seed(0))
        >>> float((imresize(hr + d, 1 / 4) - imresize(hr, 1 / 4)).abs().max()) < 1e-10
        True
    """
    h, w = hr.shape[-2:]
    eye_h, eye_w = torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)
    # the 1-D resize operators, (h/s, h) and (w/s, w): resize the columns of an identity matrix
    down_h = imresize(eye_h[:, :, None], 1 / scale)[..., 0].T
    down_w = imresize(eye_w[:, :, None], 1 / scale)[..., 0].T
    # project the noise off each operator's row space: what remains is invisible after resizing
    proj_h = eye_h - torch.linalg.pinv(down_h) @ down_h
    proj_w = eye_w - torch.linalg.pinv(down_w) @ down_w
    noise = torch.randn(hr.shape, generator=generator, dtype=torch.float64)
    detail = proj_h @ noise @ proj_w.T
    return (detail / detail.abs().max() * amplitude).to(hr.dtype)


def low_frequency_change(hr: Tensor, energy: float) -> Tensor:
    """A smooth colour shift (a fidelity error the LR image shows) with L2 norm ``energy``."""
    h, w = hr.shape[-2:]
    ramp = torch.linspace(-1, 1, w, dtype=torch.float64).expand(h, w)
    change = torch.stack((ramp, -ramp, 0.5 * torch.ones(h, w, dtype=torch.float64)))
    change = change.expand(*hr.shape[:-3], 3, h, w).to(hr.dtype)
    return change * (energy / change.norm())


@torch.no_grad()
def colour_transfer(
    ae: AutoEncoder, x: Tensor, *, offset: float = 0.02, base: Tensor | None = None
) -> Tensor:
    """How a uniform input offset along each of Y, Cb and Cr moves the AE's output, in YCbCr.

    Args:
        ae: The autoencoder.
        x: Images ``(N, 3, H, W)`` in [0, 1], on the AE's device.
        offset: The offset's size along each YCbCr axis (in [0, 1] units).
        base: ``ae(x)``, when the caller has it already.

    Returns:
        A ``(3, 3)`` float64 matrix on the CPU: column ``j`` is the mean output change (Y, Cb, Cr)
        per unit of input offset along axis ``j``. A faithful AE gives about the identity.

    Examples:
        >>> ae = AutoEncoder(num_feat=48, num_block=1, num_grow_ch=8, encoder="bicubic")
        >>> colour_transfer(ae, torch.rand(1, 3, 32, 32)).shape
        torch.Size([3, 3])
    """
    ycbcr = _YCBCR.to(x.device, torch.float32)
    base = ae(x) if base is None else base
    columns = []
    for c in range(3):
        shift = torch.zeros(3, device=x.device)
        shift[c] = offset
        rgb = torch.linalg.solve(ycbcr, shift).view(1, 3, 1, 1)
        moved = torch.einsum("ij,bjhw->bihw", ycbcr, ae(x + rgb) - base)
        columns.append(moved.mean(dim=(0, 2, 3)).double().cpu() / offset)
    return torch.stack(columns, dim=1)


def colour_floor(transfer: Tensor) -> tuple[float, list[float]]:
    """The smallest gain of a ``colour_transfer`` matrix over all colour directions, and its direction.

    Returns:
        ``(gain, [r, g, b])``: the smallest singular value of the transfer in RGB, and the unit RGB
        input direction it belongs to (signed so that its largest component is positive).

    Examples:
        >>> gain, direction = colour_floor(torch.diag(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)))
        >>> round(gain, 6), [round(v, 2) for v in direction]  # the RGB offset that moves only Cr
        (0.0, [0.89, -0.45, 0.0])
    """
    ycbcr = _YCBCR.double()
    rgb = torch.linalg.solve(ycbcr, transfer.double() @ ycbcr)  # RGB offset -> RGB output change
    _, values, vh = torch.linalg.svd(rgb)
    direction = vh[-1] / vh[-1].norm()
    direction = direction * torch.sign(direction[direction.abs().argmax()])
    return float(values[-1]), [float(v) for v in direction]


def gradient_agreement(
    student: AutoEncoder, teacher: AutoEncoder, images: Sequence[Tensor] | None = None, *,
    size: int = 128, tiles: int = 4, seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """How alike two AEs steer an SR net: their AESOP gradients on SR-like inputs, compared.

    For each image ``x`` the SR-like input is ``x`` plus null-space detail plus a low-frequency
    error of equal energy (what ``diagnose`` measures with). The gradients of
    ``mean |AE(sr) - AE(x)|`` w.r.t. ``sr`` are flattened over all images and compared.

    Args:
        student: The AE to judge (e.g. a compact AE).
        teacher: The AE it should agree with, on the same device.
        images: As in ``diagnose`` (default: the bundled photos).
        size: Tile size, as in ``diagnose``.
        tiles: At most this many tiles per image, as in ``diagnose``.
        seed: Seed of the tiles and the perturbations.

    Returns:
        ``(cosine, loss_ratio)``: the gradients' cosine similarity (1 = same direction) and the
        student's summed loss over the teacher's.

    Raises:
        ValueError: The AEs' scales differ, or an image is unusable.

    Examples:
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
        >>> cosine, ratio = gradient_agreement(ae, ae, size=32)
        >>> round(cosine, 6), round(ratio, 6)
        (1.0, 1.0)
    """
    if student.scale != teacher.scale:
        raise ValueError(
            f"gradient_agreement: the student is x{student.scale}, the teacher x{teacher.scale}."
        )
    images = sample_images() if images is None else list(images)
    if not images:
        raise ValueError("gradient_agreement: no images to measure on.")
    device, s = next(student.parameters()).device, student.scale
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    pick = random.Random(seed)
    grads: dict[str, list[Tensor]] = {"s": [], "t": []}
    losses = {"s": 0.0, "t": 0.0}
    for x in (tile.to(device) for img in images for tile in _tiles(img, size, s, tiles, pick)):
        detail = null_space_detail(x.double().cpu(), s, 0.08, gen)
        low = low_frequency_change(x.double().cpu(), float(detail.norm()))
        sr_like = (x + (detail + low).to(device, x.dtype)).detach()
        for key, ae in (("s", student), ("t", teacher)):
            with torch.no_grad():
                target = ae(x)
            sr = sr_like.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = (ae(sr) - target).abs().mean()
                (grad,) = torch.autograd.grad(loss, sr)
            grads[key].append(grad.flatten().double())
            losses[key] += float(loss.detach())
    student.train(modes[0])
    teacher.train(modes[1])
    gs, gt = torch.cat(grads["s"]), torch.cat(grads["t"])
    cosine = float(torch.dot(gs, gt) / (gs.norm() * gt.norm()).clamp_min(1e-30))
    return cosine, losses["s"] / losses["t"] if losses["t"] > 0 else float("inf")


@torch.no_grad()
def diagnose(
    ae: AutoEncoder,
    images: Iterable[Tensor] | None = None,
    *,
    size: int = 128,
    tiles: int = 4,
    seed: int = 0,
    thresholds: Thresholds = THRESHOLDS,
    teacher: AutoEncoder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Diagnosis:
    """Measure how fit ``ae`` is for the AESOP loss (see the module docstring) and give a verdict.

    Each image is measured on up to ``tiles`` tiles of ``size`` taken from a grid that covers it
    (seeded, so a report is repeatable), so that a large photo counts by more than its centre; the
    image's numbers are the mean over its tiles, and the report's the mean over images, with the
    spread of the reconstruction PSNR across images.

    Args:
        ae: The autoencoder, on any device.
        images: ``(3, H, W)`` images, uint8 (or float in [0, 1]); any iterable, read one at a
            time (each is dropped once its tiles are cut). Default: the bundled sample photos
            (128x128 each, so one tile each at the default size).
        size: Tile size, 16 to ``MAX_SIZE`` (made a multiple of the AE's scale); smaller images
            are used whole.
        tiles: At most this many tiles per image.
        seed: Seed of the tile choice and of the null-space detail.
        thresholds: Where the verdict turns.
        teacher: Another AE (same scale, same device) to compare gradients with
            (``gradient_agreement``), e.g. the AE a compact one was distilled from.
        progress: Called as ``progress(done, total)`` after each image (a progress bar's hook;
            ``total`` is 0 when ``images`` has no length).

    Returns:
        The measurements and the verdict.

    Raises:
        ValueError: No image, or one smaller than 4 LR pixels per side.

    Examples:
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)  # untrained
        >>> d = diagnose(ae, size=64)
        >>> d.verdict, d.recon_psnr < 20, d.tiles
        ('unfit', True, 28)
    """
    images = sample_images() if images is None else images
    total = len(images) if isinstance(images, Sized) else 0
    if tiles < 1:
        raise ValueError(f"diagnose: tiles must be >= 1, got {tiles}.")
    if not 16 <= size <= MAX_SIZE:
        raise ValueError(
            f"diagnose: size must be from 16 to {MAX_SIZE} (tiles cover each image), got {size}."
        )
    param = next(ae.parameters())
    device, s = param.device, ae.scale
    was_training = ae.training
    ae.eval()
    gen = torch.Generator().manual_seed(seed)
    pick = random.Random(seed)
    sums: dict[str, float] = {"lr": 0.0, "d_l1": 0.0, "d_ae": 0.0, "f_l1": 0.0, "f_ae": 0.0}
    transfer = torch.zeros(3, 3, dtype=torch.float64)
    recon: list[float] = []
    kept: list[Tensor] = []  # the tiles, for the teacher (each image is dropped once it is cut)
    count = 0
    for img in images:  # not enumerate(): its cached (i, img) tuple would keep the last image alive
        per_tile = []
        cut = _tiles(img, size, s, tiles, pick)
        del img
        if teacher is not None:
            kept += [t[0] for t in cut]
        for x in cut:
            x = x.to(device)
            z = ae.encode(x)
            base = ae.decode(z)
            per_tile.append(float(psnr(base, x, crop_border=s)))
            sums["lr"] += float(psnr(z, make_lr(x, s), crop_border=1))
            detail = null_space_detail(x.double().cpu(), s, 0.08, gen)
            low = low_frequency_change(x.double().cpu(), float(detail.norm()))
            for key, delta in (("d", detail), ("f", low)):
                moved = x + delta.to(device, x.dtype)
                sums[f"{key}_l1"] += float((moved - x).abs().mean())
                sums[f"{key}_ae"] += float((ae(moved) - base).abs().mean())
            transfer += colour_transfer(ae, x, base=base)
            count += 1
        recon.append(sum(per_tile) / len(per_tile))
        if progress is not None:
            progress(len(recon), total)
    ae.train(was_training)
    if not recon:
        raise ValueError("diagnose: no images to measure on.")
    detail_ratio = sums["d_ae"] / sums["d_l1"]
    fidelity_ratio = sums["f_ae"] / sums["f_l1"]
    transfer /= count
    floor, blind = colour_floor(transfer)
    diagnosis = Diagnosis(
        recon_psnr=sum(recon) / len(recon),
        lr_psnr=sums["lr"] / count,
        detail_ratio=detail_ratio,
        fidelity_ratio=fidelity_ratio,
        selectivity=fidelity_ratio / detail_ratio if detail_ratio > 0 else float("inf"),
        retention=fidelity_ratio,
        colour_gains={k: float(g) for k, g in zip(("y", "cb", "cr"), transfer.diagonal(), strict=True)},
        colour_floor=floor,
        colour_blind=blind,
        images=len(recon),
        tiles=count,
        recon_psnr_per_image=recon,
    )
    if teacher is not None:
        cosine, ratio = gradient_agreement(ae, teacher, kept, size=size, tiles=1, seed=seed)
        diagnosis.teacher_grad_cosine, diagnosis.teacher_loss_ratio = cosine, ratio
    diagnosis.verdict, diagnosis.reasons = thresholds.judge(diagnosis)
    return diagnosis


def _starts(length: int, tile: int) -> list[int]:
    """Evenly spaced tile offsets that cover ``[0, length)`` (the last tile ends at the edge)."""
    n = math.ceil(length / tile)
    return [0] if n == 1 else [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _tiles(img: Tensor, size: int, scale: int, count: int, pick: random.Random) -> list[Tensor]:
    """Up to ``count`` tiles of ``size`` (a multiple of ``scale``) from a grid covering ``img``."""
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"diagnose: images must be (3, H, W), got shape {tuple(img.shape)}.")
    height, width = img.shape[-2:]
    h, w = (min(size, d) // scale * scale for d in (height, width))
    if min(h, w) < 4 * scale:
        raise ValueError(f"diagnose: an image of {width}x{height} is too small for x{scale}.")
    grid = [(top, left) for top in _starts(height, h) for left in _starts(width, w)]
    chosen = grid if len(grid) <= count else sorted(pick.sample(grid, count))
    out = []
    for top, left in chosen:
        x = img[:, top : top + h, left : left + w]
        # a copy, never a view: the full image can go once its tiles are cut
        out.append((x.float() / 255 if not x.is_floating_point() else x.to(torch.float32, copy=True))[None])
    return out
