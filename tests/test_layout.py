"""The package's shape: a lean loss library whose imports go one way, and the training tool beside it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aesop_loss"
# the tool, and the `python -m` commands that may reach it (pretraining; diagnose's --images)
TRAINING = ("aesop_loss.train", "aesop_loss.pretrain", "aesop_loss.diagnose")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import in ``path``, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f)}  # fmt: skip
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in local) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, id(node) in local))
            for alias in node.names:  # `from . import x` / `from .train import data` name modules
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.append((candidate, id(node) in local))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for target, _ in _imports(path):
            while target and target not in modules:  # `from .hub import X`: the module hub
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                graph[name].add(target)
    return graph


def test_imports_go_one_way():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_function_local_imports_of_the_package():
    for path in PACKAGE.rglob("*.py"):
        inner = [t for t, local in _imports(path) if local and t.startswith("aesop_loss")]
        assert not inner, f"{path.relative_to(ROOT)} imports {inner} inside a function"


def test_the_loss_library_never_imports_the_training_tool_or_its_dependencies():
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.startswith(TRAINING):
            continue
        for target, _ in _imports(path):
            assert not target.startswith(("aesop_loss.train", "PIL", "tqdm")), f"{name} imports {target}"


def test_ci_floor_pins_follow_pyproject():
    # .ci/run's floor leg installs exactly these: every declared dependency at its lowest release line
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "pins.py"), "floor"], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(d for extra in project["optional-dependencies"].values() for d in extra),
    ]
    floors = {d.split(">=")[0].strip(): d.split(">=")[1].strip() for d in declared if ">=" in d}
    assert sorted(out) == sorted(f"{name}=={'.'.join(v.split('.')[:2])}.*" for name, v in floors.items())
    assert "torch==2.1.*" in out
    python = subprocess.run([sys.executable, str(ROOT / ".ci" / "pins.py"), "python"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    assert python == project["requires-python"].removeprefix(">=")


def test_core_dependencies_are_exactly_torch_safetensors_huggingface_hub():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]]
    assert names == ["torch", "safetensors", "huggingface-hub"]
    train = [dep.split(">")[0] for dep in project["optional-dependencies"]["train"]]
    assert sorted(train) == ["pillow", "tqdm"]
    assert "aesop-loss[train]" in project["optional-dependencies"]["dev"]


_WITHOUT_PILLOW = "import sys\nsys.modules['PIL'] = None  # as if Pillow were not installed\n"


def _without_pillow(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_PILLOW + code, *args], capture_output=True, text=True, cwd=cwd,
        timeout=120,
    )  # fmt: skip


def test_the_loss_convert_and_hub_loading_work_without_pillow(tmp_path):
    code = (
        "import warnings\nwarnings.simplefilter('ignore')\nimport torch\n"
        "from aesop_loss import AESOPLoss, AutoEncoder\n"
        "from aesop_loss.convert import main\n"
        f"assert main([{str(ROOT / 'tests/fixtures/official/official_rrdb_ae_small.pth')!r}, "
        f"{str(tmp_path / 'ae')!r}]) == 0\n"
        f"ae = AutoEncoder.from_pretrained({str(tmp_path / 'ae')!r})\n"
        "x = torch.rand(1, 3, 32, 32)\n"
        "print(float(AESOPLoss(ae)(x, x)), float(AESOPLoss(ae='demo')(x, x)))\n"
        "print('PIL' in sys.modules and sys.modules['PIL'] is not None)\n"
    )
    proc = _without_pillow(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0.0", "0.0", "False"]


def test_pretrain_without_the_training_extra_says_how_to_install_it(tmp_path):
    run = "import runpy\nrunpy.run_module('aesop_loss.pretrain', run_name='__main__')"
    help_text = _without_pillow(run, "--help")
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert "--data" in help_text.stdout
    assert "--color-jitter" in help_text.stdout
    proc = _without_pillow(run, "--data", "DIV2K", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: pretraining needs PIL, which the training extra installs: pip install "aesop-loss[train]"'
    ]
    assert not (tmp_path / "run").exists()


def test_every_public_name_is_documented():
    missing = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        lines = path.read_text().splitlines()
        public = next(
            (ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)),
            [],
        )  # fmt: skip
        body = tree.body
        for i, node in enumerate(body):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in public:
                if not ast.get_docstring(node):
                    missing.append(f"{_module_name(path)}.{node.name}")
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name) and t.id in public]
                if not names:
                    continue
                after = body[i + 1] if i + 1 < len(body) else None
                docstring = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                comment = lines[node.lineno - 2].lstrip().startswith("#") or "#" in lines[node.lineno - 1]
                if not (docstring or comment):
                    missing += [f"{_module_name(path)}.{n}" for n in names]
    assert missing == []


def test_importing_the_core_without_numpy_prints_no_numpy_warning():
    code = "import sys\nsys.modules['numpy'] = None\nimport aesop_loss\nfrom aesop_loss import AESOPLoss\n"
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NumPy" not in proc.stderr
