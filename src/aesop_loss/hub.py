"""Loading and sharing models: Hub repos, local folders, single files, and reference checkpoints.

A model folder is what timm and diffusers users expect: ``config.json`` (the constructor arguments,
generated from the module) + ``model.safetensors`` + a model card ``README.md``. Downloads go
through ``huggingface_hub.hf_hub_download``, so its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and
tokens all behave as usual; nothing is downloaded at import time.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from huggingface_hub import HfApi, hf_hub_download

from ._compat import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from ._io import atomic_path, atomic_write_text, save_safetensors
from ._version import __version__
from .checkpoints import (
    CheckpointError,
    _check_fit,
    _load_state_dict_strict,
    _read_weights_header,
    canonicalize_autoencoder,
    canonicalize_compact,
    canonicalize_rrdbnet,
    read_state_dict,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "HubMixin",
    "ModelCardInfo",
    "load_model",
    "prepare_push",
    "push_folder_to_hub",
    "save_model",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
"""A model folder's architecture file: the constructor arguments, plus ``architecture``."""
WEIGHTS_NAME = "model.safetensors"
"""A model folder's weights file."""
CARD_NAME = "README.md"
_BUNDLED = Path(__file__).parent / "pretrained"
# Names of the AEs bundled with the package (examples and tests only) -> their folders.
_DEMO_AES = {name: _BUNDLED / name for name in ("demo", "demo-compact", "yardstick")}
_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# The Hub's rules: org/name of letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 each.
_REPO_ID = re.compile(r"^(?!.*(?:--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}(?<![.-])$")
_CARD_METADATA_KEYS = ("architecture", "aesop_loss_version")
_MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes
# Ranges a config.json's integer hyperparameters must fall in before they are compared with the
# weights (the largest published RRDB networks use 64 features, 32 growth channels, 23 blocks).
_BOUNDS = {
    "num_in_ch": (1, 64), "num_out_ch": (1, 64), "num_feat": (1, 4096), "num_grow_ch": (1, 4096),
    "num_block": (0, 1024), "num_conv": (0, 1024), "scale": (1, 8),
}  # fmt: skip

M = TypeVar("M", bound="nn.Module")
H = TypeVar("H", bound="HubMixin")

CITATION = """@inproceedings{lee2025aesop,
  title     = {Auto-Encoded Supervision for Perceptual Image Super-Resolution},
  author    = {Lee, MinKyu and Hyun, Sangeek and Jun, Woojin and Heo, Jae-Pil},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025}
}"""


@dataclasses.dataclass
class ModelCardInfo:
    """Facts for a model card; every field is optional and only known facts are written.

    Args:
        description: One paragraph on what the model is for.
        training_data: Data the weights were trained on, e.g. ``"DF2K (DIV2K + Flickr2K)"``.
        training_steps: Optimisation steps.
        command: The exact command that produced the weights.
        source_checkpoint: File the weights were converted from.
        source_sha256: SHA-256 of that file.
        license: SPDX-like license id of the weights (``"other"`` when unknown).
        metrics: Validation numbers, e.g. ``{"psnr_ae_hr": 33.1}``.
        warning: A caveat shown at the top of the card.
        diagnosis: The report of ``aesop_loss.diagnostics.diagnose`` (``Diagnosis.table()``).
    """

    description: str | None = None
    training_data: str | None = None
    training_steps: int | None = None
    command: str | None = None
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    license: str = "other"
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    warning: str | None = None
    diagnosis: str | None = None


def _model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no 'config' property; cannot save it.")
    return {"architecture": type(model).__name__, **config, "aesop_loss_version": __version__}


