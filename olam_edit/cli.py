"""The ``olam-edit`` command line. Each subcommand lives in a small function; heavy imports are lazy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ._version import __version__
from .errors import OlamEditError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``fn(args) -> int`` as a subcommand whose arguments ``fn.configure`` adds."""

    def wrap(fn: Callable) -> Callable:
        COMMANDS[name] = (help, fn)
        return fn

    return wrap


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


def _add_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="generator: 'default', a path or a Hub id")
    p.add_argument("--layer", required=True, help="layer name (olam-edit stats --model M --list shows them)")
    p.add_argument("--samples", type=int, default=1000, help="number of latents (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the latents (default 1)")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--cache-dir", default=None, help="statistics cache (default ~/.cache/olam_edit/stats)")
    p.add_argument("--out", default=None, help="also write the statistic to this .safetensors file")


@command("stats", "collect (or reuse) a layer's key statistics C = E[k k^T]")
def cmd_stats(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_generator

    gen = load_generator(args.model)
    sm = gen.stats(args.layer, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                   cache_dir=args.cache_dir)
    print(f"{args.layer}: {sm.count} keys of dimension {sm.dim}; fingerprint {sm.manifest['fingerprint'][:16]}")
    if args.out:
        print(f"wrote {sm.save(args.out)}")
    return 0


cmd_stats.configure = _add_stats


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="end with one JSON line of the ratios")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test only; ratios not meaningful)")


@command("bench", "measure speed and size as ratios against in-process baselines")
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(as_json=args.json, quick=args.quick)


cmd_bench.configure = _add_bench


def build_parser() -> argparse.ArgumentParser:
    _load_more_commands()
    parser = argparse.ArgumentParser(prog="olam-edit", description="Rewrite one rule inside a generative model.")
    parser.add_argument("--version", action="version", version=f"olam-edit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


def _load_more_commands() -> None:
    """Subcommands live in the modules ``olam_edit/cli_*.py`` and register themselves on import."""
    import importlib
    import pkgutil
    from pathlib import Path

    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("cli_"):
            importlib.import_module(f".{info.name}", __package__)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OlamEditError, OSError) as e:  # bad input or a missing/unreadable file: one line, no traceback
        print(f"olam-edit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
