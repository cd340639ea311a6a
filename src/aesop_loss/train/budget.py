"""What a pretraining configuration will cost, known before the run allocates anything on its word.

``estimate(cfg)`` measures, on a small crop, the bytes autograd keeps for backward per HR pixel
(device-independent: the same tensors are kept on a GPU) and the time of small steps at two sizes on
the run's device (a fixed cost and a cost per pixel), and scales both to the configured batch and
crop. Together with the weights, their
gradients, Adam's two moments and the EMA copy, that is the step's memory; ``check_budget`` refuses a
configuration whose memory exceeds what the machine has free (unless ``--force``), and says, on a
CPU, what the run will cost and which preset runs quickly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..archs import AutoEncoder
from ..cli import CLIError
from .config import PretrainConfig

__all__ = ["Estimate", "available_bytes", "check_budget", "estimate"]

logger = logging.getLogger(__name__)

_PROBE_CROP = 64  # HR crop of the measuring step: small enough for any machine
_ARCH_KEYS = ("num_feat", "num_block", "num_grow_ch", "scale", "encoder", "decoder")  # AutoEncoder's
_SLOW_CPU_RUN_S = 2 * 3600  # a CPU run expected to take longer than this gets the one-line notice


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A pretraining step's expected cost.

    Attributes:
        step_bytes: Peak memory of one step: activations kept for backward (scaled from the probe),
            times an overhead factor, plus weights, gradients, Adam state and the EMA (and a teacher).
        step_seconds: Time of one step on the run's device (scaled from a probe step by pixels).
        run_seconds: ``step_seconds`` times the steps left.
    """

    step_bytes: float
    step_seconds: float
    run_seconds: float


