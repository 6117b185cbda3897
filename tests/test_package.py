"""Packaging: adapters/ is installed as olam_edit.adapters only, and the core imports no framework."""

from __future__ import annotations

import subprocess
import sys

CODE_FIND = "import importlib.util as u, olam_edit.adapters as a; print(u.find_spec('adapters'), a.__name__)"
CODE_CORE = """
import sys
for blocked in ("diffusers", "gradio", "peft", "transformers", "adapters"):
    sys.modules[blocked] = None  # any import of these now fails
import olam_edit
print(sorted(m for m in sys.modules if m.startswith("olam_edit")))
"""


def _run(code: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_no_top_level_adapters_package(tmp_path) -> None:
    assert _run(CODE_FIND, tmp_path) == "None olam_edit.adapters"


def test_core_imports_without_frameworks_or_adapters(tmp_path) -> None:
    loaded = _run(CODE_CORE, tmp_path)
    assert "olam_edit" in loaded and "olam_edit.adapters" not in loaded


def test_version_and_public_names() -> None:
    import olam_edit

    assert olam_edit.__version__
    for name in ("SecondMoment", "collect_stats", "Edit", "Delta", "apply_edit", "revert_edit", "edited",
                 "context_directions", "rewrite_layer", "preview"):
        assert hasattr(olam_edit, name), name
