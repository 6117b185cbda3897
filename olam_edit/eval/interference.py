"""How two spatial rules of one layer interfere: each alone, jointly, one after the other, and one after
the other with the first protected (``keep=``), measured on held-out seeds.

The two rules are called A and B (curated examples, each with its own evaluation box), each solved at its
request's own layer: an example's second stage (``"then"``, :mod:`olam_edit.rules.spatial.stages`) is
another layer's edit and not part of this measurement. Every case is
compared with the base model on the same held-out seeds (:data:`olam_edit.eval.evaluate.DEFAULT_HELDOUT`
without any seed either request uses), with the per-image measures of :func:`olam_edit.eval.evaluate.per_image`:

- ``in_A`` of a case: mean |change| of the case's images against the base images inside A's box
  (likewise ``in_B``). A case that does not contain A still has an ``in_A`` (B's spill into A's box);
- ``collateral``: mean |change| outside both boxes (one pixel set for every case, so the collaterals
  of the cases can be added and compared);
- ``kept_A`` of a case holding A: its ``in_A`` over A alone's ``in_A`` (the acceptance's "share of its
  solo in-region change"), with its standard error over the seeds (a paired ratio, delta method);
- ``match_A``: 1 - mean |case - A alone| / mean |A alone - base|, both inside A's box: 1 when A's box
  looks exactly as with A alone. Stricter than ``kept``: the same amount of change elsewhere in the
  box does not count, and B's own spill into A's box counts against it.

The cases (keys of :data:`CASES`): ``solo_A``, ``solo_B``; ``joint`` (one ``Rewriter.rewrite([A, B])``);
``A_then_B`` (A applied, then B solved on that model by a plain Rewriter and added) and
``A_then_B_kept`` (the same with ``keep=[A]``), and the two with B first. A solo or sequential solve
uses each rule's own smoothness and ridge; the joint solve takes one of each: their shared smoothness
(the larger when they differ) and the larger ridge (the more regularised directions;
:func:`joint_settings`). Every solve shares the first rule's key statistics: an edit of the layer
does not change the layer's keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from olam_edit.edit.core import Edit
from olam_edit.errors import RequestError, explain
from olam_edit.eval.evaluate import heldout_seeds, per_image
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.solve import DEFAULT_SMOOTHNESS
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.generator import Generator
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.rewriter import Rewriter

CASES = {"solo_A": "A alone", "solo_B": "B alone", "joint": "A + B jointly", "A_then_B": "A, then B",
         "A_then_B_kept": "A, then B keep=[A]", "B_then_A": "B, then A", "B_then_A_kept": "B, then A keep=[B]"}
RULES_OF = {"solo_A": "A", "solo_B": "B", "joint": "AB", "A_then_B": "AB", "A_then_B_kept": "AB",
            "B_then_A": "AB", "B_then_A_kept": "AB"}
MIN_KEPT = 0.9  # acceptance: with protection each rule keeps >= 90% of its solo in-region change
PICTURE_SEEDS = 6  # columns of the picture: the first held-out seeds
Rule = str | tuple[EditRequest, dict[str, Any]]  # an example name, or a request and its example settings
Log = Callable[[str], None]


@dataclass
class Interference:
    """The measures of every case (see the module docstring), what they were measured on, and the
    first :data:`PICTURE_SEEDS` images of the base and of each case (``images``, for the picture)."""

    rules: dict[str, str]
    seeds: list[int]
    per_seed: dict[str, dict[str, list[float]]]
    settings: dict[str, Any]
    images: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The figure: ``cases`` (aggregates), ``acceptance``, ``_per_seed`` (6 significant digits), ``_meta``."""
        rounded = {k: {f: [float(f"{x:.6g}") for x in xs] for f, xs in v.items()} for k, v in self.per_seed.items()}
        cases = {name: case_scores(rounded[name], rounded, name) for name in CASES}
        return {"rules": dict(self.rules), "cases": cases, "acceptance": acceptance(cases),
                "_per_seed": {"seeds": list(self.seeds), **rounded},
                "_meta": {"seeds": [self.seeds[0], self.seeds[-1], len(self.seeds)], **self.settings}}


