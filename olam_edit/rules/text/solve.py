"""The text rule's closed form on key / value tensors (no framework: any layers that read embeddings).

Each source token's embedding k_j (a *key*) must produce the value the layer gives the aligned
destination token t_j: v*_j = W0 t_j. With the residual R = V* - W0 K = W0 (T - K)^T and a prior C
over keys (the second moment of token embeddings over a prompt corpus, or I), with ``prior_weight`` w:

    soft:  dW = R K^T (w C + K K^T)^{-1}          (fit + w * E_k ||dW k||^2, minimised)
    hard:  dW = R (K^T C^{-1} K)^{-1} K^T C^{-1}  (dW K = R exactly, least E_k ||dW k||^2)

Both are dW = R X^T with X [d, n] independent of the layer, so every layer shares one orthonormal
basis D of span(X) and stores dW = (dW D^T) D = Lambda D: a factored delta of rank <= the number of
keys. Keys k with K^T C^{-1} k = 0 (orthogonal to the rule in the prior's metric) are left unchanged.
Everything runs in float64; the factors are stored in float32. Time and memory grow linearly with the
number of keys, never with their square or with one ``[d, d]`` matrix per rule (:mod:`.maps`,
:mod:`.fit`), so one solve of 1,000 rules is the supported way to write many. ``protect`` keys (those
of earlier edits) keep their current values exactly: the update is solved in the orthogonal
complement of their span, the constrained optimum (:mod:`.maps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit._version import __version__
from olam_edit.edit.core import Edit
from olam_edit.errors import EmptySelectionError, RequestError, ShapeMismatchError, explain
from olam_edit.memory.delta import Delta
from olam_edit.memory.directions import regularised
from olam_edit.memory.handles import LayerHandle, get_handle, handle_for
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.registry import make_recipe
from olam_edit.rules.text.fit import LayerFit, RuleProbes
from olam_edit.rules.text.maps import gram_root, protected_map

DEFAULT_PRIOR_WEIGHT = 0.1  # TIME's default weight w of the prior term
# Ridge of a data prior, relative to its mean eigenvalue; larger than the spatial rule's DEFAULT_RIDGE
# (1e-4, olam_edit.memory.directions) on purpose. A prompt corpus gives few distinct token embeddings
# (a few hundred prompts, and the many padding positions of each are nearly collinear), so C has many
# near-zero eigenvalues; the hard rule applies C^{-1}, and 1e-3 bounds dW along those directions.
TEXT_PRIOR_RIDGE = 1e-3
RANK_RTOL = 1e-10  # directions of X below this relative size carry no update
_ROLES = {"to_k": "keys: where each token is looked for", "to_v": "values: what each token writes"}


def as_keys(t: Tensor) -> Tensor:
    """Embeddings ``[n, d]`` or ``[B, T, d]`` as float64 keys ``[n', d]`` on the CPU (finite, checked)."""
    t = torch.as_tensor(t).detach().to(torch.float64).cpu()
    if t.ndim not in (2, 3) or not torch.isfinite(t).all():
        raise ShapeMismatchError(explain("keys must be finite [n, d] or [B, T, d] embeddings", got=tuple(t.shape)))
    return t.reshape(-1, t.shape[-1])  # [n', d]


def prior_label(prior: Any) -> str:
    """How a prior is named in manifests: the string itself, else its type (``SecondMoment``, ``Tensor``)."""
    return prior if isinstance(prior, str) else type(prior).__name__


def prior_matrix(prior: Any, dim: int, ridge: float = TEXT_PRIOR_RIDGE) -> Tensor:
    """C ``[dim, dim]`` as a float64 matrix from ``"identity"``, a SecondMoment or a tensor.

    A data prior is scaled to mean eigenvalue 1 (so ``prior_weight`` weighs it as much as TIME's
    ``w I``, only shaped by the data) and gets ``ridge`` added to its diagonal; the identity is used as is.
    """
    if isinstance(prior, str) and prior == "identity":
        return torch.eye(dim, dtype=torch.float64)
    if isinstance(prior, str) and prior == "corpus":
        raise RequestError(explain("prior='corpus' needs the pipeline's text encoder",
                                   fix="Use text_edit(pipe, ...), or pass prior=prompt_moment(pipe, corpus)."))
    if isinstance(prior, SecondMoment):
        C = prior.moment()  # [d, d]
    elif isinstance(prior, Tensor):
        C = prior.detach().to(torch.float64).cpu()  # [d, d]
    else:
        raise RequestError(explain("unknown prior", got=repr(prior)[:80], expected="'identity', 'corpus' (with a "
                                   "pipeline), a SecondMoment or a [d, d] tensor"))
    if C.shape != (dim, dim) or not torch.isfinite(C).all() or float(C.diagonal().mean()) <= 0:
        raise ShapeMismatchError(explain("the prior is not a finite [d, d] second moment of the keys",
                                         got=tuple(C.shape), expected=(dim, dim)))
    C = C / C.diagonal().mean()  # mean eigenvalue 1
    return regularised(C, ridge) if ridge > 0 else C  # C + ridge I


def solve_map(keys: Tensor, C: Tensor, prior_weight: float, hard: bool, preserve: Tensor | None = None,
              protect: Tensor | None = None) -> Tensor:
    """X ``[d, n]`` with dW = R X^T for residuals R ``[out, n]`` of the ``n`` keys ``[n, d]`` (float64).

    ``preserve`` keys ``[m, d]`` keep their values (zero residual) in both variants; ``protect`` keys
    ``[p, d]`` keep them exactly (dW k = 0, the constrained optimum of :mod:`.maps`).
    """
    K = keys.to(torch.float64).T  # [d, n]
    P = (preserve.to(torch.float64).T if preserve is not None and preserve.numel() else K[:, :0])  # [d, m]
    if not hard and prior_weight <= 0:
        raise RequestError(explain("the soft rule needs prior_weight > 0", got=prior_weight,
                                   fix="Pass hard=True for an exact fit."))
    return protected_map(K, P, C.to(torch.float64), prior_weight, hard, protect)[0]


def shared_directions(X: Tensor) -> Tensor:
    """Orthonormal rows spanning the column space of X ``[d, n]`` (numerical rank): D ``[r, d]``."""
    U, S, _ = torch.linalg.svd(gram_root(X), full_matrices=False)  # U [d, s], S [s], s = min(d, n)
    r = int((S > S.max() * RANK_RTOL).sum()) if S.numel() and float(S.max()) > 0 else 0
    if r == 0:
        raise EmptySelectionError(explain("the rule's keys are all zero", fix="Check the prompts and embeddings."))
    return U[:, :r].T.contiguous()  # [r, d]


def fit_layer(weight: Tensor, keys: Tensor, targets: Tensor, X: Tensor, D: Tensor) -> LayerFit:
    """The delta of one projection ``weight`` ``[out, d]``: R = W0 (targets - keys)^T, dW = R X^T, Lambda = dW D^T."""
    return RuleProbes(keys, targets, X, D).fit(weight)


def layer_handles(model: nn.Module, layers: Sequence[str]) -> dict[str, LayerHandle]:
    """The handles of ``layers`` from one walk of ``model`` (a wrong name: get_handle's clear error)."""
    modules = dict(model.named_modules())
    return {n: handle_for(n, modules[n]) if n and n in modules else get_handle(model, n) for n in layers}


def check_key_dim(model: nn.Module, layers: Sequence[str], dim: int,
                  handles: Mapping[str, LayerHandle] | None = None) -> None:
    """Every layer must read ``dim``-dimensional keys (embeddings of the right text encoder)."""
    handles = layer_handles(model, layers) if handles is None else handles
    for name in layers:
        got = handles[name].key_dim
        if got != dim:
            raise ShapeMismatchError(explain(f"{name} reads {got}-dimensional embeddings",
                                             got=f"keys of dimension {dim}", expected=got,
                                             fix="Encode the prompts with this model's text encoder(s)."))


@dataclass
class TextRuleFit:
    """The solved rule: one :class:`LayerFit` per layer, the shared rank and the settings used."""

    fits: dict[str, LayerFit]
    rank: int
    keys: int
    preserve_keys: int
    settings: dict[str, Any]
    protected_keys: int = 0
    protected_rank: int = 0

    @property
    def deltas(self) -> dict[str, Delta]:
        return {n: f.delta for n, f in self.fits.items()}

    def metrics(self) -> dict[str, Any]:
        """The manifest's metrics: the largest ||dW||/||W|| and residuals over the layers, the number of
        keys, and ||dW||/||W|| of each layer (``relative_norms``); with protected keys K_o also the
        largest ||dW K_o|| / ||W K_o|| (``protected_change``, float64, before the float32 factors)."""
        names = ("relative_norm", "residual_before", "residual_after", *(("protected_change",) if
                                                                           self.protected_keys else ()))
        worst = {k: max(getattr(f, k) for f in self.fits.values()) for k in names}
        return {**worst, "keys": self.keys, "relative_norms": {n: f.relative_norm for n, f in self.fits.items()}}

    def solver(self) -> dict[str, Any]:
        """The manifest's solver settings."""
        hard = self.settings["hard"]
        return {"method": "text_rule_hard" if hard else "text_rule", "prior_weight": self.settings["prior_weight"],
                "ridge": self.settings["ridge"], "prior": self.settings["prior"], "rank": self.rank,
                "value_space": "layer_output", "solve": "closed_form", "preserve_keys": self.preserve_keys,
                "protected_keys": self.protected_keys, "protected_rank": self.protected_rank,
                "protected_edits": list(self.settings.get("protected_edits", []))}

    def layer_notes(self) -> dict[str, str]:
        """One note per layer for the model card: its role and its relative residual before -> after."""
        return {n: f"{_ROLES.get(n.rsplit('.', 1)[-1], 'reads the text embeddings')}; residual "
                   f"{f.residual_before:.3g} -> {f.residual_after:.2g}" for n, f in self.fits.items()}


def solve_text_rule(model: nn.Module, layers: Sequence[str], keys: Tensor, targets: Tensor, *,
                    prior: Any = "identity", prior_weight: float = DEFAULT_PRIOR_WEIGHT, hard: bool = False,
                    preserve: Tensor | None = None, ridge: float = TEXT_PRIOR_RIDGE, protect: Tensor | None = None,
                    factor_dtype: torch.dtype = torch.float32) -> TextRuleFit:
    """Solve the rule on the linear ``layers`` of ``model`` for ``keys`` and aligned ``targets``
    (``[n, d]`` or ``[B, T, d]``); ``preserve`` keys keep their values (in the fit), ``protect`` keys
    exactly (dW k = 0 to float64 round-off: see :mod:`olam_edit.rules.text.maps`). The factors are
    stored in ``factor_dtype``. Time and memory grow linearly with the number of keys. Nothing is applied."""
    K, T = as_keys(keys), as_keys(targets)  # [n, d]
    if K.shape != T.shape:
        raise ShapeMismatchError(explain("keys and targets must pair up", got=f"{tuple(K.shape)} and {tuple(T.shape)}"))
    if not layers:
        raise EmptySelectionError(explain("the text rule has no layers to edit", got=type(model).__name__))
    handles = layer_handles(model, layers)
    check_key_dim(model, layers, K.shape[1], handles)
    C = prior_matrix(prior, K.shape[1], ridge)  # [d, d]
    P = as_keys(preserve) if preserve is not None else None  # [m, d]
    Ko = as_keys(protect) if protect is not None else None  # [p, d]
    if Ko is not None and Ko.shape[1] != K.shape[1]:
        raise ShapeMismatchError(explain("protected keys must have the rule keys' dimension",
                                         got=tuple(Ko.shape), expected=f"[p, {K.shape[1]}]"))
    if not hard and prior_weight <= 0:
        solve_map(K, C, prior_weight, hard)  # raises the one clear error
    Kd, Pd = K.T, (P.T if P is not None and P.numel() else K.T[:, :0])  # [d, n], [d, m]
    X, q = protected_map(Kd, Pd, C, prior_weight, hard, Ko)  # [d, n]
    probes = RuleProbes(K, T, X, shared_directions(X), Ko)
    fits = {n: probes.fit(handles[n].parameter, factor_dtype) for n in layers}
    settings = {"hard": hard, "prior_weight": prior_weight, "ridge": ridge, "prior": prior_label(prior)}
    return TextRuleFit(fits, int(probes.D.shape[0]), int(K.shape[0]), 0 if P is None else len(P), settings,
                       0 if Ko is None else len(Ko), q)


def text_rule_edit(model: nn.Module, fit: TextRuleFit, *, fields: Mapping[str, Any] | None = None,
                   component: str | None = None, base_model: str | None = None, revision: str | None = None,
                   rule: str | None = None, stats_fingerprint: str | None = None) -> Edit:
    """The :class:`~olam_edit.Edit` of a solved rule, its recipe stamped by the ``"text"`` rule kind.

    ``fields`` are the rule's own recipe entries (prompts, alignments, corpus, ...); the fit adds
    ``type``, ``prior``, ``fit``, ``prior_weight`` and ``keys`` unless ``fields`` sets them.
    """
    own = {"type": "text_rule", "prior": fit.settings["prior"], "fit": "exact" if fit.settings["hard"] else "soft",
           "prior_weight": fit.settings["prior_weight"], "keys": fit.keys, **(fields or {})}
    recipe = make_recipe("text", own, layer_notes=fit.layer_notes())
    return Edit.create(model, fit.deltas, base_model=base_model, revision=revision, component=component,
                       solver=fit.solver(), recipe=recipe, rule=rule, metrics=fit.metrics(),
                       stats_fingerprint=stats_fingerprint, created_with=f"olam-edit {__version__}")


__all__ = ["DEFAULT_PRIOR_WEIGHT", "RANK_RTOL", "TEXT_PRIOR_RIDGE", "LayerFit", "RuleProbes", "TextRuleFit",
           "as_keys", "check_key_dim", "fit_layer", "layer_handles", "prior_label", "prior_matrix", "shared_directions",
           "solve_map", "solve_text_rule", "text_rule_edit"]
