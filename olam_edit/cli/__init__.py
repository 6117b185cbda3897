"""The ``olam-edit`` command line: one module per command group, listed explicitly in :data:`MODULES`."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence

from olam_edit._version import __version__
from olam_edit.cli.common import commands_of
from olam_edit.errors import OlamEditError

#: The command modules, in the order ``olam-edit --help`` lists them. A new command group is one
#: module in this folder with :func:`~olam_edit.cli.common.command`-marked functions, added here.
MODULES = ("stats", "bench", "convert", "demo", "evaluate", "hub", "lora", "rewrite", "merge", "space")


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every marked command of every module in :data:`MODULES`."""
    parser = argparse.ArgumentParser(prog="olam-edit", description="Rewrite one rule inside a generative model.")
    parser.add_argument("--version", action="version", version=f"olam-edit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error (give it before the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for fn in _commands():
        p = sub.add_parser(fn.cli_name, help=fn.cli_help, description=fn.cli_help)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


def _commands() -> list:
    """The marked command functions of :data:`MODULES` (imported here; their heavy imports stay lazy)."""
    import importlib

    return [fn for name in MODULES for fn in commands_of(importlib.import_module(f"olam_edit.cli.{name}"))]


def error_line(command: str, error: BaseException) -> str:
    """The one line the CLI prints for ``error``: its message (``got``/``expected``/``fix`` included) with
    any line breaks folded into spaces."""
    text = re.sub(r"\s*\n\s*", " ", str(error).strip()) or type(error).__name__
    return f"olam-edit {command}: error: {text}"


def internal_error_line(command: str, error: BaseException) -> str:
    """The one line the CLI prints for an unexpected exception (a bug, not bad input): its type, the
    first line of its message, and how to see the traceback."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    kind = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"olam-edit {command}: internal error: {kind} (re-run with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; never a traceback unless ``--debug`` is given.

    * A project error (:class:`~olam_edit.errors.OlamEditError`, which covers every validation error)
      or an ``OSError`` (bad input, a missing or unreadable file) prints one line on stderr: 2.
    * Any other exception (a bug) prints one line, ``olam-edit CMD: internal error: <type>: <message>``
      with a hint to re-run with ``--debug``: 1. With ``olam-edit --debug CMD ...`` every exception propagates
      with its traceback instead. ``KeyboardInterrupt`` and ``SystemExit`` always propagate.

    Under torchrun (the env:// variables set, more than one process) every rank runs the command:
    statistics are collected once across the ranks (:mod:`olam_edit.memory.distributed`), rank 0
    alone prints, shows progress and writes files, and the other ranks stay silent except for
    their own error line.
    """
    args = build_parser().parse_args(argv)
    from olam_edit.memory import distributed  # after parsing: --help and --version stay light

    tag, stderr = "", sys.stderr
    try:
        rank = distributed.process_rank()
        tag = f"[rank {rank}] " if rank else ""
        with distributed.from_launcher(), _silenced(rank != 0):
            return int(args.func(args) or 0)
    except (OlamEditError, OSError) as e:  # bad input or a missing/unreadable file: one line, no traceback
        if args.debug:
            raise
        print(tag + error_line(args.command, e), file=stderr)
        return 2
    except Exception as e:  # a bug: one line and the way to see more
        if args.debug:
            raise
        print(tag + internal_error_line(args.command, e), file=stderr)
        return 1


@contextlib.contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    """Send stdout and stderr (prints, progress bars, warnings) to the null device when ``quiet``."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


if __name__ == "__main__":
    sys.exit(main())