# -- measures ------------------------------------------------------------------------------------
def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(list(xs), dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else 0.0


def ratio_se(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``mean(x) / mean(y)`` of paired per-seed values and its standard error (delta method:
    ``sd(x - R y) / (sqrt(n) mean(y))``; 0 for one seed)."""
    a, b = torch.tensor(list(x), dtype=torch.float64), torch.tensor(list(y), dtype=torch.float64)  # [n], [n]
    R = float(a.mean() / b.mean())
    if len(a) < 2:
        return R, 0.0
    return R, float((a - R * b).std() / (math.sqrt(len(a)) * b.mean()))


def case_scores(seed_values: dict[str, list[float]], every: dict[str, dict[str, list[float]]],
                name: str) -> dict[str, Any]:
    """A case's aggregates from the per-seed values of every case (its kept / match need the solo ones;
    None for a rule the case does not hold)."""
    out: dict[str, Any] = {}
    for key in ("in_A", "in_B", "out"):
        mean, se = _mean_se(seed_values[key])
        label = "collateral" if key == "out" else key
        out[label], out[f"{label}_se"] = mean, se
    for rule in "AB":
        held = rule in RULES_OF[name]
        solo = every[f"solo_{rule}"][f"in_{rule}"]
        kept = ratio_se(seed_values[f"in_{rule}"], solo) if held else (None, None)
        out[f"kept_{rule}"], out[f"kept_{rule}_se"] = kept
        out[f"match_{rule}"] = 1 - sum(seed_values[f"off_{rule}"]) / sum(solo) if held else None
    return out


def acceptance(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's two checks: with protection each rule keeps >= :data:`MIN_KEPT` of its solo in-region
    change when the other is added after it, and the joint collateral is at most the two solo ones'
    sum."""
    kept = {"A": cases["A_then_B_kept"]["kept_A"], "B": cases["B_then_A_kept"]["kept_B"]}
    solo_sum = cases["solo_A"]["collateral"] + cases["solo_B"]["collateral"]
    joint = cases["joint"]["collateral"]
    return {"kept_with_protection": kept, "min_kept": MIN_KEPT, "kept_met": min(kept.values()) >= MIN_KEPT,
            "joint_collateral": joint, "solo_collateral_sum": solo_sum, "collateral_met": joint <= solo_sum}


def _measure(base: Tensor, img: Tensor, solos: dict[str, Tensor], boxes: dict[str, Tensor],
             rules: str) -> dict[str, list[float]]:
    """Per-seed values of one case's images ``img`` ``[B, 3, H, W]`` (see the module docstring)."""
    values = {f"in_{r}": per_image(base, img, boxes[r])[0].tolist() for r in "AB"}
    values["out"] = per_image(base, img, boxes["A"] | boxes["B"])[1].tolist()
    for r in rules:
        values[f"off_{r}"] = per_image(solos.get(r, img), img, boxes[r])[0].tolist()
    return values


# -- the cases -----------------------------------------------------------------------------------
def resolve(rule: Rule) -> tuple[EditRequest, dict[str, Any]]:
    """An example's request and settings; RequestError unless the rule has an evaluation box."""
    if isinstance(rule, str):
        from olam_edit.rules.spatial.examples import load_example

        request, settings = load_example(rule)  # RequestError naming the examples
    elif isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], EditRequest):
        request, settings = rule
    else:
        raise RequestError(explain("a rule is an example name or a (request, settings) pair",
                                   got=type(rule).__name__, fix="e.g. interference(gen, 'add_sunglasses', ...)."))
    box = settings.get("region") if isinstance(settings, dict) else None
    if not (isinstance(box, list | tuple) and len(box) == 4 and all(isinstance(v, int) for v in box)):
        raise RequestError(explain("interference needs a rule with an evaluation box", got=request.name or "a request",
                                   expected="settings with region [y0, y1, x0, x1]",
                                   fix="Use a curated example (olam-edit example --list) or pass a region."))
    return request, settings


def joint_settings(sa: dict[str, Any], sb: dict[str, Any]) -> dict[str, float]:
    """The one smoothness and ridge of the joint solve: the larger of each (see the module docstring)."""
    return {"smoothness": max(sa.get("smoothness", DEFAULT_SMOOTHNESS), sb.get("smoothness", DEFAULT_SMOOTHNESS)),
            "ridge": max(sa.get("ridge", DEFAULT_RIDGE), sb.get("ridge", DEFAULT_RIDGE))}


