"""Interference of sequential text edits: 100 rules applied one after another, with and without
protecting the keys of the earlier ones (``protect=``, the null-space constraint of
:mod:`olam_edit.rules.text.maps`).

Setting (:func:`make_rules`): random embeddings of width :data:`TEXT_DIM`, on the cross-attention
``to_k`` / ``to_v`` of a stand-in with the tests' tiny diffusers UNet's 14 projections and shapes
(:data:`~olam_edit.eval.attention_stack.TINY_BLOCKS`; only these layers are read or written, so it
measures what the UNet would). Rule j has :data:`KEYS_PER_RULE` keys k and targets t = k + 0.5 e
(e standard normal); its target values are V*_j = W t at the moment it is solved (W: the weights
after rules 0..j-1). Every edit also gets the same 20 preserve prompts (4 token keys each) as
``preserve=``. Prior: identity (TIME / UCE), prior weight 0.1; factors kept in float64.

After the 100th edit, for each of the first 50 rules: its relative residual
||W_100 K_j^T - V*_j||_F / ||V*_j||_F over all 14 layers; the rule is *within tolerance* when it is at
most :data:`TOL` (1%). Also: its *drift* ||W_100 K_j^T - W_j K_j^T|| / ||W_j K_j^T|| (how far its
values moved after its own edit; with protection this is float64 round-off), and each preserve
prompt's relative change ||W_100 P^T - W_0 P^T|| / ||W_0 P^T||.

``python -m olam_edit.eval.text_sequential --json-out olam_edit/eval/figures/text_sequential.json``
writes the shipped figure (a few seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit.eval.attention_stack import TINY_BLOCKS, attention_stack, projection_names
from olam_edit.memory.handles import get_handle
from olam_edit.rules.text.solve import solve_text_rule

RULES, FIRST, KEYS_PER_RULE = 100, 50, 3
PRESERVE_PROMPTS, PRESERVE_TOKENS = 20, 4
TEXT_DIM = 512
TOL = 1e-2  # a rule is within tolerance when its relative residual is at most 1%
TARGET_NOISE = 0.5
SEED = 1414
PRIOR_WEIGHT = 0.1


@dataclass
class Rules:
    """Keys ``[k, d]`` and targets ``[k, d]`` of each rule, and the preserve keys ``[20 * 4, d]``."""

    keys: list[Tensor]
    targets: list[Tensor]
    preserve: Tensor


def make_rules(rules: int = RULES, dim: int = TEXT_DIM, keys_per_rule: int = KEYS_PER_RULE,
               seed: int = SEED) -> Rules:
    """The seeded random rules and preserve prompts described in the module docstring (float64)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    keys = [torch.randn(keys_per_rule, dim, generator=g, dtype=f64) for _ in range(rules)]  # [k, d] each
    targets = [k + TARGET_NOISE * torch.randn(k.shape, generator=g, dtype=f64) for k in keys]
    preserve = torch.randn(PRESERVE_PROMPTS * PRESERVE_TOKENS, dim, generator=g, dtype=f64)  # [80, d]
    return Rules(keys, targets, preserve)


