"""``olam-edit bench``: performance as ratios against a baseline run in the same process.

These machines are noisy, so nothing is compared with an absolute time: each number is a ratio of
two medians measured back to back. Targets are printed beside the numbers; missing one is reported,
not an error. Numbers in :data:`REPORTED` (the 2-process statistics speed-up, the peak memory of
one 1,000-rule text solve) are shown without a target, because what they can reach depends on the
machine. Each measurement prints a line on stderr when it starts and when it ends.

The reference code's iterative fit runs 2001 Adam steps; every step costs the same (one forward and
backward of the layer, a projection every 10 steps), so by default :data:`TIMED_REFERENCE_STEPS` of
them are timed and the time is scaled to 2001 (``reference_s`` is that estimate and
``reference_timed_steps`` says how many were run); likewise the 1,000 one-by-one text solves
(:mod:`olam_edit.eval.bench_many_rules`). ``full=True`` times all 2001 steps, all 1,000 solves and
five repeats of everything else. The text rule's rows against UCE's closed form are in
:mod:`olam_edit.eval.bench_text`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from olam_edit.edit.core import Edit
from olam_edit.eval.bench_distributed import bench_distributed_stats
from olam_edit.eval.bench_many_rules import RULES, TIMED_SINGLE, bench_many_rules
from olam_edit.eval.bench_text import bench_text_file, bench_text_solve
from olam_edit.eval.iterative import fit_adam_objective, fit_reference
from olam_edit.eval.timing import threads
from olam_edit.memory.collect import collect_stats
from olam_edit.memory.delta import Delta
from olam_edit.memory.directions import context_directions
from olam_edit.memory.handles import get_handle
from olam_edit.memory.solve import Problem, objective, solve_lambda
from olam_edit.memory.stats import SecondMoment

TARGETS = {"stats_overhead": 1.25, "accumulate_ratio": 1.4, "solve_time_ratio": 0.01,
           "solve_objective_ratio": 1.0, "size_ratio": 0.01, "many_rules_time_ratio": 0.05,
           "text_solve_ratio": 0.2, "text_file_ratio": 0.03}
# Numbers shown without a target: what they mean depends on the machine (see each one's module).
REPORTED = {"stats_2proc_speedup": "1-process over 2-process seconds of statistics collection (> 1: faster)",
            "many_rules_peak_mb": "peak MiB of resident memory one 1,000-text-rule solve adds"}
REFERENCE_STEPS = 2001  # the reference code's insert() runs this many Adam steps
TIMED_REFERENCE_STEPS = 200  # what the default run times of them (then scales to REFERENCE_STEPS)

Measurement = tuple[str, Callable[[], dict[str, float]]]


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired(candidate: Callable[[], Any], baseline: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """Run candidate and baseline alternately; the median of per-pair ratios resists machine noise.

    Returns (median ratio, median candidate seconds, median baseline seconds). Both run once untimed
    first, so neither pays for warming caches and allocators.
    """
    candidate()
    baseline()
    ratios, tc, tb = [], [], []
    for _ in range(repeats):
        tc.append(_median_time(candidate, 1))
        tb.append(_median_time(baseline, 1))
        ratios.append(tc[-1] / tb[-1])
    return statistics.median(ratios), statistics.median(tc), statistics.median(tb)


def bench_stats_overhead(repeats: int = 3, samples: int = 200) -> dict[str, float]:
    """collect_stats on one layer of the embedded face model vs the plain forward of the same samples."""
    from olam_edit.adapters import load_default

    gen = load_default()
    batches = [gen.latents(range(i, i + 25)) for i in range(0, samples, 25)]

    def plain() -> None:
        with torch.no_grad():
            for z in batches:
                gen.model(z)

    def stats() -> None:
        collect_stats(gen.model, ["main.12"], batches, progress=False)

    plain()
    ratio, t_stats, t_plain = _paired(stats, plain, repeats)
    return {"stats_overhead": ratio, "plain_forward_s": t_plain, "collect_stats_s": t_stats}


def bench_accumulate(repeats: int = 3, rows: int = 131072, dim: int = 512) -> dict[str, float]:
    """SecondMoment.add over ``rows`` keys vs one float64 X^T X of the same rows."""
    X = torch.randn(rows, dim, dtype=torch.float64)  # [M, 512]
    ratio, t_add, t_ref = _paired(lambda: SecondMoment(dim).add(X), lambda: X.T @ X, repeats)
    return {"accumulate_ratio": ratio, "add_s": t_add, "xtx_s": t_ref}


def _solve_problem(channels: int = 512, size: int = 32, crop: int = 8) -> tuple[Problem, torch.Tensor, torch.Tensor]:
    """A 512-channel 3x3 conv at 32x32 with a crop target, its C and a rank-1 D."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (1.0 / (channels * 9) ** 0.5))
    model = nn.Sequential(conv)
    x_full = torch.relu(torch.randn(4, channels, size, size, generator=g))  # [4, 512, 32, 32]
    h = get_handle(model, "0")
    C = SecondMoment(channels).add(h.keys_of(x_full)).moment()
    x = x_full[:1, :, 8 : 8 + crop + 2, 8 : 8 + crop + 2].double()  # key crop [1, 512, 10, 10]
    ctx = h.keys_of(x_full[1:2, :, 8 : 8 + crop, 8 : 8 + crop])  # [64, 512] context keys
    D = context_directions(ctx, None, C, rank=1)
    w0 = conv.weight.detach().double()
    lam_true = torch.randn(h.lam_of(w0, D).shape, generator=g, dtype=torch.float64)  # a rule to recover
    v_rule = h.linear_op(x, w0 + h.dense(lam_true, D))
    v_star = v_rule + 0.05 * v_rule.std() * torch.randn(v_rule.shape, generator=g, dtype=torch.float64)
    return Problem(h, x, v_star), D, C


