"""The README's promises, checked: its commands and its API block match the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    test_command = next(line.split("#")[0].strip() for line in first_block.splitlines() if "pytest" in line)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]
    assert "python examples/quickstart.py" in first_block
    assert (ROOT / "examples" / "quickstart.py").is_file()


def _readme_params(name: str, end: str = r"\)\n") -> list[str]:
    match = re.search(rf"{name}(?:\(|\s)(.*?){end}", README, re.S)
    assert match, f"README has no {name}(...) signature"
    return re.findall(r"(\w+)=", match.group(1))


def test_readme_api_block_matches_the_code():
    real = [p for p in inspect.signature(AESOPLoss.__init__).parameters if p not in ("self", "ae")]
    assert _readme_params(r"AESOPLoss\(ae, \*,") == real
    for cls in (AutoEncoder, RRDBNet):
        real = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert _readme_params(f"`{cls.__name__}", end=r"\)`") == real


def test_readme_precision_values_match():
    from aesop_loss.loss import Precision

    block = re.search(r"precision=([^\n]*)", README)
    assert block
    assert re.findall(r'"(\w+)"', block.group(1)) == list(Precision.__args__)
