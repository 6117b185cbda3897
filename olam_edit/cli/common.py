"""What every command module shares: the command marker and argument parsers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def command(name: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark ``fn(args) -> int`` as the subcommand ``name``; ``fn.configure(parser)`` adds its arguments.

    Marking only sets attributes on ``fn`` (no global registry): :data:`olam_edit.cli.MODULES` lists
    the modules whose marked functions become subcommands.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.cli_name, fn.cli_help = name, help  # type: ignore[attr-defined]
        return fn

    return wrap


def commands_of(module: Any) -> list[Callable[..., Any]]:
    """The functions of ``module`` marked with :func:`command`, in definition order."""
    return [fn for fn in vars(module).values() if callable(fn) and hasattr(fn, "cli_name")]


def parse_seeds(text: str) -> list[int]:
    """``"0-15"``, ``"3,5,9"`` or ``"0-3,10"`` -> a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}; use e.g. 0-15 or 1,4,9") from None
    return seeds


def check_out(out: Path, force: bool) -> None:
    """Refuse to write into an existing non-empty folder (or over a file) unless ``force``
    (OutputExistsError naming ``--force``)."""
    from olam_edit.errors import OutputExistsError, explain

    if force or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    raise OutputExistsError(explain(f"{out} already exists and is not empty", expected="a new or empty folder",
                                    fix="Choose another --out, or pass --force to replace what is there."))