def time_reference(problem: Problem, D: torch.Tensor, steps: int = REFERENCE_STEPS,
                   timed_steps: int | None = TIMED_REFERENCE_STEPS) -> dict[str, float]:
    """Seconds of the reference's ``steps`` Adam steps: all of them (``timed_steps`` None or >= steps),
    or ``timed_steps`` of them scaled by ``steps / timed_steps`` (every step costs the same).

    Two untimed steps first, so one-off set-up (allocations, kernel choice) is not counted.
    """
    n = steps if timed_steps is None else min(steps, timed_steps)
    fit_reference(problem, D, steps=2)
    t = _median_time(lambda: fit_reference(problem, D, steps=n), 1)
    return {"reference_s": t * steps / n, "reference_timed_s": t, "reference_timed_steps": n}


def bench_solve(repeats: int = 3, reference_steps: int = REFERENCE_STEPS, smoothness: float = 1.0,
                channels: int = 512, adam_steps: int = 3000,
                timed_steps: int | None = TIMED_REFERENCE_STEPS) -> dict[str, float]:
    """Closed form vs the reference's 2001 Adam steps (time; see :func:`time_reference` for how many are
    timed), and vs Adam on the same objective (value)."""
    problem, D, C = _solve_problem(channels)
    t_closed = _median_time(lambda: solve_lambda(problem, D, C, smoothness), repeats)
    ref = time_reference(problem, D, reference_steps, timed_steps)
    lam = solve_lambda(problem, D, C, smoothness)
    with threads(1):  # untimed; its tiny ops run several times faster on one thread when cores are shared
        lam_adam = fit_adam_objective(problem, D, C, smoothness, steps=adam_steps, lr=0.02)
    obj_closed = objective(problem, lam, D, C, smoothness)
    obj_adam = objective(problem, lam_adam, D, C, smoothness)
    return {"solve_time_ratio": t_closed / ref["reference_s"], "closed_form_s": t_closed, **ref,
            "solve_objective_ratio": obj_closed / obj_adam, "objective_closed": obj_closed,
            "objective_adam": obj_adam}


def bench_size() -> dict[str, float]:
    """Bytes of a rank-1 edit file of a 512x512x3x3 conv vs the dense float32 weight."""
    problem, D, C = _solve_problem()
    model = nn.Sequential(problem.handle.module)
    lam = solve_lambda(problem, D, C, 1.0).float()
    edit = Edit.create(model, {"0": Delta(lam, D.float(), problem.handle.layout)}, base_model="bench")
    with tempfile.TemporaryDirectory() as tmp:
        size = (edit.save(Path(tmp)) / "edit.safetensors").stat().st_size
    dense = problem.handle.parameter.numel() * 4
    return {"size_ratio": size / dense, "edit_bytes": size, "dense_bytes": dense}