def _render_card(model: nn.Module, info: ModelCardInfo) -> str:
    config = _model_config(model)
    arch = config["architecture"]
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        "---",
        "library_name: aesop-loss",
        f"license: {info.license}",
        "tags:",
        "- super-resolution",
        "- aesop",
        f"- {arch.lower()}",
        "---",
        "",
        f"# {arch} ({'x' + str(config['scale'])})",
        "",
    ]
    if info.warning:
        lines += [f"> **Warning:** {info.warning}", ""]
    lines += [
        info.description
        or (
            "Frozen autoencoder for the AESOP loss (Lee et al., CVPR 2025): a learned encoder to a "
            "3-channel LR-sized bottleneck and a PSNR-oriented "
            + ("SRVGGNetCompact" if config.get("decoder") == "compact" else "RRDBNet")
            + " decoder."
            if arch == "AutoEncoder"
            else f"{arch} generator in BasicSR layout."
        ),
        "",
        "```python",
        "from aesop_loss import AESOPLoss, " + arch,
        f"model = {arch}.from_pretrained(REPO_ID_OR_FOLDER)",
        "```",
        "",
        "## Architecture",
        "",
        "| field | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in config.items() if k not in _CARD_METADATA_KEYS]
    lines += [f"| parameters | {n_params:,} ({n_params / 1e6:.2f} M) |", ""]
    facts = [
        ("Training data", info.training_data),
        ("Training steps", f"{info.training_steps:,}" if info.training_steps is not None else None),
        ("Converted from", info.source_checkpoint),
        ("Source sha256", f"`{info.source_sha256}`" if info.source_sha256 else None),
        ("License", info.license),
    ]
    lines += ["## Provenance", ""] + [f"- {k}: {v}" for k, v in facts if v is not None] + [""]
    if info.command:
        lines += ["Produced with:", "", "```bash", info.command, "```", ""]
    if info.metrics:
        lines += ["## Validation", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in info.metrics.items()] + [""]
    if info.diagnosis:
        lines += ["## Fitness for AESOP", "", "`python -m aesop_loss.diagnose` on this model:", "", "```"]
        lines += [info.diagnosis, "```", ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def save_model(model: nn.Module, save_directory: str | os.PathLike[str], **card: Any) -> Path:
    """Write a model folder: ``config.json``, ``model.safetensors`` and ``README.md``, each atomically.

    Args:
        model: An ``AutoEncoder`` or ``RRDBNet``.
        save_directory: Folder to create or update.
        **card: ``ModelCardInfo`` fields.

    Returns:
        The folder.

    Examples:
        >>> import tempfile
        >>> from aesop_loss import RRDBNet
        >>> with tempfile.TemporaryDirectory() as d:
        ...     sorted(p.name for p in save_model(RRDBNet(num_feat=8, num_block=1), d).iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    info = ModelCardInfo(**card)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = json.dumps(_model_config(model), indent=2) + "\n"
    old = folder / CONFIG_NAME
    if old.is_file() and old.stat().st_size < _MAX_CONFIG_BYTES and old.read_text(encoding="utf-8") != config:
        # another model is being replaced: a config.json that states only the architecture first, so
        # that the folder loads consistently (settings from the weights) after a kill at any point
        atomic_write_text(old, json.dumps({"architecture": type(model).__name__}) + "\n")
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_safetensors(tensors, tmp, metadata={"format": "pt"})
    atomic_write_text(folder / CONFIG_NAME, config)
    atomic_write_text(folder / CARD_NAME, _render_card(model, info))
    return folder


def push_folder_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with aesop-loss",
) -> str:
    """Create ``repo_id`` if needed and upload a model folder to it.

    Args:
        folder: A folder written by ``save_model``.
        repo_id: ``org/name`` on the Hub.
        token: Hub token (default: the logged-in one).
        private: Create the repo private.
        commit_message: Commit message.

    Returns:
        The URL of the commit.
    """
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder}: not a model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        commit_message=commit_message,
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
    )
    return str(getattr(info, "commit_url", info))


def prepare_push(repo_id: str, *, token: str | None = None, private: bool | None = None) -> None:
    """Check a push's repo id and reach the Hub before the work that ends in the push.

    Creates the repo if needed (the push would), so a bad id, no network, an offline setting or a
    missing token fails in one line at the start, not after a long run.

    Raises:
        CheckpointError: Not a valid ``org/name`` id, or the Hub cannot be reached or refuses.
    """
    if not _REPO_ID.match(repo_id):
        raise CheckpointError(
            f"--push-to-hub {repo_id!r}: not a Hub repo id; expected 'org/name' (letters, digits, - _ .)."
        )
    try:
        HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True)
    except Exception as exc:  # offline mode, no network, no token, no permission: all one answer
        detail = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise CheckpointError(
            f"--push-to-hub {repo_id}: the Hub cannot be reached or refuses the repo ({detail}); check the "
            "network and your token (huggingface-cli login), or drop --push-to-hub. Nothing was started."
        ) from None


def push_model_to_hub(
    model: nn.Module, repo_id: str, *, token: str | None = None, private: bool | None = None, **card: Any
) -> str:
    """Save ``model`` to a temporary folder and upload it (see ``push_folder_to_hub``)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp, **card)
        return push_folder_to_hub(tmp, repo_id, token=token, private=private)


_CANONICALIZERS = {
    "AutoEncoder": canonicalize_autoencoder,
    "RRDBNet": canonicalize_rrdbnet,
    "SRVGGNetCompact": canonicalize_compact,
}


def _architecture(cls: type) -> str:
    """The architecture a class (or a subclass of it) is: the name its files are read by."""
    for klass in cls.__mro__:
        if klass.__name__ in _CANONICALIZERS:
            return klass.__name__
    raise TypeError(f"cannot load {cls.__name__} checkpoints; expected one of {', '.join(_CANONICALIZERS)}.")


def _canonicalize(
    cls: type, sd: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return _CANONICALIZERS[_architecture(cls)](sd, source=source)


def _observed(config: dict[str, Any]) -> dict[str, Any]:
    """The settings the weights show; ``None`` marks one they cannot (e.g. the growth of an AE with no
    RRDB), which takes the constructor's default or what ``config.json`` states."""
    return {k: v for k, v in config.items() if v is not None}


def _load_file(cls: type[M], path: Path) -> M:
    sd, config = _canonicalize(cls, read_state_dict(path), str(path))
    model = cls(**_observed(config))
    _load_state_dict_strict(model, sd, source=str(path))
    return model


def _load_folder(cls: type[M], folder: Path, *, label: str | None = None) -> M:
    label = label or str(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{label}: no {CONFIG_NAME}; a model folder holds {CONFIG_NAME} + {WEIGHTS_NAME} (as "
            "written by save_pretrained). For a single weights file, pass the file itself."
        )
    if config_path.stat().st_size > _MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{config_path}: {config_path.stat().st_size:,} bytes, far more than a model's settings take; "
            "not a config.json this package writes."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc}).") from exc
    except RecursionError:
        raise CheckpointError(f"{config_path}: not a model configuration (nested too deeply).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, found {type(config).__name__}.")
    arch = config.get("architecture", cls.__name__)
    if arch != cls.__name__:
        raise CheckpointError(f"{config_path}: holds a {arch}; load it with {arch}.from_pretrained.")
    signature = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k not in _CARD_METADATA_KEYS}
    unknown = sorted(set(kwargs) - (set(signature) - {"self"}))
    if unknown:
        raise CheckpointError(
            f"{config_path}: unknown {cls.__name__} settings {unknown}; expected some of "
            f"{sorted(set(signature) - {'self'})}."
        )
    for key, value in kwargs.items():
        bound = _BOUNDS.get(key)
        if bound is not None and (type(value) is not int or not bound[0] <= value <= bound[1]):
            raise CheckpointError(
                f"{config_path}: invalid configuration: {key}={value!r}; expected an integer in "
                f"[{bound[0]}, {bound[1]}]."
            )
    # The weights' own shapes decide the architecture: compare before anything is allocated.
    source = f"{weights_path} (with {CONFIG_NAME})"
    header, implied = _canonicalize(cls, _read_weights_header(weights_path), source)
    # a setting the file does not state is what the weights imply (a folder is consistent at every
    # moment of a replacement that writes a minimal config.json first, as convert --overwrite does)
    implied = _observed(implied)
    stated = {k: kwargs.get(k, implied[k]) for k in implied}
    differ = [f"{k}={stated[k]!r} (weights: {implied[k]!r})" for k in implied if stated[k] != implied[k]]
    if differ:
        raise CheckpointError(
            f"{config_path}: does not match {WEIGHTS_NAME}: {', '.join(differ)}; the folder is "
            "inconsistent, so write it again with save_pretrained."
        )
    try:
        model = cls(**{**implied, **kwargs})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid configuration: {exc}") from exc
    _check_fit(model, header, source=source)  # unexpected or missing tensors: refused unread
    _load_state_dict_strict(model, read_state_dict(weights_path), source=source)
    return model


