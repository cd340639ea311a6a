"""The settings of a pretraining run: one dataclass whose fields are the CLI flags, their checks,
and the settings a ``--resume`` must match.

Each field's metadata says its flag group, help, allowed range or values, and whether a resumed run
must have the same value. ``python -m aesop_loss.pretrain``'s parser is built from these fields, and
``PretrainConfig.validate`` checks them, so a flag, its default, its check and its resume rule are
written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._compat import autocast, grad_scaler
from ..cli import CLIError, add_version

__all__ = ["AMP_DTYPES", "PRESETS", "PretrainConfig", "amp_dtype", "check_amp", "check_device", "data_key"]

# --amp values and the autocast dtype each one means (None: no autocast).
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# --preset NAME: settings a run starts from; a flag given on the command line wins over its preset value.
PRESETS: dict[str, dict[str, Any]] = {
    # try the tool: a tiny AE in about 10 s on a 2-core CPU (docs/pretraining.md; its colour floor is
    # too low to train with). Both CPU presets use the fixed bicubic encoder: a learned
    # one this narrow (num_feat / scale**2 < 3 channels) drops a colour direction (PretrainConfig.cautions)
    "tiny": {"num_feat": 16, "num_block": 1, "num_grow_ch": 8, "encoder": "bicubic", "crop": 64,
             "batch_size": 4, "steps": 300, "lr": 1e-3, "ema": 0.99, "color_jitter": 0.25, "save_every": 100,
             "val_every": 100, "log_every": 20},
    # the bundled demo AE's recipe (its model card): 8,000 steps, about 15 minutes on a 2-core CPU
    "demo": {"num_feat": 32, "num_block": 2, "num_grow_ch": 16, "encoder": "bicubic", "crop": 48,
             "batch_size": 8, "steps": 8000, "lr": 5e-4, "ema": 0.995, "color_jitter": 0.25,
             "save_every": 500, "val_every": 1000, "log_every": 100},
    "paper": {},  # the defaults: the paper's recipe, for GPUs
}  # fmt: skip
"""The settings of each ``--preset``."""

GROUPS = ("data", "model (mirrors AutoEncoder's constructor)", "optimisation (defaults: the paper)",
          "hardware", "output")  # fmt: skip


def amp_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype an ``--amp`` value names (``None`` for ``"none"``).

    Examples:
        >>> amp_dtype("bf16"), amp_dtype("none")
        (torch.bfloat16, None)
    """
    if name not in AMP_DTYPES:
        raise CLIError(f"--amp {name!r}: expected one of {', '.join(AMP_DTYPES)}.")
    return AMP_DTYPES[name]


