"""``olam-edit bench``: speed and size as ratios against in-process baselines; ``--space``: the Space's
latency with one visitor and with several at once."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    p.add_argument("--space", action="store_true",
                   help="only the Space under load: p50 / p95 of Rewrite and Strength with 1 and 8 visitors at once "
                        "(gradio_client threads against a Gradio server started in this process, face model)")
    p.add_argument("--clients", type=int, default=8, metavar="N", help="visitors at once for --space (default 8)")
    p.add_argument("--rounds", type=int, default=None, metavar="R",
                   help="timed rewrite + strength pairs per visitor for --space (default 5; --quick 1, --full 10)")


@command("bench", "measure speed and size as ratios against in-process baselines")
def cmd_bench(args: argparse.Namespace) -> int:
    from olam_edit.eval.figures import invoked_command

    if args.space:
        return _space_bench(args, invoked_command("bench"))
    from olam_edit.eval.bench import main as bench_main

    return bench_main(as_json=args.json, quick=args.quick, full=args.full, json_out=args.json_out,
                      command=invoked_command("bench"))


cmd_bench.configure = _add_bench


def _space_bench(args: argparse.Namespace, command_line: str | None) -> int:
    """Start the Space on loopback in this process, visit it, print the table (and write the record)."""
    from olam_edit.errors import RequestError, explain
    from olam_edit.eval import bench_space

    if args.clients < 2:
        raise RequestError(explain("--clients must be at least 2 (it is compared with one visitor alone)",
                                   got=args.clients))
    rounds = args.rounds or (1 if args.quick else 10 if args.full else bench_space.ROUNDS)
    clients = (1, args.clients)
    with _space_server(quick=args.quick) as (url, meta):
        results, timings = bench_space.run_space_bench(url, clients, rounds)
    print(bench_space.format_space_table(results, clients))
    if args.json_out is not None:
        from olam_edit.files.atomic import atomic_write_bytes

        record = bench_space.space_record(results, timings, command=command_line, rounds=rounds, meta=meta)
        atomic_write_bytes(Path(args.json_out), (json.dumps(record, indent=1) + "\n").encode())
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k.endswith("_ratio")}))
    return 0


@contextlib.contextmanager
def _space_server(quick: bool) -> Iterator[tuple[str, dict]]:
    """The Space (embedded face model) served on a free loopback port from this process, closed on exit.

    Gradio's file cache goes to a fresh folder (the default, /tmp/gradio, is shared by every run on the
    machine). ``quick`` collects the key statistics over 50 samples instead of the Space's 1000.
    """
    from olam_edit.cli.demo import load_space_app

    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="olam-edit-bench-gradio-"))
    app = load_space_app()
    demo = app.build_app(stats_samples=50 if quick else None)
    port = _free_port()
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", _space_meta(demo)
    finally:
        demo.close()


def _space_meta(demo: object) -> dict:
    """How the served Space was set up: the machine, its torch threads and the queue's concurrency."""
    import platform

    import torch

    studio = demo.studio  # type: ignore[attr-defined]
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "torch": torch.__version__, "compare_images": studio.settings.compare_count,
            "stats_samples": studio.settings.stats_samples,
            "concurrency": demo._queue.default_concurrency_limit}  # type: ignore[attr-defined]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