def _split_revision(src: str, revision: str | None) -> tuple[str, str | None]:
    if "@" not in src:
        return src, revision
    repo_id, _, pinned = src.partition("@")
    if not pinned or "@" in pinned:
        raise CheckpointError(f"{src!r}: expected 'org/name@revision' with one revision after '@'.")
    if revision is not None and revision != pinned:
        raise ValueError(f"{src!r} pins revision {pinned!r} but revision={revision!r} was also given.")
    return repo_id, pinned


def _download(
    repo_id: str, filename: str, *, revision: str | None, local_files_only: bool, token: str | bool | None
) -> Path:
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                local_files_only=local_files_only,
                token=token,
                library_name="aesop-loss",
                library_version=__version__,
            )
        )
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{where}: {filename} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline: HF_HUB_OFFLINE=1, local_files_only=True, or no network). Run once online to "
            "fill the cache, or pass a local folder."
        ) from exc
    except GatedRepoError as exc:
        raise CheckpointError(f"{where}: gated repo; accept its terms on the Hub and pass token=...") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"{where}: no such repo on the Hub (if it is private, log in or pass token=...), and no "
            "local folder or file of that name."
        ) from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{where}: revision {revision!r} does not exist.") from exc
    except EntryNotFoundError as exc:
        raise CheckpointError(
            f"{where}: the repo has no {filename}; is it an aesop-loss model repo?"
        ) from exc
    except HFValidationError as exc:
        raise CheckpointError(f"{where}: not a valid Hub repo id or revision ({exc}).") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"{where}: could not download {filename}: {exc}") from exc


