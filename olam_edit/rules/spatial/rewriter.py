"""Rewriter: the paper's context / copy / paste pipeline on one layer of a generator.

``Rewriter(generator, layer)`` works with any object that follows the Generator protocol
(:class:`olam_edit.rules.generator.Generator`: latents, keys_and_values, handle, stats, model and
the provenance an edit records). Statistics are collected (or read from the cache) on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from olam_edit._version import __version__
from olam_edit.edit.core import Edit
from olam_edit.errors import RequestError, explain
from olam_edit.memory.delta import Delta
from olam_edit.memory.directions import DEFAULT_RIDGE, check_rank, context_directions
from olam_edit.memory.protect import free_basis
from olam_edit.memory.solve import (
    DEFAULT_SMOOTHNESS,
    SolveReport,
    check_smoothness,
    check_solve_size,
    erase_delta,
    rewrite_layer,
)
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.generator import Generator, check_generator
from olam_edit.rules.registry import make_recipe
from olam_edit.rules.spatial.joint import (
    as_requests,
    check_examples,
    joint_directions,
    joint_problem,
    joint_recipe_fields,
    joint_smoothness,
)
from olam_edit.rules.spatial.keep import Protect, kept_keys, protected_keys
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.tensors import RuleTensors, composite, resize_mask, round_to_key_grid, weighted_keys

HEATMAP_QUANTILE = 0.999  # the reference outlines keys above the 99.9th percentile
REFINE_ITERS = 5  # fixed-point refinement steps of a handle that is not linear in its weight


@dataclass
class Heatmap:
    """Where a rule's keys fire: ``scores`` ``[B, h, w]`` and the ``threshold`` they are compared to."""

    scores: Tensor
    threshold: float

    @property
    def masks(self) -> Tensor:
        return self.scores > self.threshold  # [B, h, w]


