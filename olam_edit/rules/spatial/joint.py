"""Several spatial rules of one layer solved as one: the stacked problem and the joint directions.

The joint objective is the sum of every rule's own objective, each divided by its fit size, then
multiplied by the mean fit size (|m| is a fit mask's total, N the number of rules):

    sum_i a_i sum_p m_ip ||dv_ip - (v*_ip - v0_ip)||^2  +  smoothness * mean_i |m_i| * E_k ||dW k||^2

with a_i = mean_j |m_j| / |m_i|. So every rule's fit weighs as much as the average one whatever the
size of its box (no rule is fitted at another's expense), the smoothness term weighs as much
against each rule as it does when that rule is solved alone (it is not counted N times), and one
rule gives exactly the single-rule objective (a_1 = 1). In the solver's terms: the stacked masks
total N * mean |m|, so the stacked problem is solved with smoothness / N (:func:`joint_smoothness`).
The directions are the span of every rule's own directions (orthonormal rows; the rank is the sum
of the ranks, or less when spans coincide, and the edit records both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from olam_edit.errors import RequestError, explain
from olam_edit.files.validate import summary
from olam_edit.memory.handles import LayerHandle
from olam_edit.memory.solve import Problem
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.tensors import RuleTensors

SPAN_RTOL = 1e-8  # joint directions below this fraction of the strongest singular value coincide with others
MAX_JOINT_RULES = 64  # one forward batch of paste samples and one stacked least squares
MAX_RECIPE_DEPTH = 4  # merges of merges of ... read back from a file


def as_requests(requests: EditRequest | Sequence[EditRequest], layer: str) -> list[EditRequest]:
    """``requests`` as a non-empty list of EditRequests all for ``layer``; RequestError otherwise,
    naming the rules of other layers (one edit solves the rules of one layer)."""
    reqs = [requests] if isinstance(requests, EditRequest) else list(requests) if isinstance(requests, list | tuple) \
        else None
    if not reqs or not all(isinstance(r, EditRequest) for r in reqs):
        raise RequestError(explain("rewrite() takes an EditRequest or a non-empty list of them",
                                   got=summary(requests), fix="Load each rule with EditRequest.load(path)."))
    if len(reqs) > MAX_JOINT_RULES:
        raise RequestError(explain("too many rules for one joint solve", got=len(reqs),
                                   expected=f"at most {MAX_JOINT_RULES}", fix="Solve them in groups and merge."))
    other = [f"{r.name or f'rule {i + 1}'} ({r.layer})" for i, r in enumerate(reqs) if r.layer != layer]
    if other and len(reqs) > 1:  # a single request of another layer gets the Rewriter's own message
        raise RequestError(explain("a joint solve takes the rules of one layer", got=f"{', '.join(other)}",
                                   expected=f"rules for {layer!r}",
                                   fix="One edit per layer is solved: make a Rewriter for each layer, then "
                                       "Edit.merge the edits."))
    return reqs


def check_examples(reqs: Sequence[EditRequest]) -> None:
    """RequestError when the rules hold more copy / paste examples together than one stacked solve takes."""
    n = sum(len(r.examples) for r in reqs)
    if n > MAX_JOINT_RULES:
        raise RequestError(explain("too many copy / paste examples for one joint solve", got=n,
                                   expected=f"at most {MAX_JOINT_RULES} over all the rules",
                                   fix="Use fewer pairs, or solve the rules in groups and merge."))


def joint_problem(handle: LayerHandle, x: Tensor, rules: Sequence[RuleTensors]) -> Problem:
    """The stacked problem: key maps ``x`` ``[N, in, h, w]`` (one paste sample per example, as captured),
    targets and fit masks stacked, each rule's mask scaled by a_i (see the module docstring)."""
    if len(rules) == 1:
        r = rules[0]
        return Problem(handle, r.x_paste, r.v_star, r.fit_mask)
    totals = torch.stack([r.fit_mask.sum() for r in rules])  # [N]
    a = totals.mean() / totals  # [N]
    mask = torch.cat([r.fit_mask * a[i] for i, r in enumerate(rules)])  # [N, H, W]
    return Problem(handle, x, torch.cat([r.v_star for r in rules]), mask)


