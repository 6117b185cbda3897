"""``olam-edit bench``: speed and size ratios against in-process baselines."""

from __future__ import annotations

import argparse

from olam_edit.cli.common import command


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="end with one JSON line of the ratios")
    p.add_argument("--json-out", default=None, metavar="PATH",
                   help="also write every number and how it was measured to PATH (JSON)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true",
                      help="time all 2001 steps of the reference's Adam fit and repeat everything 5 times "
                           "(default: 200 steps timed and scaled to 2001, 3 repeats)")
    mode.add_argument("--quick", action="store_true", help="tiny sizes (smoke test only; ratios not meaningful)")


@command("bench", "measure speed and size as ratios against in-process baselines")
def cmd_bench(args: argparse.Namespace) -> int:
    from olam_edit.eval.bench import main as bench_main
    from olam_edit.eval.figures import invoked_command

    return bench_main(as_json=args.json, quick=args.quick, full=args.full, json_out=args.json_out,
                      command=invoked_command("bench"))


cmd_bench.configure = _add_bench
