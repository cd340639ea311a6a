"""The AE pretraining loop behind ``python -m aesop_loss.pretrain`` (``train.cli`` documents the
command): ``train(cfg)`` claims the run folder, sets up DDP from ``RANK`` / ``WORLD_SIZE``, and runs
``PretrainRun`` steps with EMA export, periodic atomic saves, validation, exact resume, a clean stop
on Ctrl-C / SIGTERM or a non-finite loss, and the ``diagnose`` report at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .._compat import autocast, compile_module, grad_scaler, load_weights
from .._io import WriteError, atomic_path
from ..archs import AutoEncoder, RRDBNet, SRVGGNetCompact
from ..checkpoints import CheckpointError
from ..cli import CLIError
from ..diagnostics import Diagnosis, diagnose
from ..hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, prepare_push, push_folder_to_hub
from ..metrics import psnr
from ..resize import make_lr
from .budget import check_budget
from .config import PretrainConfig, amp_dtype
from .data import (
    DECODE_ERRORS,
    CropDataset,
    DataError,
    SampleStream,
    check_out_outside_data,
    collate_crops,
    load_image,
    prepare_data,
    prepare_validation,
)
from .ema import ema_update
from .progress import progress
from .runs import RunFolder, files_fingerprint, weights_fingerprint
from .signals import StopRequest, ignore_stop_signals

__all__ = ["Distributed", "PretrainRun", "load_teacher", "train"]

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
# What a pretraining run writes (atomically) in its folder: their stale temp files are cleared.
_RUN_FILES = {"": (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, METRICS_NAME), "checkpoints": ("last.pt",),
              ".decoded": ("*",)}  # fmt: skip


class _Pretrainer(nn.Module):
    """Wraps the AE so that one forward (what DDP and torch.compile see) returns both outputs."""

    def __init__(self, ae: AutoEncoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, hr: Tensor) -> tuple[Tensor, Tensor]:
        z = self.ae.encode(hr)
        return self.ae.decode(z), z


@dataclasses.dataclass
class Distributed:
    """This process's place in the run: its rank, the number of processes, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str | None) -> Distributed:
    """The process group of a ``torchrun`` launch (from ``RANK``/``WORLD_SIZE``), or one process.

    NCCL on CUDA, gloo on CPU; each process takes the GPU of its ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu.")
    if "RANK" not in os.environ or world == 1:
        return Distributed(device=torch.device(device or ("cuda" if want_cuda else "cpu")))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if want_cuda else "gloo")
    return Distributed(rank, world, torch.device("cuda", local) if want_cuda else torch.device("cpu"))


def _validation_set(paths: list[Path], scale: int, size: int = 512) -> list[tuple[Tensor, Tensor]]:
    """Centre crops (at most ``size``, multiples of ``scale``) and their MATLAB-bicubic LR."""
    out = []
    for path in paths:
        try:
            img = load_image(path)
        except DECODE_ERRORS as exc:
            warnings.warn(f"skipping validation image {path}: cannot be decoded ({exc}).", stacklevel=2)
            continue
        h, w = (min(size, d) // scale * scale for d in img.shape[-2:])
        if min(h, w) < 4 * scale:
            warnings.warn(f"skipping validation image {path}: {w}x{h} is too small.", stacklevel=2)
            continue
        top, left = (img.shape[-2] - h) // 2, (img.shape[-1] - w) // 2
        hr = img[:, top : top + h, left : left + w].double() / 255
        out.append((hr.float()[None], make_lr(hr, scale).float()[None]))
    return out


@torch.no_grad()
def _validate(ae: AutoEncoder, images: list[tuple[Tensor, Tensor]], device: torch.device) -> dict[str, float]:
    rec, bott = [], []
    for hr, lr in images:
        hr, lr = hr.to(device), lr.to(device)
        z = ae.encode(hr)
        rec.append(float(psnr(ae.decode(z), hr, crop_border=ae.scale)))
        bott.append(float(psnr(z, lr, crop_border=1)))
    return {"psnr_ae_hr": sum(rec) / len(rec), "psnr_bottleneck_lr": sum(bott) / len(bott)}


class PretrainRun:
    """The state of one pretraining run: the AE, its EMA, the optimiser, and how they are saved.

    Args:
        cfg: The run's settings (validated).
        env: This process's rank and device (default: a single process on ``cfg.device``).
    """

    def __init__(
        self, cfg: PretrainConfig, env: Distributed | None = None, *, teacher: AutoEncoder | None = None
    ) -> None:
        if env is None:  # one process, on cfg.device (default: CUDA when present)
            default = "cuda" if torch.cuda.is_available() else "cpu"
            env = Distributed(device=torch.device(cfg.device or default))
        self.cfg, self.env = cfg, env
        self.out = Path(cfg.out)
        self.ckpt = self.out / "checkpoints" / "last.pt"
        torch.manual_seed(cfg.seed)
        keys = ("num_feat", "num_block", "num_grow_ch", "scale", "encoder", "decoder")
        arch = {k: getattr(cfg, k) for k in keys}
        if cfg.decoder_init:
            generator = SRVGGNetCompact if cfg.decoder == "compact" else RRDBNet
            decoder = generator.from_pretrained(cfg.decoder_init)
            channels = decoder.config["num_in_ch"]
            if channels != 3:
                raise CLIError(
                    f"--decoder-init {cfg.decoder_init} is a generator of {channels}-channel images; "
                    "pretraining reads RGB photos, so pass an RGB generator."
                )
            if decoder.scale not in (2, 4):
                raise CLIError(
                    f"--decoder-init {cfg.decoder_init} is a x{decoder.scale} generator; an AE's decoder is "
                    f"x4 or x2, so pass a x{cfg.scale} generator."
                )
            if decoder.scale != cfg.scale:  # the other settings follow the generator; the scale is the task
                raise CLIError(
                    f"--decoder-init {cfg.decoder_init} is a x{decoder.scale} generator but --scale is "
                    f"{cfg.scale}; pass --scale {decoder.scale} to pretrain a x{decoder.scale} AE, or a "
                    f"x{cfg.scale} generator."
                )
            self.ae = AutoEncoder.from_decoder(
                decoder,
                encoder=cfg.encoder,  # type: ignore[arg-type]
                num_grow_ch=cfg.num_grow_ch,
            )
            if {k: self.ae.config[k] for k in arch} != arch:
                logger.info("architecture taken from --decoder-init: %s", self.ae.config)
                for key, value in self.ae.config.items():
                    if hasattr(cfg, key):
                        setattr(cfg, key, value)
        else:
            self.ae = AutoEncoder(**arch)
        self.teacher = teacher if teacher is not None else load_teacher(cfg)
        # what a resumed run must find unchanged, by content (a path can name other weights or files)
        self.fingerprints: dict[str, str | None] = {
            "teacher": weights_fingerprint(self.teacher) if self.teacher is not None else None
        }
        if self.teacher is not None:
            self.teacher.to(env.device)
            own = {k: v for k, v in self.ae.config.items() if k in _ENCODER_SHAPE}
            if own == {k: v for k, v in self.teacher.config.items() if k in _ENCODER_SHAPE}:
                self.ae.encoder.load_state_dict(self.teacher.encoder.state_dict())
                logger.info("the student starts from the teacher's encoder (same encoder shape)")
        cuda = env.device.type == "cuda"
        self.ae.to(env.device)
        if cuda:
            self.ae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            torch.backends.cudnn.benchmark = True
        self.ema = copy.deepcopy(self.ae).requires_grad_(False).eval()
        # built once: the EMA update runs every step over ~900 tensors (load_state_dict copies in place)
        self._params: list[Tensor] = [p.detach() for p in self.ae.parameters()]
        self._ema_params: list[Tensor] = list(self.ema.parameters())
        self.optimizer = torch.optim.Adam(self.ae.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
        self.amp_dtype = amp_dtype(cfg.amp)
        self.scaler = grad_scaler(env.device.type, enabled=cfg.amp == "fp16")
        self.step = 0
        self.saved_step: int | None = None
        self.best: dict[str, float] = {}
        self.diagnosis: Diagnosis | None = None
        self._decoder_frozen: bool | None = None
        self.model: nn.Module = _Pretrainer(self.ae)

    # -- freezing and wrapping ----------------------------------------------------------------------
    def _wrap(self, step: int) -> nn.Module:
        frozen = self.cfg.freeze_decoder_steps < 0 or step < self.cfg.freeze_decoder_steps
        if frozen == self._decoder_frozen:
            return self.model
        self._decoder_frozen = frozen
        self.ae.decoder.requires_grad_(not frozen)
        if frozen:
            logger.info(
                "decoder frozen%s",
                "" if self.cfg.freeze_decoder_steps < 0 else f" until step {self.cfg.freeze_decoder_steps}",
            )
        model: nn.Module = _Pretrainer(self.ae)
        if self.env.world > 1:
            model = DistributedDataParallel(
                model, device_ids=[self.env.device] if self.env.device.type == "cuda" else None
            )
        if self.cfg.compile:
            model = compile_module(model)
        self.model = model
        return model

    # -- persistence --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.ae.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg.resume_signature(),
            "fingerprints": self.fingerprints,
            "rng": torch.get_rng_state(),
        }

    def save(self, metrics: dict[str, float] | None = None) -> None:
        """Write the checkpoint, then the model folder, each file atomically (rank 0 only).

        Raises:
            CLIError: The weights are no longer finite, or a write failed (disk full, read-only);
                the previous checkpoint is intact either way.
        """
        if not self.env.main:
            return
        finite = torch.stack([torch.isfinite(w).all() for w in self._params + self._ema_params])
        if not bool(finite.all()):  # one host sync per save
            raise CLIError(
                f"the weights became non-finite (NaN/Inf) at step {self.step}, so nothing was saved; "
                f"{self.intact()} Lower --lr, or train with --amp none.",
                exit_code=1,
            )
        try:
            with atomic_path(self.ckpt) as tmp:
                torch.save(self.state(), tmp)
        except WriteError as exc:
            message = f"{exc.strerror} while saving step {self.step}; {self.intact()}"
            raise CLIError(message, exit_code=1) from exc
        self.saved_step = self.step
        try:
            self.ema.is_pretrained = True
            self.ema.save_pretrained(
                self.out,
                training_data=self.cfg.data,
                training_steps=self.step,
                command=self.cfg.command or None,
                metrics=metrics or self.best,
                diagnosis=self.diagnosis.table() if self.diagnosis else None,
                license="other",
                description=(
                    "AESOP autoencoder pretrained with aesop-loss (EMA weights). Use it as AESOPLoss(ae=...)."
                ),
            )
        except WriteError as exc:
            message = (
                f"{exc.strerror} while writing the model files of step {self.step}; its checkpoint "
                f"{self.ckpt} was written, so --resume continues from it (the model files may still "
                "hold an earlier save)."
            )
            raise CLIError(message, exit_code=1) from exc

    def intact(self) -> str:
        """Which checkpoint a failure left in place, for error messages."""
        if self.saved_step is None:
            return "no checkpoint had been written yet."
        return f"the checkpoint of step {self.saved_step} ({self.ckpt}) is intact."

    def load(self) -> None:
        if not self.ckpt.is_file():
            raise CLIError(f"--resume: no checkpoint at {self.ckpt}; start without --resume.")
        try:
            state = load_weights(self.ckpt, map_location=self.env.device)
        except Exception as exc:
            raise CLIError(
                f"--resume: {self.ckpt} is damaged or cut short ({exc.__class__.__name__}), so the run "
                "cannot continue from it; the model files beside it hold the last good save. To start "
                f"over in this folder, delete {self.ckpt}; or choose another --out."
            ) from exc
        keys = ("step", "model", "ema", "optimizer", "scaler", "rng", "config")
        missing = [k for k in keys if not isinstance(state, dict) or k not in state]
        step = state.get("step") if isinstance(state, dict) else None
        if missing or not isinstance(state["config"], dict) or type(step) is not int or step < 0:
            problem = (
                f"no {', '.join(missing)}" if missing
                else "its config is not a table of settings" if not isinstance(state["config"], dict)
                else f"step {step!r} is not a count of steps"
            )  # fmt: skip
            raise CLIError(
                f"--resume: {self.ckpt} is not a pretraining checkpoint ({problem}); the model files "
                f"beside it hold the last good save. To start over in this folder, delete {self.ckpt}; "
                "or choose another --out."
            )
        diff = self.cfg.resume_mismatches(state["config"])
        if diff:
            raise CLIError(f"--resume: {self.out} is a run with another configuration: {', '.join(diff)}.")
        saved = state.get("fingerprints") or {}  # none in checkpoints from before they were kept
        changed = [k for k, v in self.fingerprints.items() if k in saved and saved[k] != v]
        if changed:
            what = {
                "teacher": "the --teacher weights",
                "data": "the files of --data (added, removed or rewritten)",
            }
            raise CLIError(
                f"--resume: {' and '.join(what[k] for k in changed)} changed since {self.ckpt} was saved, so "
                "the run would not continue as it began; restore them, or start a new run in another --out."
            )
        try:
            self.ae.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            detail = str(exc).strip().splitlines()[-1].strip()[:200]
            raise CLIError(
                f"--resume: {self.ckpt} does not fit this run ({detail}); delete it to start over in this "
                "folder, or choose another --out."
            ) from None
        torch.set_rng_state(state["rng"].cpu())
        self.step = self.saved_step = step
        logger.info("resumed %s at step %d", self.out, self.step)

    def ema_decay(self, step: int) -> float:
        """The EMA decay of the update after ``step`` finished steps: ``--ema``, or with the warm-up
        (default) ``min(--ema, (1 + step) / (10 + step))``, so the first updates move the average
        fast and a short run exports trained weights rather than its initialisation."""
        if not self.cfg.ema_warmup:
            return self.cfg.ema
        return min(self.cfg.ema, (1 + step) / (10 + step))

    # -- one step -----------------------------------------------------------------------------------
    def _perturbed(self, hr: Tensor) -> Tensor:
        """``hr`` plus an SR-like error of amplitude up to ``--distill-noise`` per crop: a random
        low-frequency change (LR-sized noise, bicubic-upscaled) and white noise, half each. Seeded by
        the step and the rank, so a resumed run draws the same perturbations."""
        n, c, h, w = hr.shape
        s, dev = self.cfg.scale, hr.device
        # drawn on the run's device (no host-to-device copy on the step's path)
        gen = torch.Generator(device=dev).manual_seed(
            (self.cfg.seed * 1_000_003 + self.step) * self.env.world + self.env.rank
        )
        amp = torch.rand(n, 1, 1, 1, generator=gen, device=dev) * self.cfg.distill_noise
        noise = torch.randn(n, c, h // s, w // s, generator=gen, device=dev)
        low = F.interpolate(noise, size=(h, w), mode="bicubic")
        delta = amp * (low + torch.randn(n, c, h, w, generator=gen, device=dev)) / 2
        return hr + delta.to(hr.dtype)

    def train_step(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model = self._wrap(self.step)
        dev = self.env.device
        fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
        hr = hr.to(dev, non_blocking=True).to(memory_format=fmt).float().div_(255)
        lr = lr.to(dev, non_blocking=True).to(memory_format=fmt).float().div_(255)
        perturb = self.teacher is not None and self.cfg.distill_noise > 0
        x = torch.cat((hr, self._perturbed(hr))) if perturb else hr  # one pass over both
        with autocast(dev.type, self.amp_dtype):
            recon, z = model(x)
        n = hr.shape[0]
        rec = F.l1_loss(recon[:n].float(), hr)
        bott = F.l1_loss(z[:n].float(), lr)
        loss = rec + self.cfg.bottleneck_weight * bott
        if self.teacher is not None:  # distillation: the teacher's projection of the same crops
            with torch.no_grad(), autocast(dev.type, self.amp_dtype):
                target = self.teacher(x).float()
            student = recon.float()
            distill = F.l1_loss(student[:n], target[:n])
            if perturb:  # the response to the perturbation, scale-free: how the student's gradients point
                moved = (student[n:] - student[:n]) - (target[n:] - target[:n])
                distill = distill + moved.abs().mean() / self.cfg.distill_noise
            loss = loss + self.cfg.distill_weight * distill
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self._ema_params, self._params, self.ema_decay(self.step))
        self.step += 1
        return rec.detach(), bott.detach(), loss.detach()


# An AE's encoder is determined by these settings: a student that shares them with its teacher
# starts from the teacher's encoder.
_ENCODER_SHAPE = ("num_in_ch", "num_feat", "num_grow_ch", "scale", "encoder")


def load_teacher(cfg: PretrainConfig) -> AutoEncoder | None:
    """The frozen teacher AE that ``--teacher`` names (None without one), checked against the run.

    Raises:
        CLIError: The teacher cannot be read, or its scale differs from ``--scale``.
    """
    if not cfg.teacher:
        return None
    try:
        with warnings.catch_warnings():  # distilling the bundled demo is a documented use
            warnings.filterwarnings("ignore", message="Loaded the bundled demo AE")
            teacher = AutoEncoder.from_pretrained(cfg.teacher)
    except CheckpointError as exc:
        raise CLIError(f"--teacher: {exc}") from None
    if teacher.scale != cfg.scale:
        raise CLIError(f"--teacher {cfg.teacher} is a x{teacher.scale} AE; this run is --scale {cfg.scale}.")
    return teacher.requires_grad_(False).eval()


def train(cfg: PretrainConfig) -> Path:
    """Run (or resume) AE pretraining and return the output model folder.

    Args:
        cfg: The run's settings.

    Returns:
        ``cfg.out``, a model folder holding the EMA weights.

    Raises:
        CLIError: Bad settings (exit status 2), data errors, ``cfg.out`` not usable (a user's
            folder, another run's, or one in use), a resume folder of another configuration; a
            non-finite loss or a failed write (exit status 1, the last checkpoint intact).
        KeyboardInterrupt: Ctrl-C or SIGTERM stopped the run (after saving it, unless a second
            Ctrl-C aborted it mid-step).
    """
    cfg.validate()
    try:
        check_out_outside_data(cfg.out, cfg.data)
    except DataError as exc:
        raise CLIError(str(exc)) from None
    teacher = load_teacher(cfg)  # before the folder is claimed: a bad --teacher leaves nothing behind
    if cfg.push_to_hub and int(os.environ.get("RANK", "0")) == 0:
        try:
            prepare_push(cfg.push_to_hub)  # a bad id or no Hub fails now, not after the run
        except CheckpointError as exc:
            raise CLIError(str(exc)) from None
    main_process = int(os.environ.get("RANK", "0")) == 0
    check_budget(cfg, _run_device(cfg), teacher=teacher, force=cfg.force, report=main_process)  # too big
    keys = ("step", "model", "ema", "optimizer", "config")  # of a checkpoint written by this loop
    folder = RunFolder(cfg.out, tool="pretrain", writes=_RUN_FILES, legacy="checkpoints/last.pt",
                       legacy_keys=keys, resume=cfg.resume)  # fmt: skip
    if main_process:  # rank 0 writes the folder, so it holds the lock
        folder.claim()
        for caution in cfg.cautions():
            logger.warning("warning: %s", caution)
    try:
        env = _setup_distributed(cfg.device)
        cfg.world_size = env.world
        try:
            return _train(cfg, env, folder, teacher)
        finally:
            if env.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
    finally:
        folder.release()


def _run_device(cfg: PretrainConfig) -> torch.device:
    """The device this process will train on (``--device``, else its GPU under torchrun, else CUDA or CPU)."""
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _append(folder: RunFolder, record: dict[str, Any], step: int, run: PretrainRun) -> None:
    try:
        with folder.open_log(METRICS_NAME) as fh:  # never through a link, never into a shared file
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise CLIError(
            f"cannot write {folder.path / METRICS_NAME} at step {step} ({exc.strerror or exc}); "
            f"{run.intact()}",
            exit_code=1,
        ) from exc


def _save(run: PretrainRun, folder: RunFolder) -> None:
    """Save, after checking that no link appeared in the run folder since it was claimed (rank 0)."""
    if run.env.main:
        folder.verify()
    run.save()


def _last_line(exc: BaseException) -> str:
    """An error's own message: a DataLoader worker's arrives as the last line of its traceback,
    prefixed with the exception's qualified name (``aesop_loss.train.data.DataError: ...``)."""
    text = str(exc).strip()
    line = text.splitlines()[-1] if text else type(exc).__name__
    return re.sub(r"^[\w.]*(Error|Exception): ", "", line)


def _shut_down(batches: Any) -> None:
    """Stop a DataLoader iterator's workers now, in order: left to the garbage collector after an
    error, they would be killed by the exit clean-up instead, which torch reports as a crash."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own, 2.1 to 2.13
    if shutdown is not None:
        shutdown()


def _first_nonfinite(first: Tensor, step: int, loss: Tensor) -> Tensor:
    """Update, without a host sync, the first step whose loss was NaN or Inf (-1: none yet)."""
    bad = ~torch.isfinite(loss)
    return torch.where(bad & (first < 0), torch.full_like(first, step), first)


def _stop_if_nonfinite(first: Tensor, run: PretrainRun) -> None:
    step = int(first.item())
    if step >= 0:
        raise CLIError(
            f"the loss became non-finite (NaN/Inf) at step {step}; the run stopped without saving "
            f"and {run.intact()} Lower --lr, or train with --amp none.",
            exit_code=1,
        )


def _train(cfg: PretrainConfig, env: Distributed, folder: RunFolder, teacher: AutoEncoder | None) -> Path:
    if not env.main:
        logging.getLogger("aesop_loss").setLevel(logging.WARNING)
    try:
        images = prepare_data(cfg.data, scale=cfg.scale, data_dir=cfg.data_dir)
        val_paths = prepare_validation(cfg.val, cfg.data, data_dir=cfg.data_dir)
    except DataError as exc:
        raise CLIError(str(exc)) from exc
    out = Path(cfg.out)
    run = PretrainRun(cfg, env, teacher=teacher)
    run.fingerprints["data"] = files_fingerprint([*images.hr, *(images.lr or [])])
    if cfg.resume:
        run.load()
    elif (out / "checkpoints" / "last.pt").exists():
        raise CLIError(f"{out} already holds a run; pass --resume to continue it, or choose another --out.")
    if run.step >= cfg.steps:
        logger.info("nothing to do: step %d >= --steps %d", run.step, cfg.steps)
        return out
    if env.main:
        folder.trim_log(METRICS_NAME, run.step)

    cpi = math.gcd(cfg.crops_per_image, cfg.batch_size)
    per_step = cfg.batch_size // cpi  # dataset items per process per step
    try:
        dataset = CropDataset(
            images,
            crop=cfg.crop,
            scale=cfg.scale,
            seed=cfg.seed,
            crops_per_image=cpi,
            color_jitter=cfg.color_jitter,
            cache_dir=Path(cfg.data_dir or out) / ".decoded",
            ram_cache_bytes=None if cfg.ram_cache_mb is None else cfg.ram_cache_mb << 20,
            disk_cache_bytes=None if cfg.disk_cache_mb is None else cfg.disk_cache_mb << 20,
        )
    except DataError as exc:
        raise CLIError(str(exc)) from exc
    loader = DataLoader(
        dataset,
        batch_size=per_step,
        sampler=SampleStream(start=run.step * per_step * env.world, rank=env.rank, world=env.world),
        num_workers=cfg.workers,
        collate_fn=collate_crops,
        pin_memory=env.device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=ignore_stop_signals if cfg.workers > 0 else None,
        prefetch_factor=4 if cfg.workers > 0 else None,
    )
    val_set = _validation_set(val_paths, cfg.scale) if env.main else []
    bar = progress(total=cfg.steps, initial=run.step, desc="pretrain", unit="step", disable=not env.main,
                   dynamic_ncols=True)  # fmt: skip
    sums = torch.zeros(3, device=env.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=env.device)
    window, t0 = 0, time.perf_counter()
    batches = iter(loader)
    stopped = False
    try:
        with StopRequest() as stop:
            while run.step < cfg.steps:
                try:
                    hr, lr = next(batches)
                except Exception as exc:  # a worker's error arrives as its last line, after a traceback
                    raise CLIError(f"reading the data: {_last_line(exc)}") from None
                rec, bott, loss = run.train_step(hr, lr)
                first_bad = _first_nonfinite(first_bad, run.step, loss)
                sums += torch.stack((rec, bott, loss))
                window += 1
                bar.update(1)
                saved = run.step % cfg.save_every == 0 or run.step == cfg.steps
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    _stop_if_nonfinite(first_bad, run)  # syncs anyway, below
                    rec_m, bott_m, loss_m = (sums / window).tolist()  # the only host sync per log window
                    dt = time.perf_counter() - t0
                    imgs = window * cfg.batch_size * env.world / dt
                    bar.set_postfix(rec=f"{rec_m:.4f}", bott=f"{bott_m:.4f}", img_s=f"{imgs:.1f}")
                    record = {
                        "step": run.step,
                        "loss_rec": rec_m,
                        "loss_bottleneck": bott_m,
                        **(
                            {
                                "loss_distill": (loss_m - rec_m - cfg.bottleneck_weight * bott_m)
                                / cfg.distill_weight
                            }
                            if teacher is not None and cfg.distill_weight > 0
                            else {}
                        ),
                        "steps_per_s": window / dt,
                        "images_per_s": imgs,
                    }
                    if env.main:
                        _append(folder, record, run.step, run)
                    sums.zero_()
                    window, t0 = 0, time.perf_counter()
                if val_set and (run.step % cfg.val_every == 0 or run.step == cfg.steps):
                    run.best = _validate(run.ema, val_set, env.device)
                    logger.info(
                        "step %d: %s", run.step, ", ".join(f"{k} {v:.2f} dB" for k, v in run.best.items())
                    )
                    _append(folder, {"step": run.step, **run.best}, run.step, run)
                if saved:
                    _stop_if_nonfinite(first_bad, run)
                    if run.step == cfg.steps and env.main:  # the last save: is the AE fit for AESOP?
                        bar.close()  # the report starts on a line of its own
                        photos = [hr[0] for hr, _ in val_set] or None  # default: the bundled photos
                        run.diagnosis = diagnose(run.ema, photos)
                        logger.info(
                            "fitness for AESOP (python -m aesop_loss.diagnose):\n%s", run.diagnosis.table()
                        )
                    _save(run, folder)
                if run.step < cfg.steps and stop.agreed(run.step, world=env.world, device=env.device):
                    stopped = True
                    if not saved:
                        _stop_if_nonfinite(first_bad, run)
                        _save(run, folder)
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: mid-step, so a checkpoint now would not resume exactly
        bar.close()
        logger.warning(
            "aborted without saving (mid-step, it would not resume exactly); last checkpoint: %s", run.ckpt
        )
        raise
    finally:
        bar.close()
        _shut_down(batches)
    if stopped:
        logger.info("stopped at step %d; saved %s (continue with --resume)", run.step, run.ckpt)
        raise KeyboardInterrupt
    if cfg.push_to_hub and env.main:
        logger.info("pushed: %s", push_folder_to_hub(out, cfg.push_to_hub))
    return out
