"""The README's first quick-start command, run as written on a fresh copy of the checkout.

It creates its own virtual environment and installs torch and the package into it from the package
registry (as a user's machine would), so this is the slowest test of the suite (a few minutes). The
second quick-start command is ``bash .ci/run``, which is what CI itself runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def readme_block(marker: str) -> str:
    """The first code block after ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```bash\n(.*?)```", text, flags=re.S)
    assert match, f"no {marker} block in the README"
    return match.group(1).strip()


def copy_checkout(dest: Path) -> Path:
    """Copy what a clone holds (tracked files and new files git does not ignore), nothing built."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_the_main_command_installs_and_runs_the_example(tmp_path: Path) -> None:
    command = readme_block("main-command")
    assert command.startswith("python3 -m venv .venv") and "olam-edit example" in command
    clone = copy_checkout(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PIP_"))}
    env |= {"OLAM_EDIT_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "venv" not in p)
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (clone / ".venv" / "bin" / "olam-edit").is_file()
    site = next((clone / ".venv" / "lib").glob("python*/site-packages"))
    assert (site / "olam_edit" / "adapters" / "face_dcgan" / "weights" / "face_dcgan64.safetensors").is_file()
    assert "wrote" in done.stdout and (clone / "out" / "edit" / "edit.safetensors").is_file()
    with Image.open(clone / "out" / "before_after.png") as im:
        assert im.size[0] >= 16 * 64 // 2 and im.size[1] >= 2 * 64  # 16 faces, before and after
