"""Bench row: 1,000 text rules in one solve vs the same rules solved one by one, and the one solve's peak memory.

Setting: every cross-attention ``to_k`` / ``to_v`` of a Stable Diffusion 1.5-shaped UNet (16 blocks,
32 projections 768 -> 320 / 640 / 1280, random float32 weights: the stand-in of
:mod:`olam_edit.eval.attention_stack`, since the text rule reads and writes only these layers). A rule
is :data:`KEYS_PER_RULE` token keys with aligned targets (random, as ``padding=False`` gives a short
prompt); the soft rule with the identity prior (TIME / UCE), factors in float32 like any edit. Both
sides run on torch's default thread count (what a user gets: the one large solve's products use every
core, while 1,000 small solves gain little from threads), after one untimed solve.

``many_rules_time_ratio`` = seconds of one :func:`~olam_edit.rules.text.solve.solve_text_rule` of
all rules / seconds of solving them one by one. Every single-rule solve costs the same, so by
default :data:`TIMED_SINGLE` of them are timed and the time is scaled to the number of rules
(``many_rules_single_timed`` says how many ran).

``many_rules_peak_mb`` = the peak resident memory the one solve adds, in MiB: Linux's high-water
mark VmHWM, reset just before the solve (``/proc/self/clear_refs``, after freed memory is handed
back with ``malloc_trim``), minus the resident size at that moment. It counts everything the solve
allocates (torch tensors, LAPACK workspaces). Where that reset is unavailable it falls back to the
growth of ``ru_maxrss``, which can only under-report (a larger earlier peak hides it).
"""

from __future__ import annotations

import ctypes
import resource
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from olam_edit.eval.attention_stack import SD15_BLOCKS, SD15_TEXT_DIM, TINY_BLOCKS, attention_stack, projection_names
from olam_edit.eval.timing import seconds, threads
from olam_edit.rules.text.solve import solve_text_rule

RULES = 1000
KEYS_PER_RULE = 4
TIMED_SINGLE = 20
SEED = 2718


def _rss_kib(field: str) -> int | None:
    """A ``Vm*`` field of /proc/self/status in KiB, None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> int | None:
    """Hand freed memory back, reset VmHWM to the current VmRSS; the baseline in KiB (None: unsupported)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_kib("VmRSS")


def peak_mb(fn: Callable[[], Any]) -> float:
    """MiB of peak resident memory ``fn()`` adds (see the module docstring for how it is measured)."""
    base = _reset_peak()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    fn()
    hwm = _rss_kib("VmHWM")
    if base is not None and hwm is not None:
        return max(hwm - base, 0) / 1024
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0) / 1024


def _rules(rules: int, dim: int, keys_per_rule: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(rules * keys_per_rule, dim, generator=g, dtype=torch.float64)  # [n, d]
    return K, K + 0.5 * torch.randn(K.shape, generator=g, dtype=torch.float64)  # keys, targets [n, d]


def bench_many_rules(quick: bool = False, repeats: int = 3, rules: int = RULES,
                     timed_single: int = TIMED_SINGLE) -> dict[str, float]:
    """The row's numbers: ``many_rules_time_ratio``, ``many_rules_peak_mb`` and the seconds behind them."""
    blocks, dim = (TINY_BLOCKS, 32) if quick else (SD15_BLOCKS, SD15_TEXT_DIM)
    rules, timed_single, repeats = (20, 5, 1) if quick else (rules, min(timed_single, rules), repeats)
    model = attention_stack(blocks, dim, seed=0)
    layers = projection_names(model)
    K, T = _rules(rules, dim, KEYS_PER_RULE, SEED)
    k = KEYS_PER_RULE

    def joint() -> None:
        solve_text_rule(model, layers, K, T)

    def singles(count: int) -> None:
        for j in range(count):
            solve_text_rule(model, layers, K[j * k : (j + 1) * k], T[j * k : (j + 1) * k])

    with threads(torch.get_num_threads()):
        joint()  # untimed: one-off set-up (allocations, kernel choice)
        peak = peak_mb(joint)
        t_joint = statistics.median(seconds(joint) for _ in range(repeats))
        singles(1)
        t_single = statistics.median(seconds(lambda: singles(timed_single)) for _ in range(repeats))
    t_all_single = t_single * rules / timed_single
    return {"many_rules_time_ratio": t_joint / t_all_single, "many_rules_peak_mb": peak,
            "many_rules_joint_s": t_joint, "many_rules_one_by_one_s": t_all_single,
            "many_rules_single_timed": float(timed_single), "many_rules_rules": float(rules),
            "many_rules_keys": float(K.shape[0]), "many_rules_layers": float(len(layers))}


__all__ = ["KEYS_PER_RULE", "RULES", "TIMED_SINGLE", "bench_many_rules", "peak_mb"]