def measurements(quick: bool = False, full: bool = False) -> list[Measurement]:
    """The benchmark's rows, in the order they run: (what is measured, a function returning its numbers).

    ``quick``: tiny sizes for tests (the ratios mean nothing); ``full``: five repeats and all 2001
    reference steps timed; default: three repeats and 200 reference steps timed, then scaled.
    """
    reps = 1 if quick else 5 if full else 3
    timed = None if full else TIMED_REFERENCE_STEPS
    rows: list[Measurement] = [
        ("statistics overhead: collect_stats vs the plain forward", lambda: bench_stats_overhead(
            reps, samples=50 if quick else 200)),
        ("accumulation: SecondMoment.add vs one float64 X^T X", lambda: bench_accumulate(
            reps, rows=8192 if quick else 131072)),
        ("solve: closed form vs the reference's Adam, and vs Adam on the same objective",
         (lambda: bench_solve(reps, reference_steps=21, channels=32, adam_steps=300, timed_steps=None)) if quick
         else (lambda: bench_solve(reps, timed_steps=timed))),
        ("size: a rank-1 edit file vs the dense weight", bench_size),
        ("distributed statistics: torchrun with 2 processes vs 1", lambda: bench_distributed_stats(quick)),
        ("many text rules: 1,000 in one solve vs one by one, on SD1.5-shaped cross-attention",
         lambda: bench_many_rules(quick, repeats=reps, timed_single=RULES if full else TIMED_SINGLE)),
        ("text rule solve: ours vs UCE's dense per-layer closed form, 77 tokens on SD1.5-shaped cross-attention",
         lambda: bench_text_solve(quick, repeats=reps)),
        ("text rule file: our 8-token edit vs the dense edited weights UCE saves", lambda: bench_text_file(quick)),
    ]
    return rows


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_bench(quick: bool = False, full: bool = False, progress: bool = True) -> dict[str, float]:
    """Every row of :func:`measurements`; with ``progress`` a line on stderr as each starts and ends.

    Also records ``total_s`` (wall seconds of the whole run).
    """
    rows = measurements(quick, full)
    results: dict[str, float] = {}
    t_all = time.perf_counter()
    if progress and not quick and not full:
        _say(f"bench: the reference's {REFERENCE_STEPS} Adam steps are timed over {TIMED_REFERENCE_STEPS} and "
             "scaled (--full times all of them)")
    for i, (what, fn) in enumerate(rows, 1):
        if progress:
            _say(f"bench [{i}/{len(rows)}] {what} ...")
        t0 = time.perf_counter()
        results.update(fn())
        if progress:
            _say(f"bench [{i}/{len(rows)}] done in {time.perf_counter() - t0:.1f} s")
    results["total_s"] = time.perf_counter() - t_all
    return results


def format_table(results: dict[str, float]) -> str:
    lines = [f"{'measure':<24}{'ratio':>12}{'target':>10}  met", "-" * 52]
    for key, target in TARGETS.items():
        ok = "yes" if results[key] <= target else "NO"
        lines.append(f"{key:<24}{results[key]:>12.6g}{'<= ' + str(target):>10}  {ok}")
    for key in (k for k in REPORTED if k in results):
        lines.append(f"{key:<24}{results[key]:>12.6g}{'none':>10}  -")
    lines.append("")
    lines += [f"  {k} = {v:.6g}" for k, v in results.items() if k not in TARGETS and k not in REPORTED]
    n = results.get("reference_timed_steps")
    if n is not None and n < REFERENCE_STEPS:
        lines.append(f"  (reference_s: {int(n)} of the reference's {REFERENCE_STEPS} Adam steps timed, scaled to "
                     f"{REFERENCE_STEPS}; --full times all of them)")
    return "\n".join(lines)


def bench_record(results: dict[str, float], command: str | None, full: bool) -> dict[str, Any]:
    """What ``--json-out`` writes: the ratios, every other number, and how and where they were measured."""
    shown = [*TARGETS, *REPORTED]
    return {"ratios": {k: results[k] for k in shown if k in results}, "targets": TARGETS,
            "details": {k: v for k, v in results.items() if k not in shown},
            "_meta": {"command": command, "full": full, "machine": platform.machine(),
                      "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}}


def main(as_json: bool = False, quick: bool = False, full: bool = False, json_out: str | Path | None = None,
         command: str | None = None) -> int:
    """Run the benchmark, print the table (and with ``as_json`` one JSON line of the ratios last)."""
    results = run_bench(quick=quick, full=full)
    print(format_table(results))
    if json_out is not None:
        from olam_edit.files.atomic import atomic_write_bytes

        record = bench_record(results, command, full)
        atomic_write_bytes(Path(json_out), (json.dumps(record, indent=1) + "\n").encode())
    if as_json:
        print(json.dumps({k: results[k] for k in [*TARGETS, *REPORTED] if k in results}))
    return 0
