"""The ``olam-edit`` console script the tests run: the one beside this interpreter, else on PATH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

_beside = Path(sys.executable).parent / "olam-edit"
EXE = str(_beside) if _beside.exists() else shutil.which("olam-edit")