def principal_cosine(Da: Tensor, Db: Tensor) -> float:
    """The largest cosine between the row spaces of two direction matrices ``[r, in]`` (orthonormal
    rows; 0 for orthogonal spans, 1 when they share a direction)."""
    Qa, Qb = torch.linalg.qr(Da.double().T)[0], torch.linalg.qr(Db.double().T)[0]  # [in, ra], [in, rb]
    return float(torch.linalg.svdvals(Qa.T @ Qb).max())


def _solver(s: dict[str, Any]) -> dict[str, float]:
    return {"smoothness": s.get("smoothness", DEFAULT_SMOOTHNESS), "ridge": s.get("ridge", DEFAULT_RIDGE)}


class _Cases:
    """Solves and renders the cases on one generator; the model is always left as it was found."""

    def __init__(self, gen: Generator, reqs: dict[str, EditRequest], solvers: dict[str, dict[str, float]],
                 seeds: list[int]) -> None:
        self.gen, self.reqs, self.solvers, self.seeds = gen, reqs, solvers, seeds
        self.layer = reqs["A"].layer
        self.stats: SecondMoment | None = None
        self.solo: dict[str, Edit] = {}

    def rewriter(self, solver: str, keep: Sequence[Edit] = ()) -> Rewriter:
        s = self.solvers[solver]
        rw = Rewriter(self.gen, self.layer, smoothness=s["smoothness"], ridge=s["ridge"], stats=self.stats,
                      progress=False, keep=keep)
        self.stats = rw.stats  # the layer's keys do not depend on its weight: one statistic serves every solve
        return rw

    def alone(self, rule: str) -> Tensor:
        self.solo[rule] = self.rewriter(rule).rewrite(self.reqs[rule])
        return self.gen.images(self.seeds, self.solo[rule])

    def joint(self) -> Tensor:
        return self.gen.images(self.seeds, self.rewriter("joint").rewrite([self.reqs["A"], self.reqs["B"]]))

    def then(self, first: str, second: str, kept: bool) -> Tensor:
        """Images with ``first`` alone's edit applied and ``second`` solved on that model and added."""
        edit = self.solo[first]
        edit.apply(self.gen.model)
        try:
            added = self.rewriter(second, keep=[edit] if kept else ()).rewrite(self.reqs[second])
            return self.gen.images(self.seeds, added)
        finally:
            edit.revert(self.gen.model)


def _steps(cases: _Cases) -> dict[str, Callable[[], Tensor]]:
    return {"solo_A": lambda: cases.alone("A"), "solo_B": lambda: cases.alone("B"), "joint": cases.joint,
            "A_then_B": lambda: cases.then("A", "B", False), "A_then_B_kept": lambda: cases.then("A", "B", True),
            "B_then_A": lambda: cases.then("B", "A", False), "B_then_A_kept": lambda: cases.then("B", "A", True)}


def _boxes(settings: dict[str, dict[str, Any]], size: tuple[int, int], n: int) -> dict[str, Tensor]:
    boxes = {}
    for rule, s in settings.items():
        y0, y1, x0, x1 = s["region"]
        mask = torch.zeros(size, dtype=torch.bool)  # [H, W]
        mask[y0:y1, x0:x1] = True
        boxes[rule] = mask.expand(n, *size)  # [B, H, W]
    return boxes


def _check_pair(ra: EditRequest, rb: EditRequest, a: Rule, b: Rule) -> None:
    if ra.layer != rb.layer:
        raise RequestError(explain("interference compares two rules of one layer", got=f"{ra.layer} and {rb.layer}",
                                   fix="Pick two rules of the same layer (a joint solve edits one layer)."))
    if (isinstance(a, str) and a == b) or ra is rb:
        raise RequestError(explain("interference needs two different rules", got=f"{a!r} twice",
                                   fix="e.g. --interference add_sunglasses close_mouth"))