def joint_smoothness(smoothness: float, n_rules: int) -> float:
    """The smoothness of the stacked problem that gives the joint objective (see the module docstring)."""
    return smoothness / n_rules


def joint_directions(Ds: Sequence[Tensor]) -> Tensor:
    """Orthonormal rows ``[r, in]`` spanning every rule's directions (``Ds[0]`` itself for one rule)."""
    if len(Ds) == 1:
        return Ds[0]
    stacked = torch.cat([D.to(torch.float64) for D in Ds])  # [sum r_i, in]
    _, S, Vh = torch.linalg.svd(stacked, full_matrices=False)  # rows of Vh span the rows of stacked
    r = int((S > SPAN_RTOL * S[0]).sum())
    D = Vh[:r]  # [r, in]
    sign = torch.sign((D @ stacked.T).sum(1))  # [r] positive against the rules' own rows
    return (D * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]).contiguous()


def joint_recipe_fields(reqs: Sequence[EditRequest], method: str) -> dict[str, Any]:
    """The recipe's own fields: one request's JSON as it was, or ``rules`` for several."""
    if len(reqs) == 1:
        return {**reqs[0].to_json(), "method": method}
    return {"layer": reqs[0].layer, "rank": sum(r.rank for r in reqs), "model": reqs[0].model, "method": method,
            "name": "+".join(r.name or f"rule{i + 1}" for i, r in enumerate(reqs)),
            "rules": [r.to_json() for r in reqs]}


def requests_of(recipe: Any, depth: int = 0) -> list[tuple[EditRequest, str]]:
    """The (request, method) pairs a spatial recipe was solved from: one request, a joint ``rules`` list,
    or the ``parts`` of a merged edit (recursively, at most :data:`MAX_RECIPE_DEPTH` deep and
    :data:`MAX_JOINT_RULES` requests in all). A recipe comes from an edit file, so anything malformed
    or of another kind is a RequestError, never skipped."""
    if not isinstance(recipe, Mapping):
        raise RequestError(explain("the edit carries no recipe to rebuild its rules from", got=summary(recipe)))
    if recipe.get("kind") == "merged":
        parts = recipe.get("parts")
        if depth >= MAX_RECIPE_DEPTH or not isinstance(parts, list) or not all(isinstance(p, Mapping) for p in parts):
            raise RequestError(explain("a merged edit's recipe is malformed", got=summary(parts),
                                       expected=f"a list of parts, nested at most {MAX_RECIPE_DEPTH} deep"))
        pairs = [pair for part in parts for pair in requests_of(part.get("recipe"), depth + 1)]
    elif isinstance(recipe.get("rules"), list):
        method = "erase" if recipe.get("method") == "erase" else "rewrite"
        pairs = [(EditRequest.from_json(r), method) for r in recipe["rules"][: MAX_JOINT_RULES + 1]]
    elif "copy" in recipe and "paste" in recipe:
        pairs = [(EditRequest.from_json(dict(recipe)), "erase" if recipe.get("method") == "erase" else "rewrite")]
    else:
        raise RequestError(explain("the edit is not a spatial rule's edit", got=f"recipe kind {recipe.get('kind')!r}",
                                   expected="a spatial recipe (copy / paste / context)",
                                   fix="keep= protects spatial edits of this layer; text edits take preserve_edits=."))
    if len(pairs) > MAX_JOINT_RULES:
        raise RequestError(explain("the edit's recipe holds too many rules", got=f"more than {MAX_JOINT_RULES}",
                                   expected=f"at most {MAX_JOINT_RULES}"))
    return pairs
