"""What an AE does to a trained SR net, with its noise: L1 vs AESOP under one or more AEs, paired.

Trains the quickstart's small SR net (a 16/1/8 RRDBNet predicting the residual over bicubic) with
nn.L1Loss and with AESOPLoss under each --ae, and scores every net on held-out images: PSNR-Y,
LR-PSNR (of the bicubic-downsampled pair) and AE-PSNR under each --reference-ae, the same for every
loss. The default references are "yardstick", an AE trained independently of the others, and
"demo"; a score under the AE a loss trained with is partly true by construction, and each such
line of the report says so.

The comparison is paired. A unit is (held-out fold, seed): within a unit every loss starts from the
same initialisation and sees the same batches, so the difference between two losses is measured on
the same footing, and the spread across units is the noise (initialisation, data order, which
image is held out). Without --held-out, the folds are leave-one-out over --data's images (train on
the others, score the one left out); each held-out image is scored on several crops. For every
loss the mean and standard deviation over units are printed, and for every pair of losses the mean
paired difference with its 95% interval (Student's t over units); an interval that holds 0 is
printed as a tie.

Cost (2-core x86-64 CPU, two runs side by side, 1 thread each): a unit (three trainings of --steps
300 and their scoring) takes about 65 s, so the default (7 folds x 2 seeds = 14 units) about 15
minutes. More folds buy more than more seeds here: they add units at the same cost and vary the
held-out image too.

    python benchmarks/bench_guidance.py                          # the default run (benchmarks/README.md)
    python benchmarks/bench_guidance.py --ae demo --ae ./my-ae --seeds 3 --steps 600
    python benchmarks/bench_guidance.py --held-out benchmarks/held-out --seeds 8  # the second set
    python benchmarks/bench_guidance.py --smoke                  # a few steps, for the tests
    python benchmarks/bench_guidance.py --report guidance.jsonl  # the report of a (stopped) run

Infinite scores: a net whose output equals the target on a crop (flat or black regions) scores an
infinite PSNR there. Every per-crop score of every loss is capped at --psnr-cap dB (default 60), so
those crops stay in the paired comparison, and the report says how many scores the cap touched.
Each unit's per-crop scores are appended to --record (JSON lines) as the unit finishes, so a stop
or a crash keeps what was measured; --report rebuilds the report from such a file. Flat crops
(HR standard deviation under --flat-sd levels) can decide a mean alone, a sub-level error there
being worth tens of dB, so when there are some the paired differences are printed again without
them. --lr-weight W also trains each AE's loss plus W x L1 of the bicubic-downscaled pair.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aesop_loss import AESOPLoss, AutoEncoder
from aesop_loss.metrics import MeanInterval, ae_psnr, lr_psnr, psnr
from aesop_loss.resize import imresize, make_lr
from aesop_loss.train import CropDataset, ImageSet, collate_crops, list_images, load_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from quickstart import ResidualSR  # noqa: E402  # the quickstart's net, exactly

BASE_METRICS = ("psnr_y", "lr_psnr")
UNIT_KEYS = ("loss", "fold", "seed", "crops", "crop_sd", "curve")  # what a unit holds besides its scores


def trained_with(loss: str) -> str | None:
    """The AE a loss of this benchmark trains with (``"AESOP demo + LR 1"`` -> ``"demo"``), else None."""
    return loss.removeprefix("AESOP ").split(" + ")[0] if loss.startswith("AESOP ") else None


def metrics_of(unit: dict[str, object]) -> list[str]:
    """The score names a recorded unit holds: psnr_y, lr_psnr and one ``ae_psnr@<reference AE>`` each."""
    return [k for k in unit if k not in UNIT_KEYS]


def held_out_crops(path: Path, size: int, count: int) -> list[Tensor]:
    """``count`` crops of ``size`` on a grid over the image (fewer when it is small), [0, 1] float."""
    img = load_image(path).float() / 255
    h, w = img.shape[-2:]
    size = min(size, h, w) // 4 * 4
    side = max(1, math.ceil(math.sqrt(count)))
    tops = sorted({round(i * (h - size) / max(1, side - 1)) for i in range(side)})
    lefts = sorted({round(i * (w - size) / max(1, side - 1)) for i in range(side)})
    crops = [img[None, :, t : t + size, left : left + size] for t in tops for left in lefts]
    return crops[:count]


class WithLR(nn.Module):
    """``criterion(sr, hr) + weight * L1(down(sr), down(hr))``: a companion term on what the LR image sees.

    ``down`` is MATLAB-bicubic downscaling (differentiable), the degradation that made the LR images.
    """

    def __init__(self, criterion: nn.Module, weight: float, scale: int = 4) -> None:
        super().__init__()
        self.criterion, self.weight, self.scale = criterion, weight, scale

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        lr_term = F.l1_loss(imresize(sr, 1 / self.scale), imresize(hr, 1 / self.scale))
        return self.criterion(sr, hr) + self.weight * lr_term


def train_one(
    criterion: nn.Module, batches: list[tuple[Tensor, Tensor]], seed: int, lr: float, every: int = 25
) -> tuple[nn.Module, list[float]]:
    """The quickstart's net from seed ``seed``, trained on ``batches`` with a cosine learning-rate decay.

    Returns the net and its training curve: the mean L1 distance of its output to the target (whatever
    the criterion) over each ``every`` steps, so that curves of different losses compare.
    """
    torch.manual_seed(seed)
    net = ResidualSR()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(batches), eta_min=lr / 20)
    curve, window = [], []
    for hr, lq in batches:
        sr, target = net(lq.float() / 255), hr.float() / 255
        loss = criterion(sr, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(float((sr.detach() - target).abs().mean()))
        if len(window) == every:
            curve.append(statistics.fmean(window))
            window = []
    return net.eval(), curve


@torch.no_grad()
def score(net: nn.Module, crops: list[Tensor], references: dict[str, AutoEncoder]) -> dict[str, list[float]]:
    """PSNR-Y, LR-PSNR and AE-PSNR under each reference AE of each held-out crop, uncapped."""
    values: dict[str, list[float]] = {m: [] for m in (*BASE_METRICS, *(f"ae_psnr@{r}" for r in references))}
    for hr in crops:
        sr = net(make_lr(hr, 4)).clamp(0, 1)
        values["psnr_y"].append(float(psnr(sr, hr, crop_border=4)))
        values["lr_psnr"].append(float(lr_psnr(sr, hr, scale=4)))
        for name, reference in references.items():
            values[f"ae_psnr@{name}"].append(float(ae_psnr(reference, sr, hr)))
    return values


def record_unit(path: Path, unit: dict[str, object]) -> None:
    """Append one unit's per-crop scores as a JSON line (an infinite score is written as null)."""
    clean = {
        k: ([None if x == math.inf else x for x in v] if k not in UNIT_KEYS else v) for k, v in unit.items()
    }
    with path.open("a") as fh:
        fh.write(json.dumps(clean) + "\n")


