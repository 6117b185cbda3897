"""``python -m olam_edit.eval.figures README.md``: rewrite the README's figure tables from the shipped JSON."""

from __future__ import annotations

import sys
from pathlib import Path

from olam_edit.eval.figures import fill_readme


def main(argv: list[str]) -> int:
    """Rewrite each file named in ``argv`` in place; print which ones changed."""
    for name in argv:
        path = Path(name)
        text = path.read_text()
        new = fill_readme(text)
        if new != text:
            path.write_text(new)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
