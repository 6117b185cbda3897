"""The layout's house rules: declared layers and no import cycles, small modules and functions, and
README imports that work."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "olam_edit", ROOT / "adapters", ROOT / "spaces_app"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 40


def _python_files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_contracts_hold_and_there_is_no_cycle() -> None:
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "lint_layers.py")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "0 import cycles" in out.stdout


def test_a_violating_import_is_caught(tmp_path: Path) -> None:
    """The checker is not vacuous: the laid-out tree with one upward import fails it."""
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        import lint_layers
    finally:
        sys.path.pop(0)
    lint_layers.lay_out(tmp_path)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    with open(tmp_path / "olam_edit" / "memory" / "layout.py", "a") as f:
        f.write("\n\ndef _upward() -> None:\n    from olam_edit.edit.core import Edit  # noqa: F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "olam_edit.memory.layout -> olam_edit.edit.core" in out.stdout


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _python_files() if (n := len(p.read_text().splitlines())) >
            MAX_MODULE_LINES}
    assert not long, long


def test_no_function_over_40_lines() -> None:
    long = {}
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert not long, long


def test_every_readme_import_works() -> None:
    """Each ``from olam_edit... import ...`` line of the README's Python blocks imports as written."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    lines = sorted({ln.strip() for b in blocks for ln in b.splitlines()
                    if re.match(r"\s*(from olam_edit[\w.]* import|import olam_edit)", ln)})
    assert len(lines) >= 5, lines
    code = "\n".join(ln.split("#")[0] for ln in lines)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
