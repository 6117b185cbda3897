"""The README's example code blocks, for tests that run them as they are."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(marker: str, section: str | None = None) -> str:
    """The first ```python block after ``marker`` (inside ``section``, a heading, when given)."""
    text = README.read_text(encoding="utf-8")
    if section is not None:
        text = text[text.index(section):]
    assert marker in text, f"the README has no {marker} marker"
    after = text[text.index(marker) + len(marker):]
    match = re.search(r"```python\n(.*?)```", after, flags=re.S)
    assert match, f"the README has no python block after {marker}"
    return match.group(1)