class Rewriter:
    """Rewrite rules of ``layer`` in ``generator``.

    ``smoothness`` is the paper's 1/lambda: the weight of E_k ||dW k||^2 against the fit, relative to
    the fit size (a finite number >= 0). ``ridge`` regularises C (relative to its mean eigenvalue).
    A request's rank must be at most the layer's key dimension and what its context keys span, and
    the solve must fit the bounds of :func:`olam_edit.memory.solve.check_solve_size`; all of this is
    checked before statistics are collected (RequestError / EmptySelectionError, never a clamp).

    ``keep``: edits already applied to the model whose fitted keys must keep their values, and
    ``protect``: seeds, Selections or a key tensor ``[m, in]`` to keep as they are
    (:mod:`olam_edit.rules.spatial.keep`). Every later rewrite or erase then uses directions
    orthogonal to those keys (:mod:`olam_edit.memory.protect`), so their values do not change.
    """

    def __init__(self, generator: Generator, layer: str, *, smoothness: float = DEFAULT_SMOOTHNESS,
                 ridge: float = DEFAULT_RIDGE, stats: SecondMoment | None = None, stats_samples: int = 1000,
                 cache_dir: str | None = None, progress: bool = True, keep: Sequence[Edit] = (),
                 protect: Protect = None) -> None:
        self.generator, self.layer = check_generator(generator), layer  # RequestError naming missing members
        self.handle = generator.handle(layer)  # raises LayerNotFoundError / UnsupportedLayerError
        self.smoothness, self.ridge = check_smoothness(smoothness), ridge  # RequestError unless finite, >= 0
        self.stats_samples, self.cache_dir, self.progress = stats_samples, cache_dir, progress
        self._stats = stats
        self._quantiles: dict[tuple, float] = {}
        self.last_report: SolveReport | None = None
        self.keep, self.protect = list(keep), protect
        self._free: tuple[Tensor | None, int] | None = None

    @property
    def stats(self) -> SecondMoment:
        if self._stats is None:
            self._stats = self.generator.stats(self.layer, samples=self.stats_samples, cache_dir=self.cache_dir,
                                               progress=self.progress)
        return self._stats

    @property
    def C(self) -> Tensor:
        return self.stats.moment()  # [in, in] float64

    # -- rule tensors ----------------------------------------------------------------------------
    def _check(self, request: EditRequest) -> None:
        if request.layer != self.layer:
            raise RequestError(explain("the request is for another layer", got=request.layer, expected=self.layer,
                                       fix=f"Use Rewriter(generator, {request.layer!r})."))
        if request.model not in (None, "", self.generator.name):
            raise RequestError(explain("the request was made on another model", got=request.model,
                                       expected=self.generator.name, fix="Load that model (--model)."))

    def rule_tensors(self, request: EditRequest, paste: tuple[Tensor, Tensor] | None = None) -> RuleTensors:
        """Keys, target values, fit mask and context keys for ``request`` (:mod:`olam_edit.rules.spatial.tensors`),
        from its first copy / paste example (:meth:`example_tensors` gives every example's).

        ``paste``: the paste sample's key and value maps when already captured (a joint solve captures
        every rule's paste sample in one forward)."""
        self._check(request)
        gen = self.generator
        x_p, v_p = paste or gen.keys_and_values(self.layer, gen.latents([request.paste.seed]))
        _, v_c = gen.keys_and_values(self.layer, gen.latents([request.copy.seed]))
        keys, weights = self._context_keys(request, x_p)
        return self._pair_tensors(request.copy, request.paste, x_p, v_p, v_c, keys, weights)

    def example_tensors(self, request: EditRequest) -> tuple[Tensor, list[RuleTensors]]:
        """The paste samples' key maps ``[E, in, h, w]`` and the tensors of each of the request's ``E``
        copy / paste examples (the first is :meth:`rule_tensors`), all sharing its context keys."""
        if not request.pairs:
            rule = self.rule_tensors(request)
            return rule.x_paste, [rule]
        self._check(request)
        gen, examples = self.generator, request.examples
        x, v = gen.keys_and_values(self.layer, gen.latents([p.seed for _, p in examples]))  # [E, in, h, w], [E, ...]
        _, v_c = gen.keys_and_values(self.layer, gen.latents([c.seed for c, _ in examples]))
        keys, weights = self._context_keys(request, x[:1])
        return x, [self._pair_tensors(c, p, x[i : i + 1], v[i : i + 1], v_c[i : i + 1], keys, weights)
                   for i, (c, p) in enumerate(examples)]

    def _pair_tensors(self, copy: Selection, paste: Selection, x_p: Tensor, v_p: Tensor, v_c: Tensor, keys: Tensor,
                      weights: Tensor) -> RuleTensors:
        """One copy / paste example's tensors, from its captured maps and the rule's context keys."""
        grid = (v_p.shape[-2], v_p.shape[-1])  # the value grid (h, w)
        copy_m = resize_mask(copy.mask, grid).to(v_p.device)
        paste_m = resize_mask(paste.mask, grid).to(v_p.device)
        v_star, cbox, pbox, alpha = composite(v_p.double(), v_c.double(), copy_m, paste_m)
        fbox = round_to_key_grid(pbox, self.handle.value_ratio, grid)
        fit = torch.zeros(1, *grid, dtype=torch.float64, device=v_p.device)
        fit[0, fbox.y0 : fbox.y1, fbox.x0 : fbox.x1] = 1
        return RuleTensors(x_p.double(), v_star, fit, keys, weights, cbox, pbox, fbox, alpha)

    def _context_keys(self, request: EditRequest, x_paste: Tensor, batch: int = 50) -> tuple[Tensor, Tensor]:
        if not request.context:
            return weighted_keys(x_paste, request.paste.mask)
        return self.context_keys(request.context, batch)

    def context_keys(self, context: list[Selection], batch: int = 50) -> tuple[Tensor, Tensor]:
        """The keys ``[n, in]`` of this layer under the masks of the ``context`` selections, and their
        weights ``[n]`` (keys of weight 0 left out; ``n`` is 0 when every mask misses the key grid).

        One forward pass per ``batch`` selections. Raises RequestError for an empty ``context``.
        """
        if not context:
            raise RequestError(explain("there are no context selections", fix="Select at least one region."))
        parts = []
        for i in range(0, len(context), batch):  # one forward per batch of context samples
            chunk = context[i : i + batch]
            x, _ = self.generator.keys_and_values(self.layer, self.generator.latents([s.seed for s in chunk]))
            parts += [weighted_keys(x[j : j + 1], sel.mask) for j, sel in enumerate(chunk)]
        return torch.cat([k for k, _ in parts]), torch.cat([w for _, w in parts])  # [n, in], [n]

    def directions(self, request: EditRequest, rule: RuleTensors | None = None) -> Tensor:
        """D ``[rank, in]`` from the request's context keys (orthogonal to the kept and protected keys)."""
        check_rank(request.rank, self.handle.key_dim)
        rule = rule or self.rule_tensors(request)
        N, _ = self.free_directions()
        return context_directions(rule.context_keys, rule.context_weights, self.C, request.rank, self.ridge, within=N)

    def free_directions(self) -> tuple[Tensor | None, int]:
        """N ``[in, q]`` (orthonormal basis of the directions orthogonal to every kept and protected key,
        None when nothing is kept) and the number of those keys; computed once."""
        if self._free is None:
            kept = kept_keys(self, self.keep)  # [m, in]
            named, count = protected_keys(self, self.protect)  # [m', in] spanning the named keys
            self._free = (free_basis(torch.cat([kept, named]), self.handle.key_dim), int(kept.shape[0]) + count)
        return self._free

    def rules_tensors(self, requests: Sequence[EditRequest]) -> tuple[Tensor, list[list[RuleTensors]]]:
        """The paste samples' key maps ``[N, in, h, w]`` of every example of every request (one forward
        when each has one example) and each request's example tensors."""
        if len(requests) == 1 or any(r.pairs for r in requests):
            parts = [self.example_tensors(r) for r in requests]
            return torch.cat([x for x, _ in parts]), [rules for _, rules in parts]
        gen = self.generator
        x, v = gen.keys_and_values(self.layer, gen.latents([r.paste.seed for r in requests]))
        return x, [[self.rule_tensors(r, (x[i : i + 1], v[i : i + 1]))] for i, r in enumerate(requests)]

    # -- rewrite and erase -----------------------------------------------------------------------
    @torch.no_grad()
    def rewrite(self, requests: EditRequest | Sequence[EditRequest], *, smoothness: float | None = None) -> Edit:
        """Solve one request, or several of this layer jointly (:mod:`olam_edit.rules.spatial.joint`),
        in closed form and return the Edit (nothing is applied)."""
        smooth = check_smoothness(self.smoothness if smoothness is None else smoothness)
        reqs = as_requests(requests, self.layer)
        for r in reqs:
            self._check(r)
            check_rank(r.rank, self.handle.key_dim)
        check_examples(reqs)
        x, groups = self.rules_tensors(reqs)
        rules = [rule for group in groups for rule in group]
        problem = joint_problem(self.handle, x, rules)
        check_solve_size(problem, sum(r.rank for r in reqs), 1 if self.handle.linear_in_weight else REFINE_ITERS)
        D = joint_directions([self.directions(r, group[0]) for r, group in zip(reqs, groups, strict=True)])
        delta, report = rewrite_layer(problem, D, self.C, joint_smoothness(smooth, len(rules)), REFINE_ITERS)
        self.last_report = report
        settings: dict[str, Any] = {"smoothness": smooth}
        if len(reqs) > 1:
            settings.update(rules=len(reqs), ranks=[r.rank for r in reqs])
        if len(rules) > len(reqs):
            settings.update(examples=len(rules))
        return self._edit(reqs, delta, "rewrite", settings, report)

    @torch.no_grad()
    def erase(self, request: EditRequest) -> Edit:
        """The paper's removal rule on the request's context: W1 = W0 - W0 D^T D."""
        check_rank(request.rank, self.handle.key_dim)
        D = self.directions(request)
        delta = erase_delta(self.handle, D)
        return self._edit([request], delta, "erase", {}, None)

    def _edit(self, reqs: list[EditRequest], delta: Delta, method: str, settings: dict[str, Any],
              report: SolveReport | None) -> Edit:
        w0 = self.handle.effective_weight().detach()
        metrics = {"relative_norm": delta.relative_norm(w0)}
        if report is not None:
            metrics.update(residual_before=report.residual_before, residual_after=report.residual_after,
                           objective=report.objective, iterations=report.iterations)
        solver = {"method": method, "ridge": self.ridge, "rank": delta.rank, "value_space": "layer_output",
                  "solve": "closed_form", **settings, **self._kept_settings()}
        return Edit.create(self.generator.model, {self.layer: delta}, base_model=self.generator.name,
                           revision=self.generator.revision, solver=solver,
                           component=self.generator.component,
                           stats_fingerprint=self.stats.manifest.get("fingerprint"),
                           recipe=make_recipe("spatial", joint_recipe_fields(reqs, method)),
                           rule="; ".join(r.description or r.name for r in reqs), metrics=metrics,
                           license=self.generator.license,
                           created_with=f"olam-edit {__version__}")

    def _kept_settings(self) -> dict[str, Any]:
        if not self.keep and self.protect is None:
            return {}
        _, m = self.free_directions()
        return {"kept_edits": [e.fingerprint for e in self.keep], "protected_keys": m}

    # -- where the rule fires --------------------------------------------------------------------
    def context_heatmap(self, seeds: list[int], *, request: EditRequest | None = None,
                        directions: Tensor | None = None) -> Heatmap:
        """Scores of D k at every key of the samples ``seeds`` and the 99.9th-percentile threshold.

        For rank 1 the score is d . k (signed); for rank r it is ||D k||.
        """
        if directions is None:
            if request is None:
                raise RequestError(explain("context_heatmap needs a request or directions"))
            directions = self.directions(request)
        x, _ = self.generator.keys_and_values(self.layer, self.generator.latents(seeds))
        scores = _scores(x.double(), directions.double())  # [B, h, w]
        return Heatmap(scores, self._threshold(directions.double()))

    def _threshold(self, D: Tensor) -> float:
        return self.score_quantile(D, HEATMAP_QUANTILE)

    def score_quantile(self, D: Tensor, quantile: float, samples: int = 100) -> float:
        """The ``quantile`` of the heatmap score over keys of the statistics' own samples (cached)."""
        key = (tuple(D.flatten()[:8].tolist()), tuple(D.shape), quantile, samples)
        if key not in self._quantiles:
            gen = self.generator
            x, _ = gen.keys_and_values(self.layer, gen.latents(range(1_000_003, 1_000_003 + samples)))
            s = _scores(x.double(), D.double()).reshape(-1)
            self._quantiles[key] = float(torch.quantile(s[: 2**24].float(), quantile))
        return self._quantiles[key]


def _scores(x: Tensor, D: Tensor) -> Tensor:
    proj = torch.einsum("ri,bihw->brhw", D, x)  # [B, r, h, w]
    return proj[:, 0] if D.shape[0] == 1 else proj.norm(dim=1)