def load_model(
    cls: type[M],
    src: str | os.PathLike[str],
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> M:
    """Resolve ``src`` to weights and build ``cls`` from them (see ``AutoEncoder.from_pretrained``).

    Raises:
        CheckpointError: Nothing found at ``src``, or what was found does not fit ``cls``.
    """
    text = os.fspath(src)
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system, ...
        raise CheckpointError(
            f"{text[:60]}{'...' if len(text) > 60 else ''}: not a usable file or folder name "
            f"({exc.strerror or exc}), nor a Hub repo id."
        ) from None
    if text in _DEMO_AES and exists:
        warnings.warn(
            f"{text!r} names a local {'folder' if path.is_dir() else 'file'} here, which is loaded "
            f"instead of the bundled {text} AE; pass './{text}' to mean the local one, or run from "
            "another folder for the bundled one.",
            UserWarning,
            stacklevel=4,
        )
    if text in _DEMO_AES and not exists:
        folder = _DEMO_AES[text]
        if _architecture(cls) != "AutoEncoder":
            raise CheckpointError(
                f"{text!r} names a bundled demo autoencoder; use AutoEncoder.from_pretrained."
            )
        if not folder.is_dir():
            raise CheckpointError(
                f"the {text} AE is missing from this installation ({folder}); reinstall aesop-loss."
            )
        warnings.warn(
            f"Loaded the bundled demo AE {text!r}, trained on a handful of sample images: fine for examples "
            "and tests, not for research results. Use the paper's AE (convert the authors' "
            "checkpoint with 'python -m aesop_loss.convert') or one pretrained on DIV2K/DF2K.",
            UserWarning,
            stacklevel=4,
        )
        return _finish(_load_folder(cls, folder, label=f"{text} AE"), device)
    if path.is_dir():
        return _finish(_load_folder(cls, path), device)
    if path.is_file():
        return _finish(_load_file(cls, path), device)
    if _looks_local(text):
        explicit = text.startswith((".", "/", "~")) or text.endswith(_FILE_SUFFIXES)
        why = "" if explicit else f" ({path.parent} exists here, so this names a local path)"
        raise CheckpointError(f"{text}: no such file or folder{why}.")
    repo_id, rev = _split_revision(text, revision)
    if not _REPO_ID.match(repo_id):
        raise CheckpointError(
            f"{text!r}: no such local file or folder, and not a Hub repo id ('org/name[@revision]')."
        )
    try:
        config_path = _download(
            repo_id, CONFIG_NAME, revision=rev, local_files_only=local_files_only, token=token
        )
        _download(repo_id, WEIGHTS_NAME, revision=rev, local_files_only=local_files_only, token=token)
    except CheckpointError as exc:
        raise CheckpointError(f"{text}: no such local file or folder; as a Hub repo: {exc}") from exc
    label = repo_id + (f"@{rev}" if rev else "")
    return _finish(_load_folder(cls, config_path.parent, label=label), device)


class HubMixin:
    """``from_pretrained``, ``save_pretrained`` and ``push_to_hub`` for an ``nn.Module`` with a
    ``config`` property (the architectures mix it in, as ``PyTorchModelHubMixin`` users do)."""

    @classmethod
    def from_pretrained(
        cls: type[H],
        src: str | os.PathLike[str],
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> H:
        """Load weights from the Hub, a folder, a ``.safetensors`` file or a ``.pth`` checkpoint.

        Bare files in any supported layout (the authors' AE checkpoints with their duplicated
        encoder keys; BasicSR, original-ESRGAN and ``RRDB_trunk`` generators) are canonicalised and
        every hyperparameter is inferred from tensor shapes. A folder's ``config.json`` is checked
        against its weights' shapes before the model is built. Loading is always strict, and
        ``.pth`` files are read with ``weights_only=True``. ``"demo"`` names the small AE bundled
        with the package, ``"demo-compact"`` a compact AE distilled from it, ``"yardstick"`` a
        compact AE trained independently of both, for scoring AE-PSNR (examples, benchmarks and
        tests only).

        Args:
            src: Hub repo id (``org/name`` or ``org/name@revision``), a bundled name (``"demo"``,
                ``"demo-compact"``, ``"yardstick"``), a folder written by ``save_pretrained``, a
                ``.safetensors`` file, or a ``.pth`` checkpoint
                (``{"params_ema": sd}``, ``{"params": sd}`` or a bare state dict).
            revision: Hub revision (branch, tag or commit) when ``src`` is a repo id.
            device: Where to put the weights (default: CPU).
            local_files_only: Never touch the network; use the Hub cache only (as does
                ``HF_HUB_OFFLINE=1``).
            token: Hub token for private or gated repos.

        Returns:
            The model, in eval mode.

        Raises:
            CheckpointError: Nothing usable at ``src``; the message names the file and problem.

        Examples:
            >>> import tempfile
            >>> from aesop_loss import AutoEncoder
            >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8, scale=2)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = ae.save_pretrained(d)
            ...     AutoEncoder.from_pretrained(d).config == ae.config
            True
        """
        return load_model(
            cls,  # type: ignore[type-var]
            src,
            revision=revision,
            device=device,
            local_files_only=local_files_only,
            token=token,
        )

    def save_pretrained(self, save_directory: str | os.PathLike[str], **card: Any) -> Path:
        """Write ``config.json`` + ``model.safetensors`` + a model card ``README.md``, atomically.

        Args:
            save_directory: Folder to write (created if needed).
            **card: Model-card facts, the fields of ``ModelCardInfo``.

        Returns:
            The folder.
        """
        return save_model(self, save_directory, **card)  # type: ignore[arg-type]

    def push_to_hub(
        self, repo_id: str, *, token: str | None = None, private: bool | None = None, **card: Any
    ) -> str:
        """Publish this model as a Hub repo (the ``save_pretrained`` folder); returns the commit URL."""
        return push_model_to_hub(self, repo_id, token=token, private=private, **card)  # type: ignore[arg-type]


def _looks_local(text: str) -> bool:
    """A path that cannot mean a Hub id: a checkpoint suffix, a ``.``/``/``/``~`` start, or a first
    component that is a folder here (``runs/ae`` when ``runs/`` exists)."""
    if text.endswith(_FILE_SUFFIXES) or text.startswith((".", "/", "~")):
        return True
    head, sep, _ = text.partition("/")
    return bool(sep) and Path(head).is_dir()


def _finish(model: M, device: str | torch.device | None) -> M:
    model.eval()
    if device is not None:
        model.to(device)
    return model
