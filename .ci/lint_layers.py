"""Check the import-linter contracts in pyproject.toml against the package as it installs.

``adapters/`` installs as ``olam_edit.adapters`` (a setuptools package-dir mapping), which
import-linter cannot see in a checkout: it scans the folder ``olam_edit/`` only. This script lays the
installed tree out in a temporary folder (``olam_edit/`` with ``adapters/`` inside it, and the Space
where pyproject maps it) and runs ``lint-imports`` there, then looks for import cycles of any length
between the package's modules (imports inside functions count; ``if TYPE_CHECKING`` imports do
not, as they never run). Exit code 0 when every contract is kept and there is no cycle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def package_dirs() -> dict[str, Path]:
    """Every package-dir mapping of pyproject.toml, as ``{dotted name: source folder}``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"].get("package-dir", {})
    return {name: ROOT / folder for name, folder in mapping.items()}


def lay_out(dest: Path) -> None:
    """Copy the sources into ``dest`` the way the wheel lays them out (roots first, then mapped sub-packages)."""
    for name, folder in sorted(package_dirs().items(), key=lambda item: item[0].count(".")):
        shutil.copytree(folder, dest.joinpath(*name.split(".")), ignore=IGNORE, dirs_exist_ok=True)


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph of ``olam_edit``."""
    import grimp

    graph = grimp.build_graph("olam_edit", cache_dir=None, exclude_type_checking_imports=True)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in graph.modules}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in edges[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return found


def main() -> int:
    if sys.argv[1:] == ["--cycles"]:  # run inside the laid-out tree (see below)
        found = cycles()
        for group in found:
            print("import cycle:", " -> ".join(group))
        print(f"{len(found)} import cycles")
        return 1 if found else 0
    with tempfile.TemporaryDirectory(prefix="olam-lint-") as tmp:
        lay_out(Path(tmp))
        shutil.copy(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
        env = {**os.environ, "PYTHONPATH": tmp}
        lint = Path(sys.executable).with_name("lint-imports")
        code = subprocess.run([str(lint), "--no-cache"], cwd=tmp, env=env).returncode
        return code or subprocess.run([sys.executable, __file__, "--cycles"], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