def _opt(
    default: Any,
    help: str,
    group: int,
    *,
    resume: bool = False,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: tuple[Any, ...] | None = None,
    flag: bool = True,
    metavar: str | None = None,
    absent: Any = dataclasses.MISSING,
) -> Any:
    """A field with its flag's metadata. ``low``/``high`` bound inclusively, ``above``/``below``
    exclusively; ``resume``: a resumed run must have the same value; ``absent``: the value a
    checkpoint from before the setting existed had (default: the field's default); ``flag=False``:
    not a flag."""
    meta = {"help": help, "group": group, "resume": resume, "low": low, "high": high, "above": above,
            "below": below, "choices": choices, "flag": flag, "metavar": metavar}  # fmt: skip
    if absent is not dataclasses.MISSING:
        meta["absent"] = absent
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _required(help: str, group: int, *, resume: bool = False) -> dict[str, Any]:
    return {"help": help, "group": group, "resume": resume, "required": True}


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclasses.dataclass
class PretrainConfig:
    """Everything a pretraining run needs; each field is the ``--flag`` of the same name.

    Examples:
        >>> cfg = PretrainConfig(data="DIV2K", out=Path("runs/ae"), lr=float("nan"))
        >>> try:
        ...     cfg.validate()
        ... except CLIError as exc:
        ...     print(exc)
        --lr nan: expected a finite number > 0.0.
    """

    data: str = dataclasses.field(
        metadata=_required("DIV2K, Flickr2K, DF2K, a folder of HR images, or HR_DIR:LR_DIR", 0, resume=True)
    )
    out: Path = dataclasses.field(
        metadata=_required("run folder; a loadable model folder after the first save", 4)
    )
    preset: str | None = _opt(
        None, "start from named settings: tiny (10 s to 1 min on a CPU, to try the tool), demo (the bundled "
        "demo AE's recipe, 13-25 min on a CPU) or paper (the defaults, for GPUs); flags you give win",
        1, choices=tuple(PRESETS),
    )  # fmt: skip
    data_dir: str | None = _opt(None, "download/cache folder (default ~/.cache/aesop-loss/datasets)", 0)
    val: str | None = _opt(
        None, "folder of validation HR images, or 'none' (default: 10 DIV2K val images for named datasets)", 0
    )
    crop: int = _opt(256, "HR crop size", 0, resume=True, low=1, high=8192)
    workers: int = _opt(_default_workers, "DataLoader workers", 0, low=0, high=256)
    ram_cache_mb: int | None = _opt(
        None, "decoded images kept in RAM per process, in MiB, shared by its workers (default: an eighth "
        "of the free memory, at most 2048; 0: decode every read)", 0, low=0, high=1 << 24,
    )  # fmt: skip
    disk_cache_mb: int | None = _opt(
        None, "cap in MiB of the on-disk cache of decoded images (in --data-dir or --out, .decoded/), shared "
        "by workers, processes and later runs (default: used only when the whole set fits 200 MiB "
        "decoded; 0: off)", 0, low=0, high=1 << 24,
    )  # fmt: skip
    crops_per_image: int = _opt(4, "crops taken per image read", 0, resume=True, low=1, high=1024)
    color_jitter: float = _opt(
        0.0, "random per-channel gain 1 +- this per crop (colour augmentation for small sets; default off)",
        0, resume=True, low=0.0, below=1.0,
    )  # fmt: skip
    num_feat: int = _opt(64, "trunk width", 1, resume=True, low=1, high=1024)
    num_block: int = _opt(
        23, "decoder depth: RRDB blocks (rrdb) or hidden convs (compact)", 1, resume=True, low=0, high=256
    )
    num_grow_ch: int = _opt(32, "growth channels of the dense blocks", 1, resume=True, low=1, high=1024)
    scale: int = _opt(4, "bottleneck downscaling factor", 1, resume=True, choices=(2, 4))
    encoder: str = _opt("learned", "the paper's learned encoder, or fixed bicubic", 1, resume=True,
                        choices=("learned", "bicubic"))  # fmt: skip
    decoder: str = _opt(
        "rrdb", "the paper's RRDBNet decoder, or SRVGGNetCompact (--num-block hidden convs; a cheaper loss)",
        1, resume=True, choices=("rrdb", "compact"),
    )  # fmt: skip
    decoder_init: str | None = _opt(
        None, "PSNR-oriented generator for the decoder (path or Hub id; any ESRGAN layout, or a "
        "Real-ESRGAN SRVGGNetCompact with --decoder compact)", 1,
    )  # fmt: skip
    teacher: str | None = _opt(
        None, "distil from this AE (folder, file, Hub id, demo): adds --distill-weight * "
        "L1(AE(HR), teacher(HR)); a student with the teacher's encoder shape starts from its encoder",
        1, metavar="AE",  # a resumed run compares the teacher's weights, not its path
    )  # fmt: skip
    distill_weight: float = _opt(
        1.0, "weight of the distillation term (with --teacher)", 2, resume=True, low=0.0
    )
    distill_noise: float = _opt(
        0.0, "with --teacher, also distil the AE's response to SR-like errors: perturb each crop by up "
        "to this amplitude (random low-frequency change + white noise) and add "
        "L1(student(x+d) - student(x) - teacher(x+d) + teacher(x)) / this, so that the student's loss "
        "gradients point like the teacher's (default off; about 1.6x the step time)",
        2, resume=True, low=0.0, high=1.0,
    )  # fmt: skip
    freeze_decoder_steps: int = _opt(0, "keep the decoder frozen this many steps (-1: always)", 1, low=-1)
    steps: int = _opt(100_000, "optimisation steps", 2, low=1)
    batch_size: int = _opt(16, "per process", 2, resume=True, low=1, high=65_536)
    lr: float = _opt(1e-4, "Adam learning rate", 2, resume=True, above=0.0)
    ema: float = _opt(0.999, "EMA decay of the exported weights", 2, resume=True, low=0.0, below=1.0)
    ema_warmup: bool = _opt(
        True, "warm the EMA up: decay min(ema, (1 + t) / (10 + t)) at step t, so that early saves hold "
        "trained weights (--no-ema-warmup: the paper's plain EMA)", 2, resume=True, absent=False,
    )  # fmt: skip
    bottleneck_weight: float = _opt(1.0, "weight of L1(encode(HR), LR)", 2, resume=True, low=0.0)
    seed: int = _opt(
        0, "seed of the initialisation and the data stream", 2, resume=True, low=0, high=2**63 - 1
    )
    device: str | None = _opt(None, "cuda, cuda:1, cpu (default: cuda when present)", 3)
    amp: str = _opt("none", "autocast dtype of the AE's forward", 3, choices=tuple(AMP_DTYPES))
    compile: bool = _opt(False, "torch.compile the AE", 3)
    save_every: int = _opt(5_000, "steps between checkpoints", 4, low=1)
    val_every: int = _opt(5_000, "steps between validations", 4, low=1)
    log_every: int = _opt(50, "steps between metrics.jsonl records", 4, low=1)
    resume: bool = _opt(False, "continue the run in --out", 4)
    push_to_hub: str | None = _opt(None, "publish the final folder", 4, metavar="REPO_ID")
    force: bool = _opt(False, "run even if the estimated memory per step exceeds what is free", 3)
    world_size: int = _opt(1, "processes (set from torchrun)", 3, resume=True, flag=False)
    command: str = _opt("", "the command line, for the model card", 4, flag=False)

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
        return "--" + name.replace("_", "-")

    def validate(self) -> None:
        """Check every setting for type, finiteness and range before anything is allocated.

        Raises:
            CLIError: One line naming the flag and the allowed values.
        """
        for f in dataclasses.fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            allowed = _allowed(meta, _kind(f))
            if allowed is None or (value is None and f.default is None):  # not given: nothing to check
                continue
            if meta.get("choices") is not None:
                ok = value in meta["choices"]
            elif _kind(f) == "int":
                ok = type(value) is int and _in_range(value, meta)
            else:
                ok = isinstance(value, (int, float)) and math.isfinite(value) and _in_range(value, meta)
            if not ok:
                raise CLIError(f"{self.flag(f.name)} {value!r}: expected {allowed}.")
        if not str(self.data).strip():
            raise CLIError(
                "--data is empty: pass DIV2K, Flickr2K, DF2K, a folder of HR images, or HR_DIR:LR_DIR."
            )
        if self.crop % self.scale:
            raise CLIError(f"--crop {self.crop} is not a multiple of --scale {self.scale}.")
        if self.encoder == "learned" and self.num_feat % (self.scale**2) and not self.decoder_init:
            raise CLIError(
                f"--num-feat {self.num_feat}: expected a multiple of --scale squared ({self.scale**2}); "
                "the learned encoder pixel-unshuffles num_feat/scale**2 channels up to num_feat."
            )
        if self.teacher is None and (self.distill_noise > 0 or self.distill_weight != 1.0):
            raise CLIError(
                "--distill-weight and --distill-noise shape the distillation from a --teacher; without "
                "--teacher they would be ignored, so pass --teacher AE (or drop them)."
            )
        check_device(self.device)
        check_amp(self.amp, self.device)

    def cautions(self) -> list[str]:
        """Valid settings that make an AE worse for AESOP, one line each: the run warns and goes on.

        Examples:
            >>> PretrainConfig(data="d", out=Path("o"), num_feat=32, scale=4).cautions()[0][:61]
            '--num-feat 32 at --scale 4: the learned encoder starts with 2'
            >>> PretrainConfig(data="d", out=Path("o"), num_feat=32, encoder="bicubic").cautions()
            []
        """
        channels = self.num_feat // self.scale**2
        if self.encoder == "learned" and not self.decoder_init and channels < 3:
            return [
                f"--num-feat {self.num_feat} at --scale {self.scale}: the learned encoder starts with "
                f"{channels} channel{'s' * (channels > 1)} for 3 colours, so it drops a colour direction: "
                "AESOP with this AE cannot see a colour cast along it, and an SR net trained with it "
                "drifts that way; use --encoder bicubic (a wider learned encoder can still learn to drop "
                "one on a small photo set: check the run's colour floor)"
            ]
        return []

    def resume_signature(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("resume")}

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """``name=saved (now current)`` for each resume setting that differs from a checkpoint's.

        A setting newer than the checkpoint counts as having its default, so older runs stay
        resumable.
        """
        ours = self.resume_signature()
        defaults = {f.name: f.metadata.get("absent", f.default) for f in dataclasses.fields(self)}
        theirs = {k: saved.get(k, defaults.get(k)) for k in ours}
        same = {"data": lambda a, b: data_key(a) == data_key(b)}  # ./d/ and d are one folder
        return [
            f"{k}={theirs[k]!r} (now {ours[k]!r})"
            for k in ours
            if not same.get(k, lambda a, b: a == b)(theirs[k], ours[k])
        ]

    @classmethod
    def parser(cls, *, prog: str, description: str | None) -> argparse.ArgumentParser:
        """The command-line parser: one flag per field, grouped, with the field's default and help."""
        p = argparse.ArgumentParser(
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # an abbreviated flag would lose to --preset's value without a word
        )
        add_version(p)
        groups = [p.add_argument_group(title) for title in GROUPS]
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("flag", True):
                continue
            kwargs: dict[str, Any] = {"help": meta["help"]}
            if meta.get("required"):
                kwargs["required"] = True
            else:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                kwargs["default"] = default
                if default not in (None, False, True, ""):
                    kwargs["help"] += f" (default: {default})"
            if f.type == "bool":  # --flag, or --flag / --no-flag when it is on by default
                kwargs["action"] = argparse.BooleanOptionalAction if kwargs.get("default") else "store_true"
            else:
                kwargs["type"] = {"int": int, "float": float, "Path": Path}.get(_kind(f), str)
                if meta.get("choices") is not None:
                    kwargs["choices"] = meta["choices"]
                if meta.get("metavar"):
                    kwargs["metavar"] = meta["metavar"]
            groups[meta["group"]].add_argument(cls.flag(f.name), **kwargs)
        return p

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, command: str = "", argv: Sequence[str] = ()
    ) -> PretrainConfig:
        """The config of parsed command-line arguments; ``--preset`` values fill the flags that
        ``argv`` does not give.

        Examples:
            >>> argv = ["--data", "d", "--out", "o", "--preset", "tiny", "--steps", "50"]
            >>> args = PretrainConfig.parser(prog="p", description=None).parse_args(argv)
            >>> cfg = PretrainConfig.from_args(args, argv=argv)
            >>> cfg.num_feat, cfg.steps
            (16, 50)
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        given = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
        for key, value in PRESETS.get(values.get("preset") or "", {}).items():
            flag = cls.flag(key)
            if flag not in given and flag.replace("--", "--no-", 1) not in given:
                values[key] = value
        return cls(**values, command=command)


def data_key(data: Any) -> Any:
    """What a ``--data`` value names, for comparing two of them: resolved folders, or a dataset name.

    Examples:
        >>> data_key("./src/") == data_key("src"), data_key("div2k") == data_key("DIV2K")
        (True, True)
    """
    if not isinstance(data, str):
        return data
    parts = data.split(":") if ":" in data and not Path(data).expanduser().exists() else [data]
    return tuple(
        str(Path(part).expanduser().resolve()) if Path(part).expanduser().exists() else part.upper()
        for part in parts
    )


def _in_range(value: float, meta: Any) -> bool:
    return (
        (meta.get("low") is None or value >= meta["low"])
        and (meta.get("high") is None or value <= meta["high"])
        and (meta.get("above") is None or value > meta["above"])
        and (meta.get("below") is None or value < meta["below"])
    )


def _kind(f: dataclasses.Field[Any]) -> str:
    """A field's value type as written, without ``| None`` (``int | None`` -> ``"int"``)."""
    return str(f.type).removesuffix(" | None")


