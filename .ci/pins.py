"""Print pip constraints for one CI leg (or the lowest Python), derived from pyproject.toml.

``floor``: every declared dependency (core, and the ``train`` and ``dev`` extras) at the lowest
release line its ``>=`` admits (``torch>=2.1`` -> ``torch==2.1.*``). ``newest``: no constraint but
torch's, which is pinned to the newest release the package promises (an open range would pull
whatever is newest). A changed floor in pyproject.toml is tested without editing this file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

NEWEST_TORCH = "2.13.0"  # the newest torch the README promises; the main leg's CPU build

_REQ = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def declared(pyproject: Path) -> dict[str, str]:
    """``{name: specifier}`` of the core dependencies and every extra, less the self-references."""
    meta = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    out: dict[str, str] = {}
    for req in reqs:
        m = _REQ.match(req)
        if m is None:
            raise SystemExit(f"pins.py: cannot read the requirement {req!r}")
        name, spec = m.group(1).lower(), m.group(2).strip()
        if name != meta["name"]:
            out[name] = spec
    return out


def floor_pin(name: str, spec: str) -> str:
    low = re.search(r">=\s*([0-9]+(?:\.[0-9]+)*)", spec)
    if low is None:
        raise SystemExit(f"pins.py: {name}{spec} declares no floor (>=X.Y); declare one")
    parts = low.group(1).split(".")
    return f"{name}=={'.'.join(parts[:2] if len(parts) > 1 else parts)}.*"


def main() -> None:
    leg = sys.argv[1] if len(sys.argv) > 1 else ""
    root = Path(__file__).resolve().parent.parent
    deps = declared(root / "pyproject.toml")
    if leg == "python":  # the lowest Python that requires-python admits, as X.Y
        spec = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
        sys.stdout.write(floor_pin("python", spec).removeprefix("python==").removesuffix(".*") + "\n")
    elif leg == "floor":
        sys.stdout.write("".join(floor_pin(n, s) + "\n" for n, s in sorted(deps.items())))
    elif leg == "newest":
        sys.stdout.write(f"torch=={NEWEST_TORCH}\n")
    else:
        raise SystemExit("usage: pins.py python|floor|newest")


if __name__ == "__main__":
    main()
