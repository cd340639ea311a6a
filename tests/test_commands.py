"""The commands as a newcomer meets them: ``python -m aesop_loss``, ``--version``, quiet imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aesop_loss import __version__
from aesop_loss.__main__ import COMMANDS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NO_NUMPY = "import sys; sys.modules['numpy'] = None; import runpy; sys.argv = sys.argv[1:]; "


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_python_m_aesop_loss_lists_every_command_with_its_console_script():
    proc = _run("-m", "aesop_loss")
    assert proc.returncode == 0, proc.stderr
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for module, (script, _) in COMMANDS.items():
        assert f"python -m {module}" in proc.stdout
        assert scripts[script].startswith(module + ":")  # the listed script runs that module
    assert set(scripts) == {script for script, _ in COMMANDS.values()}
    assert proc.stderr == ""


@pytest.mark.parametrize("module", ["aesop_loss", *COMMANDS])
def test_every_command_has_version(module):
    proc = _run("-m", module, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"python -m {module} (aesop-loss {__version__})"


@pytest.mark.parametrize("example", ["quickstart.py", "train_esrgan.py", "basicsr_plugin.py"])
def test_examples_start_without_torchs_numpy_notice(example):
    # NumPy absent, as in a user's `pip install ".[train]"`: torch's import-time notice is the
    # package's to silence, and only while it imports torch
    code = NO_NUMPY + "runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = _run(str(ROOT / "examples" / example), "--help", code=code)
    assert proc.returncode == 0, proc.stderr
    assert "NumPy" not in proc.stderr


def test_importing_the_package_leaves_the_warning_filters_alone():
    # torch, requests and others add filters of their own at import (torch 2.1, huggingface-hub
    # 0.23's requests); with those imported first, importing the package adds none
    deps = "import torch, safetensors.torch; from huggingface_hub import HfApi, hf_hub_download; "
    code = (
        deps
        + "import warnings; was = list(warnings.filters); import aesop_loss; print(warnings.filters == was)"
    )
    assert _run(code=code).stdout.strip() == "True"
    # and imported first, its NumPy silencing does not outlive its own import of torch
    code = "import aesop_loss, warnings; print(any('NumPy' in str(f[1]) for f in warnings.filters))"
    proc = _run(code=code)
    assert proc.stdout.strip() == "False", proc.stderr