def available_bytes(device: torch.device) -> int | None:
    """Memory free for the run: ``MemAvailable`` on Linux (CPU), free device memory on CUDA, else None."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _saved_bytes(ae: AutoEncoder, crop: int) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one training forward at ``crop``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.rand(1, ae.num_in_ch, crop, crop)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = ae.encode(x)
        loss = F.l1_loss(ae.decode(z), x) + z.abs().mean()
    del loss
    return sum(storages.values())


def _probe_seconds(ae: AutoEncoder, device: torch.device, crop: int) -> float:
    """Seconds of one forward+backward at batch 1 x ``crop``^2 on ``device`` (after a warm-up)."""
    ae = ae.to(device)
    x = torch.rand(1, ae.num_in_ch, crop, crop, device=device)
    best = float("inf")
    for _ in range(2):  # the first pays one-time costs (kernels, allocator)
        t0 = time.perf_counter()
        F.l1_loss(ae(x), x).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    ae.zero_grad(set_to_none=True)
    return best


def estimate(cfg: PretrainConfig, device: torch.device, *, teacher: AutoEncoder | None = None) -> Estimate:
    """Expected memory and time of ``cfg``'s steps on ``device``, from one small measured step.

    Args:
        cfg: The run's (validated) settings.
        device: Where the run trains.
        teacher: The ``--teacher`` AE, if any (its weights and forward count too).

    Examples:
        >>> cfg = PretrainConfig(data="x", out=Path("r"), num_feat=16, num_block=1, num_grow_ch=8, crop=64,
        ...                      batch_size=2, steps=10)
        >>> e = estimate(cfg, torch.device("cpu"))
        >>> e.step_bytes > 0, e.run_seconds == 10 * e.step_seconds
        (True, True)
    """
    arch = {k: getattr(cfg, k) for k in _ARCH_KEYS}
    with torch.random.fork_rng(devices=[]):  # the run's seeded initialisation stays untouched
        ae = AutoEncoder(**arch)
    probe = min(_PROBE_CROP, cfg.crop) // cfg.scale * cfg.scale
    small = max(probe // 2 // cfg.scale * cfg.scale, cfg.scale * 4)
    pixels = cfg.batch_size * cfg.crop**2 / probe**2
    passes = 2 if cfg.teacher and cfg.distill_noise > 0 else 1  # clean and perturbed crops
    # what autograd keeps already bounds the peak from above (paper AE at 2 x 128^2 on a CPU:
    # estimate 1.35 GiB, measured peak RSS growth about 1.0 GiB), so no margin is added
    activations = _saved_bytes(ae, probe) * pixels * passes
    states = _state_bytes(cfg, teacher)
    inputs = 4 * cfg.batch_size * 3 * cfg.crop**2 * (1 + 1 / cfg.scale**2) * passes
    # time = fixed cost + cost per pixel, from two probe sizes (one small step is mostly fixed cost)
    t_big = _probe_seconds(ae, device, probe)
    t_small = _probe_seconds(ae, device, small) if small < probe else 0.0
    per_pixel = (
        (t_big - t_small) / (probe**2 - small**2) if small < probe and t_big > t_small else t_big / probe**2
    )
    fixed = max(t_big - per_pixel * probe**2, 0.0)
    step_seconds = (fixed + per_pixel * cfg.batch_size * cfg.crop**2) * passes
    steps_left = max(cfg.steps, 0)
    return Estimate(activations + states + inputs, step_seconds, step_seconds * steps_left)


def _state_bytes(cfg: PretrainConfig, teacher: AutoEncoder | None) -> int:
    """Weights, gradients, Adam's two moments and the EMA (fp32), plus a teacher's weights: from the
    architecture alone (built on the ``meta`` device, which allocates nothing)."""
    arch = {
        k: getattr(cfg, k) for k in ("num_feat", "num_block", "num_grow_ch", "scale", "encoder", "decoder")
    }
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoEncoder(**arch).parameters())
    teacher_params = sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    return 5 * 4 * n_params + 4 * teacher_params


def _human_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def check_budget(
    cfg: PretrainConfig,
    device: torch.device,
    *,
    teacher: AutoEncoder | None = None,
    force: bool = False,
    report: bool = True,
) -> Estimate:
    """Refuse a configuration that cannot fit the machine; say what a slow CPU run will cost.

    Args:
        cfg: The run's (validated) settings.
        device: Where the run trains.
        teacher: The ``--teacher`` AE, if any.
        force: Run even when the step does not fit.
        report: Log the estimate (one process of a DDP run does).

    Returns:
        The estimate.

    Raises:
        CLIError: The step needs more memory than is available (without ``force``).
    """
    free = available_bytes(device)
    gib = 2**30
    where = "GPU" if device.type == "cuda" else "RAM"
    states = _state_bytes(cfg, teacher)  # before anything is allocated: the measuring step builds the AE
    if free is not None and states > free and not force:
        raise CLIError(
            f"this AE's weights, gradients, Adam state and EMA alone need about {states / gib:.1f} GiB but "
            f"{free / gib:.1f} GiB of {where} is free; lower --num-feat, --num-block or --num-grow-ch, try "
            "--preset tiny or --preset demo, or pass --force to run anyway."
        )
    est = estimate(cfg, device, teacher=teacher)
    if free is not None and est.step_bytes > free and not force:
        raise CLIError(
            f"this configuration needs about {est.step_bytes / gib:.1f} GiB per step (batch "
            f"{cfg.batch_size} x {cfg.crop}^2) but {free / gib:.1f} GiB of {where} is free; lower "
            "--batch-size or --crop, try --preset tiny or --preset demo, or pass --force to run anyway."
        )
    message = (
        f"estimated cost: {est.step_bytes / gib:.2f} GiB of {where} and {est.step_seconds:.2f} s per step; "
        f"{cfg.steps:,} steps: about {_human_time(est.run_seconds)}"
    )
    message += (
        " (from two probe steps: on a machine busy with other work it has been off by up to 4x either "
        "way; the progress line re-estimates the time left from the steps measured)"
    )
    if device.type == "cpu" and est.run_seconds > _SLOW_CPU_RUN_S:
        message += (
            " on this CPU. For a quick run: --preset tiny (10 s to 1 min) or --preset demo (the bundled "
            "demo AE's recipe); the paper's settings are meant for GPUs."
        )
    if report:
        logger.info(message)
    return est