def _allowed(meta: Any, kind: str) -> str | None:
    """The allowed values of a field in words, or None when it has no check."""
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(str, meta["choices"]))
    bounds = [
        f"{word} {meta[key]}"
        for key, word in (("low", ">="), ("above", ">"), ("high", "<="), ("below", "<"))
        if meta.get(key) is not None
    ]
    if not bounds:
        return None
    noun = "an integer" if kind == "int" else "a finite number"
    return f"{noun} {' and '.join(bounds)}"


def check_amp(amp: str, device: str | None) -> None:
    """Refuse an ``--amp`` that this torch cannot train with on ``device`` (default: CUDA if present).

    Raises:
        CLIError: One line naming what this torch lacks (e.g. float16 autocast on torch 2.1's CPU).
    """
    dtype = amp_dtype(amp)
    device_type = torch.device(device).type if device else "cuda" if torch.cuda.is_available() else "cpu"
    try:
        autocast(device_type, dtype)
        grad_scaler(device_type, enabled=dtype == torch.float16)
    except ValueError as exc:
        raise CLIError(f"--amp {amp}: {exc}") from None


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that is not ``cpu``, ``cuda`` or ``cuda:N`` of a GPU that exists here.

    Raises:
        CLIError: One line naming the device and what is available.
    """
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {device!r}: not a device; expected cpu, cuda or cuda:N.") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: expected cpu, cuda or cuda:N.")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CLIError(f"--device {device}: no CUDA GPU is available here; use --device cpu.")
        if dev.index is not None and dev.index >= count:
            raise CLIError(f"--device {device}: only {count} CUDA GPU(s) here (cuda:0 to cuda:{count - 1}).")
