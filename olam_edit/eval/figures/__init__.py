"""The figures the README shows, as JSON files written by the commands printed beside them.

Each ``*.json`` file here was written by one olam-edit command (recorded under ``_meta.command``):

* ``evaluate_add_sunglasses.json``: ``olam-edit evaluate add_sunglasses --region example --json-out ...``
* ``sweep_add_sunglasses.json``: ``olam-edit sweep add_sunglasses ... --json-out ...``
* ``bench.json``: ``olam-edit bench --json-out ...`` (timings of one machine, not checked by re-running)
* ``text_sequential.json``: ``python -m olam_edit.eval.text_sequential --json-out ...`` (100 sequential
  text rules with and without protection; a test re-runs it)
* ``interference_face.json``: ``olam-edit evaluate --interference add_sunglasses close_mouth --json-out ...``
  (with ``interference_face.png``, its picture)
* ``judge_NAME.json``: ``olam-edit evaluate NAME --judge --seeds 1000-1199 --json-out ... --picture ...``
  (the judge's rows and every judged face's numbers, with ``judge_NAME.png``: 16 faces)

The README's tables are :func:`readme_block` of these files, between ``<!-- figure: NAME -->`` and
the end of the code block after it; ``python -m olam_edit.eval.figures README.md`` rewrites them
from the JSON (:func:`fill_readme`), and a test checks that they agree. Evaluation and sweep files
keep every seed's in-region and collateral change (``_per_seed``), so a run on some of the seeds
can be compared with them seed by seed.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from olam_edit.errors import RequestError, explain

MARKER = re.compile(r"<!-- figure: ([a-z0-9_]+) -->\n+```text\n.*?```", re.S)


def names() -> list[str]:
    """The figures shipped, sorted (file names without ``.json``)."""
    return sorted(p.name[: -len(".json")] for p in importlib.resources.files(__name__).iterdir()
                  if p.name.endswith(".json"))


def load_figure(name: str) -> dict[str, Any]:
    """The JSON of figure ``name`` (RequestError naming the shipped ones if there is none)."""
    if name not in names():
        raise RequestError(explain(f"no figure named {name!r}", expected=f"one of {names()}"))
    return json.loads((importlib.resources.files(__name__) / f"{name}.json").read_text())


def invoked_command(name: str, argv: Sequence[str] | None = None) -> str | None:
    """The command line as typed, from subcommand ``name`` on (``"olam-edit evaluate ..."``), read from
    ``argv`` (default ``sys.argv``); None when it holds no such subcommand (a call from Python)."""
    args = list(sys.argv if argv is None else argv)[1:]
    if name not in args:
        return None
    return "olam-edit " + shlex.join(args[args.index(name) :])


def _pm(value: float, se: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} ± {se:.{digits}f}"


SCORE_HEAD = f"{'in_region':>11}{'collateral':>12}{'ratio ± s.e.':>15}{'generality ± s.e.':>19}"


def _score_row(label: str, s: dict[str, Any], width: int) -> str:
    return (f"{label:<{width}}{s['in_region']:>11.4f}{s['collateral']:>12.4f}"
            f"{_pm(s['ratio'], s['ratio_se']):>15}{_pm(s['generality'], s['generality_se']):>19}")


def evaluate_table(figure: dict[str, Any]) -> str:
    """The table of an evaluation figure: each method, then each baseline after its checkpoint steps."""
    methods = {k: v for k, v in figure.items() if not k.startswith("_")}
    checkpoints = {f"{k.split('@')[0]}, {k.split('@')[1]} steps": v for k, v in figure.get("_checkpoints", {}).items()}
    lines = [f"{'method':<26}{SCORE_HEAD}"]
    lines += [_score_row(name, s, 26) for name, s in {**methods, **checkpoints}.items()]
    return "\n".join(lines)


def sweep_table(figure: dict[str, Any]) -> str:
    """The table of a sweep figure: one row per layer and rank, most local first."""
    head = f"{'layer':<12}{'rank':>5}{SCORE_HEAD}"
    lines = [head]
    for r in figure["rows"]:
        if "error" in r:
            lines.append(f"{r['layer']:<12}{r['rank']:>5}  failed")
        else:
            lines.append(_score_row(f"{r['layer']:<12}{r['rank']:>5}", r, 17))
    return "\n".join(lines)


def bench_table(figure: dict[str, Any]) -> str:
    """The table of a benchmark figure: each ratio against its target, then the reference's timing."""
    lines = [f"{'measure':<24}{'ratio':>12}{'target':>10}  met"]
    for key, value in figure["ratios"].items():
        target = figure["targets"].get(key)
        if target is None:  # reported without a target
            lines.append(f"{key:<24}{value:>12.3g}{'none':>10}  -")
            continue
        lines.append(f"{key:<24}{value:>12.3g}{'<= ' + str(target):>10}  {'yes' if value <= target else 'NO'}")
    d = figure["details"]
    lines.append(f"reference: {d['reference_timed_steps']:.0f} Adam steps timed ({d['reference_timed_s']:.1f} s), "
                 f"{d['reference_s']:.0f} s for 2001; whole run {d['total_s'] / 60:.1f} min")
    return "\n".join(lines)


