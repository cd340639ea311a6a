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


class _Parsed(Exception):
    """Raised right after a command's parser accepted its arguments: nothing runs."""


def _commands(text: str) -> list[list[str]]:
    """Every ``python -m aesop_loss.X`` / ``python examples|benchmarks/X.py`` command in bash blocks."""
    import shlex

    found = []
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    inline = re.findall(r"`((?:python|torchrun) [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in [*blocks, *inline]:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line.split("#")[0])  # drop "[optional parts]"
            words = shlex.split(line)
            if "python" in words:
                words = words[words.index("python") + 1 :]
            elif words[:1] == ["torchrun"]:
                words = words[next(i for i, w in enumerate(words) if w == "-m") :]
            else:
                continue
            if words[:1] == ["-m"] and words[1].startswith("aesop_loss.") and len(words) > 2:
                found.append(words[1:])  # (a bare `python -m aesop_loss.X` names the command)
            elif words and words[0].startswith(("examples/", "benchmarks/")) and words[0].endswith(".py"):
                found.append(words)
    return found


def test_every_command_the_docs_show_still_parses(monkeypatch):
    import argparse
    import importlib

    pages = [
        ROOT / "examples" / "README.md",
        ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    docs = README + "".join(page.read_text() for page in pages)
    commands = _commands(docs)
    assert len(commands) >= 15
    real = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    for folder in ("examples", "benchmarks"):
        monkeypatch.syspath_prepend(str(ROOT / folder))
    for words in commands:
        target, argv = words[0], words[1:]
        if target.endswith(".py"):
            module = importlib.import_module(Path(target).stem)
        else:
            module = importlib.import_module(target)
        try:
            module.main(argv)
        except _Parsed:
            continue
        except SystemExit as exc:
            raise AssertionError(f"{' '.join(words)}: the parser refused it ({exc})") from None
        raise AssertionError(f"{' '.join(words)}: no argument parser ran")


def test_the_readme_is_the_first_hour_and_links_the_reference_pages():
    # install, the swap, getting an AE and the frameworks first; the reference material in docs/
    assert len(README.splitlines()) <= 300
    heads = re.findall(r"^## (.+)$", README, re.M)
    assert heads[:3] == ["Getting an autoencoder", "API", "In your framework"]
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    assert linked == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}  # every page, each linked
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\((?!https?:)([^)#]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_readme_names_a_fast_subset_that_leaves_out_the_end_to_end_tests():
    assert 'python -m pytest -m "not slow"' in README
    assert re.search(r'-m "not slow"` is the fast subset [^:]*: \d+ s on an idle 2-core machine', README)
    for module in ("test_examples.py", "test_benchmarks.py"):  # scripts run end to end: all slow
        assert "pytestmark = pytest.mark.slow" in (ROOT / "tests" / module).read_text()
