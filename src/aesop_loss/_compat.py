"""The one place that bridges the declared dependency range (torch 2.1+, huggingface-hub 0.23+).

Each helper uses the newer API when the installed version has it and falls back otherwise, so the
rest of the package is written once, for every version that ``pyproject.toml`` admits.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

try:  # huggingface-hub >= 0.24 moved its exceptions to `errors`
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
except ImportError:  # pragma: no cover - huggingface-hub 0.23
    from huggingface_hub.utils import (  # type: ignore[no-redef,attr-defined,unused-ignore]
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

__all__ = [
    "TORCH_VERSION",
    "EntryNotFoundError",
    "GatedRepoError",
    "HFValidationError",
    "HfHubHTTPError",
    "LocalEntryNotFoundError",
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "autocast",
    "autocast_enabled",
    "autocast_supported",
    "compile_module",
    "grad_scaler",
    "load_weights",
    "on_load_state_dict",
    "on_state_dict",
]


def _version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int(minor)


TORCH_VERSION = _version_tuple(torch.__version__)
"""The installed torch's ``(major, minor)``."""


def on_state_dict(module: nn.Module, hook: Callable[..., None]) -> None:
    """Run ``hook(module, state_dict, prefix, local_metadata)`` after ``module.state_dict()``."""
    if hasattr(module, "register_state_dict_post_hook"):  # torch >= 2.2
        module.register_state_dict_post_hook(hook)
    else:  # pragma: no cover - torch 2.1
        module._register_state_dict_hook(hook)


def on_load_state_dict(module: nn.Module, hook: Callable[..., None]) -> None:
    """Run ``hook(module, state_dict, prefix, ...)`` before ``module.load_state_dict()`` reads its part."""
    if hasattr(module, "register_load_state_dict_pre_hook"):  # torch >= 2.2
        module.register_load_state_dict_pre_hook(hook)
    else:  # pragma: no cover - torch 2.1
        module._register_load_state_dict_pre_hook(hook, with_module=True)


def load_weights(path: str | os.PathLike[str], *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(..., weights_only=True)``; ``mmap`` maps the file instead of reading it.

    torch 2.1 memory-maps only a ``str`` file name, so the path is always passed as one.
    """
    return torch.load(os.fspath(path), map_location=map_location, weights_only=True, mmap=mmap)


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, which takes no device before torch 2.4."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4: one query per device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


@functools.cache
def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype=dtype)`` runs in ``dtype`` with this torch.

    Probed once: torch 2.1's CPU autocast refuses float16 (it warns and then raises on entry).
    """
    if device_type != "cpu" or dtype != torch.float16:
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                return autocast_enabled("cpu")
        except RuntimeError:  # pragma: no cover - torch 2.1
            return False


def autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` in ``dtype``, or switched off for ``None``.

    Raises:
        ValueError: ``dtype`` is one this torch cannot autocast to on ``device_type``.
    """
    if dtype is None:  # no dtype: torch 2.1's CPU autocast refuses float32 even when disabled
        return torch.autocast(device_type, enabled=False)
    if not autocast_supported(device_type, dtype):  # pragma: no cover - torch 2.1
        name = str(dtype).removeprefix("torch.")
        raise ValueError(
            f"torch {torch.__version__} cannot autocast to {name} on the {device_type}: "
            "use bf16 (or fp32), or a newer torch."
        )
    return torch.autocast(device_type, dtype=dtype)


def compile_module(module: nn.Module, *, backend: str = "inductor") -> nn.Module:
    """``torch.compile(module, backend=backend)``, with static shapes on torch 2.1.

    torch 2.1's dynamic shapes (which dynamo turns on after a second input size) cannot trace
    ``PixelUnshuffle``; there each new input size compiles once instead.
    """
    dynamic = False if TORCH_VERSION < (2, 2) else None
    return torch.compile(module, backend=backend, dynamic=dynamic)  # type: ignore[return-value]


def grad_scaler(device_type: str, *, enabled: bool) -> Any:
    """A ``GradScaler`` for ``device_type`` (``torch.amp.GradScaler`` from torch 2.3).

    Raises:
        ValueError: ``enabled`` on a CPU with torch < 2.3, which has no CPU gradient scaler.
    """
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    if device_type != "cuda" and enabled:  # pragma: no cover - torch < 2.3
        raise ValueError(
            f"torch {torch.__version__} has no gradient scaler for float16 on the {device_type}: "
            "use bf16 (or fp32), or torch >= 2.3."
        )
    return torch.cuda.amp.GradScaler(enabled=enabled and device_type == "cuda")  # pragma: no cover