def interference_table(figure: dict[str, Any]) -> str:
    """The table of an interference figure (:func:`olam_edit.eval.interference.interference_table`)."""
    from olam_edit.eval.interference import interference_table as table

    return table(figure)


def text_table(figure: dict[str, Any]) -> str:
    """The table of the sequential text-rule figure (:func:`olam_edit.eval.text_sequential.sequential_table`)."""
    from olam_edit.eval.text_sequential import sequential_table

    return sequential_table(figure)


def judge_table(figure: dict[str, Any]) -> str:
    """The table of a judge figure: each method's visible effect, identity, drift and detection."""
    lo, hi, n = figure["seeds"]
    lines = [f"{figure['effect']}: {figure['what']}",
             f"seeds {lo}-{hi}: {figure['faces']} of {n} faces detected, {figure['eligible']} the rule can change",
             f"{'method':<16}{'effect':>8}{'rank-1':>8}{'identity':>10}{'drift':>8}{'detected':>10}"]
    for name, r in figure["rows"].items():  # shares to a tenth of a point: 79.5% is not rounded up to the bar
        lines.append(f"{name:<16}{r['effect']:>8.1%}{r['rank1']:>8.1%}{r['identity']:>10.3f}{r['drift']:>8.3f}"
                     f"{r['detected']:>10.1%}")
    return "\n".join(lines)


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {"evaluate": evaluate_table, "sweep": sweep_table,
                                                      "bench": bench_table, "interference": interference_table,
                                                      "text": text_table, "judge": judge_table}


def readme_block(name: str) -> str:
    """What the README shows for figure ``name``: its marker and its table as a ``text`` code block."""
    table = TABLES[name.split("_", 1)[0]](load_figure(name))
    return f"<!-- figure: {name} -->\n\n```text\n{table}\n```"


def fill_readme(text: str) -> str:
    """``text`` with every figure block (marker and the code block after it) rewritten from its JSON."""
    return MARKER.sub(lambda m: readme_block(m.group(1)), text)


def sweep_record(rows: list[dict[str, Any]], per_seed: dict[str, dict[str, list[float]]], seeds: list[int],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """What ``olam-edit sweep --json-out`` writes: the rows, each row's per-seed changes (keyed
    ``"main.6 r1"``, 6 significant digits) and ``_meta`` (``settings``: the command, region, ...)."""
    rounded = {k: {f: [float(f"{x:.6g}") for x in xs] for f, xs in v.items()} for k, v in per_seed.items()}
    return {"rows": rows, "_per_seed": {"seeds": list(seeds), **rounded},
            "_meta": {"seeds": [seeds[0], seeds[-1], len(seeds)], **settings}}