def read_units(path: Path) -> list[dict[str, object]]:
    """The units recorded in ``path`` (null scores read back as infinite); a torn last line is skipped."""
    units = []
    for line in path.read_text().splitlines():
        try:
            unit = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-write
            continue
        for m in metrics_of(unit):
            unit[m] = [math.inf if x is None else x for x in unit[m]]
        units.append(unit)
    return units


def report(units: list[dict[str, object]], cap: float, flat_sd: float = 2.0) -> None:
    """Per-loss mean +- sd over units and paired differences, every crop score capped at ``cap``.

    When the units record each held-out crop's spread (``crop_sd``), the paired differences are
    printed a second time over the textured crops only (HR standard deviation >= ``flat_sd`` levels):
    on a flat crop a sub-level error is worth tens of dB, so flat crops can decide a mean alone.
    """
    names = list(dict.fromkeys(str(u["loss"]) for u in units))
    metrics = metrics_of(units[0])
    by = {(u["loss"], u["fold"], u["seed"]): u for u in units}
    # the units every loss finished (a stopped run's last unit may lack some losses)
    keys = [
        k for k in dict.fromkeys((u["fold"], u["seed"]) for u in units) if all((n, *k) in by for n in names)
    ]

    def means(keep: Callable[[dict[str, object], int], bool]) -> dict[str, list[dict[str, float]]]:
        """Each loss's per-unit mean of each capped score over the crops ``keep`` keeps."""
        out: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for name in names:
            for key in keys:
                unit = by[(name, *key)]
                kept = [i for i in range(len(unit["psnr_y"])) if keep(unit, i)]  # type: ignore[arg-type]
                out[name].append({m: statistics.fmean(min(unit[m][i], cap) for i in kept) for m in metrics})  # type: ignore[index]
        return out

    def pairs(results: dict[str, list[dict[str, float]]]) -> None:
        # each AE loss minus L1, later AEs minus earlier
        combos = list(itertools.combinations(reversed(names), 2))
        width = max(len(f"{a} - {b}") for a, b in combos) + 2
        mwidth = max(len(m) for m in metrics) + 2  # a reference AE named by a long path widens it
        for a, b in combos:
            for m in metrics:
                d = MeanInterval.of([ra[m] - rb[m] for ra, rb in zip(results[a], results[b], strict=True)])
                verdict = "tie" if d.tie else (f"{a} higher" if d.mean > 0 else f"{b} higher")
                same = m.split("@")[-1] in (trained_with(a), trained_with(b))
                interval = f"{d.mean:+7.2f} [{d.low:+6.2f}, {d.high:+6.2f}]"
                label = f"{verdict}{' (same AE as trained with)' * same}"
                print(f"{a + ' - ' + b:<{width}}{m:<{mwidth}}{interval}  {label}")

    first = [by[(n, *k)] for n in names for k in keys]
    touched = {m: sum(x > cap for u in first for x in u[m]) for m in metrics}  # type: ignore[attr-defined]
    total = sum(len(u["psnr_y"]) for u in first)  # type: ignore[arg-type]
    print(f"# {len(keys)} paired units complete; every crop score capped at {cap:g} dB for every loss "
          f"(an exact match scores an infinite PSNR): the cap touched "
          + ", ".join(f"{touched[m]} {m}" for m in metrics) + f" of {total} crop scores each")  # fmt: skip
    for m in metrics:
        if m.startswith("ae_psnr@"):
            ref = m.split("@", 1)[1]
            same = [n for n in names if trained_with(n) == ref]
            what = f"the AE that {', '.join(same)} trained with: partly true by construction" if same else (
                "an AE no loss here trained with")  # fmt: skip
            print(f"# {m}: AE-PSNR under {ref!r}, {what}")

    def table(results: dict[str, list[dict[str, float]]]) -> None:
        print(f"\n{'loss':<22}" + "".join(f"{m + ' (dB)':>27}" for m in metrics))
        for name, rows in results.items():
            cells = []
            for m in metrics:
                values = [r[m] for r in rows]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):>13.2f} +- {sd:5.2f}")
            print(f"{name:<22}" + "".join(f"{c:>27}" for c in cells))

    results = means(lambda unit, i: True)
    table(results)
    print("\nper unit (fold, seed), psnr_y and lr_psnr (dB):")
    for i, (fold, seed) in enumerate(keys):
        cells = "".join(
            f"  {n} {results[n][i]['psnr_y']:6.2f} {results[n][i]['lr_psnr']:6.2f}" for n in names
        )
        print(f"  {fold:>3} {seed:>3}{cells}")
    print("\npaired difference (first - second), mean [95% interval] over units, dB")
    pairs(results)
    if "crop_sd" not in units[0]:
        return

    def textured(unit: dict[str, object], i: int) -> bool:
        return unit["crop_sd"][i] >= flat_sd  # type: ignore[index]

    units0 = [by[(names[0], *k)] for k in keys]
    kept = {sum(textured(u, i) for i in range(len(u["crop_sd"]))) for u in units0}  # type: ignore[arg-type]
    if kept == {len(u["crop_sd"]) for u in units0}:  # type: ignore[arg-type]
        print(
            f"\n# every held-out crop has an HR sd of {flat_sd:g} levels or more: no flat crop to leave out"
        )
        return
    if 0 in kept:
        print(f"\n# a unit holds no crop with an HR sd of {flat_sd:g} levels or more: no textured-only view")
        return
    print(f"\nthe same, textured crops only (HR sd >= {flat_sd:g} levels; {'-'.join(map(str, sorted(kept)))} "
          "per unit): flat crops, where a sub-level error is worth tens of dB, left out")  # fmt: skip
    results = means(textured)
    table(results)
    print()
    pairs(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae", action="append", help="an AE to train with (repeat; default: demo, demo-compact)")
    p.add_argument("--reference-ae", action="append", help="an AE of an AE-PSNR score, the same for every "
                   "loss (repeat; default: yardstick, trained independently, and demo)")  # fmt: skip
    p.add_argument("--data", type=Path, default=EXAMPLES / "images", help="training images")
    p.add_argument("--held-out", type=Path, help="held-out images (default: leave-one-out over --data)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per fold (paired: same for every loss)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (cosine decay to lr/20)")
    p.add_argument("--eval-size", type=int, default=128, help="held-out crop side")
    p.add_argument("--eval-crops", type=int, default=4, help="held-out crops per image")
    p.add_argument("--lr-weight", type=float, default=0.0, help="also train each AE's loss plus this "
                   "weight x L1 of the bicubic-downscaled pair (a companion term; default: off)")  # fmt: skip
    p.add_argument("--psnr-cap", type=float, default=60.0, help="cap of every crop score, dB (all losses)")
    p.add_argument("--flat-sd", type=float, default=2.0, help="also report over the crops whose HR sd "
                   "is at least this, in 8-bit levels (default 2: flat crops left out)")  # fmt: skip
    p.add_argument("--record", type=Path, help="JSON lines of per-crop scores, one per unit as it ends "
                   "(default: bench_guidance-<time>.jsonl in the current folder)")  # fmt: skip
    p.add_argument("--report", type=Path, help="print the report of a --record file and exit")
    p.add_argument("--smoke", action="store_true", help="2 folds, 1 seed, 3 steps, small crops (tests)")
    args = p.parse_args(argv)
    if not args.psnr_cap > 0 or math.isinf(args.psnr_cap):
        p.error(f"--psnr-cap {args.psnr_cap}: expected a finite number of dB > 0")
    for flag, value in (("--flat-sd", args.flat_sd), ("--lr-weight", args.lr_weight)):
        if not 0 <= value < math.inf:
            p.error(f"{flag} {value}: expected a finite number >= 0")
    if args.report is not None:
        units = read_units(args.report)
        if not units:
            p.error(f"--report {args.report}: holds no complete unit")
        report(units, args.psnr_cap, args.flat_sd)
        return 0
    if args.smoke:
        args.seeds, args.steps, args.crop, args.batch_size, args.eval_size, args.eval_crops = (
            1,
            3,
            32,
            2,
            64,
            2,
        )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sources = args.ae or ["demo", "demo-compact"]
    aes = {f"AESOP {s}": AutoEncoder.from_pretrained(s) for s in sources}
    references = {r: AutoEncoder.from_pretrained(r) for r in args.reference_ae or ["yardstick", "demo"]}
    losses: dict[str, nn.Module] = {"L1": nn.L1Loss(), **{k: AESOPLoss(ae) for k, ae in aes.items()}}
    if args.lr_weight:
        losses.update(
            {f"{k} + LR {args.lr_weight:g}": WithLR(AESOPLoss(ae), args.lr_weight) for k, ae in aes.items()}
        )
    files = list_images(args.data)
    if args.held_out is not None:
        folds = [(files, list_images(args.held_out))]
    else:
        folds = [([f for f in files if f != held], [held]) for held in files]
        if args.smoke:
            folds = folds[:2]
    print(f"# bench_guidance  {date.today()}  torch {torch.__version__}  {torch.get_num_threads()} threads")
    print(f"# {len(folds)} folds x {args.seeds} seeds = {len(folds) * args.seeds} paired units; "
          f"{args.steps} steps of batch {args.batch_size} x {args.crop}^2, cosine lr {args.lr:g}; "
          f"held-out: {args.eval_crops} crops of {args.eval_size}^2 per image; AE-PSNR under "
          f"{', '.join(map(repr, references))}")  # fmt: skip
    record = args.record or Path(f"bench_guidance-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    print(f"# per-crop scores go to {record} as each unit ends (--report {record} rebuilds this report)")
    units: list[dict[str, object]] = []
    t0 = time.perf_counter()
    for fold, (train_files, held) in enumerate(folds):
        crops, crop_names = [], []
        for path in held:
            for i, crop in enumerate(held_out_crops(path, args.eval_size, args.eval_crops)):
                crops.append(crop)
                crop_names.append(f"{path.name}#{i}")
        crop_sd = [round(float(c.std() * 255), 3) for c in crops]  # the HR spread, 8-bit levels
        for seed in range(args.seeds):
            data = CropDataset(ImageSet(train_files), crop=args.crop, scale=4, seed=seed,
                               crops_per_image=args.batch_size, ram_cache_bytes=1 << 30)  # fmt: skip
            batches = [collate_crops([data[g]]) for g in range(args.steps)]  # the same for every loss
            for name, criterion in losses.items():
                net, curve = train_one(criterion, batches, seed, args.lr)
                unit: dict[str, object] = {"loss": name, "fold": fold, "seed": seed, "crops": crop_names,
                                           "crop_sd": crop_sd, "curve": curve}  # fmt: skip
                unit.update(score(net, crops, references))
                record_unit(record, unit)
                units.append(unit)
            print(f"# fold {fold + 1}/{len(folds)} ({', '.join(p.name for p in held)}), seed {seed}: "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
    report(units, args.psnr_cap, args.flat_sd)
    print(f"\n# {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