def interference(generator: Generator, first: Rule, second: Rule, *, seeds: Sequence[int] | None = None,
                 log: Log | None = None) -> Interference:
    """Solve and measure every case of :data:`CASES` for rules A = ``first`` and B = ``second`` on
    held-out ``seeds`` (default: :data:`~olam_edit.eval.evaluate.DEFAULT_HELDOUT` without the requests'
    seeds); ``log`` gets one line as each case starts. The generator's model is left unchanged."""
    (ra, sa), (rb, sb) = resolve(first), resolve(second)
    _check_pair(ra, rb, first, second)
    held = heldout_seeds(ra, heldout_seeds(rb, seeds))
    base = generator.images(held)
    boxes = _boxes({"A": sa, "B": sb}, (base.shape[-2], base.shape[-1]), len(held))
    solvers = {"A": _solver(sa), "B": _solver(sb), "joint": joint_settings(sa, sb)}
    cases = _Cases(generator, {"A": ra, "B": rb}, solvers, held)
    per_seed: dict[str, dict[str, list[float]]] = {}
    images, solos = {"base": base[:PICTURE_SEEDS]}, {}
    for i, (name, step) in enumerate(_steps(cases).items(), 1):
        if log is not None:
            log(f"interference [{i}/{len(CASES)}] {CASES[name]} (A = {ra.name}, B = {rb.name}) ...")
        img = step()
        if name.startswith("solo_"):
            solos[name[-1]] = img
        per_seed[name] = _measure(base, img, solos, boxes, RULES_OF[name])
        images[name] = img[:PICTURE_SEEDS]
    settings = {"layer": ra.layer, "regions": {"A": list(sa["region"]), "B": list(sb["region"])},
                "collateral": "outside both regions", "solvers": solvers, "picture_seeds": held[:PICTURE_SEEDS],
                "directions_cosine": principal_cosine(*(cases.solo[r].deltas[ra.layer].directions for r in "AB"))}
    return Interference({"A": ra.name, "B": rb.name}, held, per_seed, settings, images)


# -- table and picture ---------------------------------------------------------------------------
def _pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if se is None else f"{100 * value:.1f} ± {100 * se:.1f}"


def interference_table(figure: dict[str, Any]) -> str:
    """The table of an interference figure: one row per case, then the acceptance lines."""
    r, n = figure["rules"], figure["_meta"]["seeds"][2]
    lines = [f"A = {r['A']}, B = {r['B']}; mean |change| against the base model on {n} held-out seeds",
             f"{'case':<22}{'in A':>8}{'in B':>8}{'collateral':>12}{'A kept %':>14}{'B kept %':>14}"
             f"{'A match %':>11}{'B match %':>11}"]
    for name, label in CASES.items():
        c = figure["cases"][name]
        lines.append(f"{label:<22}{c['in_A']:>8.4f}{c['in_B']:>8.4f}{c['collateral']:>12.4f}"
                     f"{_pct(c['kept_A'], c['kept_A_se']):>14}{_pct(c['kept_B'], c['kept_B_se']):>14}"
                     f"{_pct(c['match_A']):>11}{_pct(c['match_B']):>11}")
    a = figure["acceptance"]
    kept, ca, cb = a["kept_with_protection"], figure["cases"]["A_then_B_kept"], figure["cases"]["B_then_A_kept"]
    lines.append(f"with protection, kept when the other rule is added after it: A {_pct(kept['A'], ca['kept_A_se'])}"
                 f"%, B {_pct(kept['B'], cb['kept_B_se'])}% (>= {100 * a['min_kept']:.0f}%: "
                 f"{'yes' if a['kept_met'] else 'NO'})")
    lines.append(f"joint collateral {a['joint_collateral']:.4f} <= A alone + B alone {a['solo_collateral_sum']:.4f}: "
                 f"{'yes' if a['collateral_met'] else 'NO'}")
    return "\n".join(lines)


def save_interference_picture(result: Interference, path: Any) -> Any:
    """A grid PNG: rows the base and each case, columns the first held-out seeds; returns the path."""
    from olam_edit.eval.grid import save_grid

    rows = [result.images["base"], *(result.images[name] for name in CASES)]
    labels = ["base", *(CASES[name] for name in CASES)]
    return save_grid(rows, path, labels=labels, zoom=2)
