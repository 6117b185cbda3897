"""``olam-edit bench``: speed and size ratios against in-process baselines."""

from __future__ import annotations

import argparse

from olam_edit.cli.common import command


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="end with one JSON line of the ratios")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test only; ratios not meaningful)")


@command("bench", "measure speed and size as ratios against in-process baselines")
def cmd_bench(args: argparse.Namespace) -> int:
    from olam_edit.eval.bench import main as bench_main

    return bench_main(as_json=args.json, quick=args.quick)


cmd_bench.configure = _add_bench