def _values(weights: list[Tensor], K: Tensor) -> Tensor:
    """Every layer's values of keys ``[n, d]``, side by side: ``[n, sum of widths]``."""
    return torch.cat([K @ W.T for W in weights], 1)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def run_sequence(model: nn.Module, layers: list[str], rules: Rules, *, protect: bool, hard: bool = False,
                 first: int = FIRST, tol: float = TOL) -> dict[str, Any]:
    """Apply every rule in order to a float64 copy of ``model``; the numbers of the module docstring."""
    m = copy.deepcopy(model).double()
    weights = [get_handle(m, n).parameter for n in layers]
    w0 = [w.detach().clone() for w in weights]
    goals, after_own = [], []
    for j, (K, T) in enumerate(zip(rules.keys, rules.targets, strict=True)):
        with torch.no_grad():
            goals.append(_values(weights, T))  # V*_j with the weights of this moment
        held = torch.cat(rules.keys[:j]) if protect and j else None  # [p, d]
        fit = solve_text_rule(m, layers, K, T, prior="identity", prior_weight=PRIOR_WEIGHT, hard=hard,
                              preserve=rules.preserve, protect=held, factor_dtype=torch.float64)
        with torch.no_grad():
            for name, w in zip(layers, weights, strict=True):
                w += fit.fits[name].delta.dense(torch.float64)
            after_own.append(_values(weights, K))
    with torch.no_grad():
        final = [_values(weights, K) for K in rules.keys]
        p_now, p_then = _values(weights, rules.preserve), _values(w0, rules.preserve)  # [80, widths]
    residual = [_rel(final[j], goals[j]) for j in range(first)]
    own = [_rel(after_own[j], goals[j]) for j in range(first)]
    drift = [_rel(final[j], after_own[j]) for j in range(len(rules.keys))]
    per_prompt = [_rel(a, b) for a, b in zip(p_now.split(PRESERVE_TOKENS), p_then.split(PRESERVE_TOKENS), strict=True)]
    return {"variant": "hard" if hard else "soft", "protected": protect,
            "within_tolerance": sum(r <= tol for r in residual) / first,
            "residual_median": statistics.median(residual), "residual_own_median": statistics.median(own),
            "drift_max": max(drift), "preserve_change_median": statistics.median(per_prompt),
            "preserve_change_max": max(per_prompt)}


def sequential_figure(rules: int = RULES, first: int = FIRST, seed: int = SEED,
                      model: nn.Module | None = None) -> dict[str, Any]:
    """The four runs (soft / hard rule, without / with protection) and the settings, as the figure's JSON."""
    model = attention_stack(TINY_BLOCKS, TEXT_DIM, seed=0, dtype=torch.float64) if model is None else model
    layers = projection_names(model)
    data = make_rules(rules, TEXT_DIM, KEYS_PER_RULE, seed)
    rows = [run_sequence(model, layers, data, protect=p, hard=h, first=first) for h in (False, True)
            for p in (False, True)]
    meta = {"rules": rules, "first": first, "keys_per_rule": KEYS_PER_RULE, "text_dim": TEXT_DIM, "tol": TOL,
            "preserve_prompts": PRESERVE_PROMPTS, "preserve_tokens": PRESERVE_TOKENS, "seed": seed,
            "prior": "identity", "prior_weight": PRIOR_WEIGHT, "layers": len(layers),
            "model": "cross-attention to_k/to_v of the tests' tiny UNet (attention_stack TINY_BLOCKS)"}
    return {"rows": rows, "_meta": meta}


def sequential_table(figure: dict[str, Any]) -> str:
    """The README's table of the figure: one row per rule variant and protection."""
    m = figure["_meta"]
    lines = [f"{'rule':<6}{'protection':<12}{'first ' + str(m['first']) + ' within':>16}{'median resid.':>15}"
             f"{'max drift':>11}{'preserve change med / max':>27}"]
    for r in figure["rows"]:
        change = f"{r['preserve_change_median']:.1e} / {r['preserve_change_max']:.1e}"
        lines.append(f"{r['variant']:<6}{'protect=' if r['protected'] else 'none':<12}{r['within_tolerance']:>16.0%}"
                     f"{r['residual_median']:>15.2g}{r['drift_max']:>11.1e}{change:>27}")
    lines.append(f"{m['rules']} rules of {m['keys_per_rule']} keys (d = {m['text_dim']}) on {m['layers']} "
                 f"projections; within: relative residual <= {m['tol']:g} after the last edit")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the figure; with ``--json-out`` also write it (``_meta.command`` records the command)."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m olam_edit.eval.text_sequential", description=__doc__.split("\n")[0])
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--rules", type=int, default=RULES)
    args = ap.parse_args(argv)
    figure = sequential_figure(args.rules, min(FIRST, args.rules))
    figure["_meta"]["command"] = shlex.join(["python", "-m", "olam_edit.eval.text_sequential", *argv])
    text = json.dumps(figure, indent=1) + "\n"
    if args.json_out is not None:
        from olam_edit.files.atomic import atomic_write_bytes

        atomic_write_bytes(args.json_out, text.encode())
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
