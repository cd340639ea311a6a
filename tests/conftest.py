from __future__ import annotations

import contextlib
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from aesop_loss import AutoEncoder
from aesop_loss._compat import autocast_supported
from aesop_loss.cli import CLIError
from aesop_loss.train import check_amp

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"
AE_CKPT = OFFICIAL / "official_rrdb_ae_small.pth"
AE_GOLDEN = OFFICIAL / "official_rrdb_ae_small.golden.safetensors"
RRDB_CKPT = OFFICIAL / "basicsr_rrdbnet_x4_small.pth"
RRDB_GOLDEN = OFFICIAL / "basicsr_rrdbnet_x4_small.golden.safetensors"
IMAGES = Path(__file__).parents[1] / "examples" / "images"  # the CC0 / public-domain sample photos

# The suite's one tiny AE (x4, 16 features, 1 block, growth 8): as constructor arguments and as the
# pretraining flags that build it.
TINY = {"num_feat": 16, "num_block": 1, "num_grow_ch": 8}
TINY_FLAGS = ["--num-feat", "16", "--num-block", "1", "--num-grow-ch", "8"]


def tiny_ae(**overrides: Any) -> AutoEncoder:
    """The tiny AE (random weights) marked as pretrained, so that AESOPLoss takes it silently."""
    ae = AutoEncoder(**{**TINY, **overrides})
    ae.is_pretrained = True
    return ae


class TinySRNet(torch.nn.Module):
    """An x4 SR net as small as can be: nearest upsampling, then a near-identity convolution last (as in
    any SR net, so that under ``torch.autocast`` its output has autocast's dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.1)
            self.conv.weight[:, :, 1, 1] += torch.eye(3)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.interpolate(lr, scale_factor=4, mode="nearest"))


@contextlib.contextmanager
def warnings_as_errors(category: type[Warning] = Warning) -> Iterator[None]:
    """Any ``category`` warning inside raises (``catch_warnings(action=...)`` is Python 3.11+)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", category)
        yield


def skip_without_autocast(device_type: str, dtype: torch.dtype | None) -> None:
    """Skip where this torch cannot autocast to ``dtype`` on ``device_type`` (fp16 on torch 2.1's CPU)."""
    if dtype is not None and not autocast_supported(device_type, dtype):
        pytest.skip(f"torch {torch.__version__} cannot autocast to {dtype} on the {device_type}")


def skip_without_fp16_training(device_type: str) -> None:
    """Skip where ``--amp fp16`` cannot train on ``device_type`` (no CPU fp16 autocast or scaler)."""
    try:
        check_amp("fp16", device_type)
    except CLIError as exc:
        pytest.skip(str(exc))


def wait_for_file(path: Path, timeout: float) -> None:
    """Poll until a running subprocess has written ``path`` (or ``timeout`` seconds pass)."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def assert_stopped_and_saved(proc: subprocess.Popen[str], checkpoint: Path, timeout: float) -> int:
    """A signalled training process exits 130 without a traceback, saying where it saved; the step."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    step = int(torch.load(checkpoint, weights_only=True)["step"])
    assert f"stopped at step {step}" in err
    return step


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def strict_fp32():
    """The reference's exact numbers: no TF32 convolutions or matmuls (PyTorch allows TF32
    convolutions by default, and the loss follows the caller's setting)."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.fixture
def ae_golden() -> dict[str, torch.Tensor]:
    return load_file(AE_GOLDEN)


@pytest.fixture
def rrdb_golden() -> dict[str, torch.Tensor]:
    return load_file(RRDB_GOLDEN)


@pytest.fixture
def reference_ae() -> AutoEncoder:
    return AutoEncoder.from_pretrained(AE_CKPT)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture
def two_photo_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report at the end of a test pretraining run measures 2 bundled photos, not 7.

    It is most of a tiny run's time; the report's own tests (test_diagnose) measure all 7.
    """
    import aesop_loss.train.loop as loop
    from aesop_loss.diagnostics import diagnose, sample_images

    def on_two(ae: AutoEncoder, images: Any = None, **kwargs: Any) -> Any:
        return diagnose(ae, images if images is not None else sample_images()[:2], **kwargs)

    monkeypatch.setattr(loop, "diagnose", on_two)
