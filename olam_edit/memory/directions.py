"""Context directions D: the rows that say *which keys* a rule applies to.

D spans the top-r generalised eigenvectors of (S, C + ridge I) with S = sum_j w_j^2 k_j k_j^T over
the mask-weighted context keys: the directions whose context energy is largest relative to their
energy over all keys. For one key this is d ~ C^{-1} k*, the paper's direction. Everything runs in
float64 with an explicit ridge; nothing is inverted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from olam_edit.errors import EmptySelectionError, NonFiniteError, RequestError, ShapeMismatchError, explain
from olam_edit.files.validate import summary
from olam_edit.memory.linalg import cholesky

# Ridge of the spatial rule's C, relative to its mean eigenvalue. C is collected over many samples and
# every key position of each (well conditioned), so a small ridge only guards round-off. The text rule's
# prompt-corpus prior uses its own, larger TEXT_PRIOR_RIDGE (olam_edit.rules.text.solve).
DEFAULT_RIDGE = 1e-4
# A context direction must carry at least this fraction of the strongest one's whitened energy; below
# it the "direction" is round-off of keys that span fewer dimensions than the rank asked.
CONTEXT_RANK_TOL = 1e-10


def check_rank(rank: object, key_dim: int) -> int:
    """``rank`` if it is an int in [1, key_dim] (D has ``rank`` orthonormal rows in key space), else
    RequestError: a larger rank is refused, never clamped."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= key_dim:
        raise RequestError(explain("the rank is out of range for this layer", got=summary(rank),
                                   expected=f"an integer in [1, {key_dim}] (the layer's key dimension)",
                                   fix="Use a small rank such as 1 to 8."))
    return rank


def _check_inputs(keys: Tensor, weights: Tensor, C: Tensor) -> None:
    d = C.shape[0]
    if C.shape != (d, d) or keys.ndim != 2 or keys.shape[1] != d or weights.shape != keys.shape[:1]:
        raise ShapeMismatchError(
            explain("context keys, weights and C do not fit together",
                    got=f"keys {tuple(keys.shape)}, weights {tuple(weights.shape)}, C {tuple(C.shape)}",
                    expected=f"keys [n, {d}], weights [n], C [{d}, {d}]")
        )
    for what, t in (("context keys", keys), ("context weights", weights), ("C", C)):
        if not torch.isfinite(t).all():
            raise NonFiniteError(explain(f"{what} contain NaN or Inf", fix="Check the inputs of the layer."))


def regularised(C: Tensor, ridge: float) -> Tensor:
    """C + ridge * mean(diag C) * I in float64 (the ridge is relative to C's scale)."""
    C = C.to(torch.float64)
    scale = float(C.diagonal().mean().clamp_min(1e-300))
    return C + ridge * scale * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)


def _cholesky(C_reg: Tensor, ridge: float) -> Tensor:
    """The Cholesky factor of C + ridge I (:func:`olam_edit.memory.linalg.cholesky`, one error message)."""
    return cholesky(C_reg, "the key statistic C", got=f"ridge={ridge}", expected="C + ridge*I positive definite",
                    fix="Increase ridge (e.g. 1e-3) or collect statistics over more samples.")


def context_directions(keys: Tensor, weights: Tensor | None, C: Tensor, rank: int = 1,
                       ridge: float = DEFAULT_RIDGE, within: Tensor | None = None) -> Tensor:
    """D ``[rank, d]`` (orthonormal rows) from context keys ``[n, d]`` with weights ``[n]``.

    Keys with weight 0 are ignored. Each row's sign is chosen so that it correlates positively with
    the weighted sum of whitened keys (only pictures care; D^T D is sign-free).

    ``within`` ``[d, q]`` (orthonormal columns, :func:`olam_edit.memory.protect.free_basis`) restricts D
    to its span: the same generalised eigenproblem solved for keys ``K N`` and ``N^T C N``, mapped back,
    so D k = 0 for every key k orthogonal to that span (the protected keys keep their values).
    """
    if within is not None:
        return _directions_within(keys, weights, C, rank, ridge, within)
    weights = torch.ones(keys.shape[0], dtype=keys.dtype, device=keys.device) if weights is None else weights
    _check_inputs(keys, weights, C)
    check_rank(rank, C.shape[0])
    kw = (keys.to(torch.float64) * weights.to(torch.float64)[:, None])[weights != 0]  # [n', d]
    if kw.shape[0] < rank or float(kw.abs().sum()) == 0.0:
        raise EmptySelectionError(
            explain("the context selects too few keys for the rank asked", got=f"{kw.shape[0]} keys",
                    expected=f"at least {rank} non-zero keys", fix="Paint a larger context region or lower the rank.")
        )
    L_chol = _cholesky(regularised(C.to(kw.device), ridge), ridge)
    Y = torch.linalg.solve_triangular(L_chol, kw.T, upper=False)  # [d, n'] = L^-1 K^T (whitened keys)
    evals, U = torch.linalg.eigh(Y @ Y.T)  # [d, d] eigvecs of L^-1 S L^-T, ascending (Y is wide: avoid its SVD)
    spanned = int((evals > CONTEXT_RANK_TOL * evals[-1].clamp_min(1e-300)).sum())
    if spanned < rank:
        raise EmptySelectionError(
            explain("the context keys span fewer directions than the rank asked", got=f"{spanned} directions",
                    expected=f"at least {rank}", fix=f"Use --rank {max(spanned, 1)} or select more varied regions.")
        )
    top = U[:, -rank:].flip(1)  # [d, r] largest first
    X = torch.linalg.solve_triangular(L_chol.T, top, upper=True)  # [d, r] generalised eigvecs
    Q, _ = torch.linalg.qr(X)  # [d, r] orthonormal basis of the same span
    D = Q.T.contiguous()  # [r, d]
    sign = torch.sign(D @ kw.sum(0))  # [r]
    return D * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]


def _directions_within(keys: Tensor, weights: Tensor | None, C: Tensor, rank: int, ridge: float,
                       within: Tensor) -> Tensor:
    """:func:`context_directions` inside span(``within`` ``[d, q]``), mapped back to ``[rank, d]``."""
    N = within.to(torch.float64)  # [d, q]
    if N.ndim != 2 or N.shape[0] != C.shape[0] or rank > N.shape[1]:
        raise RequestError(explain("the protected keys leave too little room for the rank asked",
                                   got=f"{N.shape[-1]} free directions of {C.shape[0]}", expected=f"at least {rank}",
                                   fix="Protect fewer keys (seeds) or lower the rank."))
    C64 = C.to(torch.float64)
    D_free = context_directions(keys.to(torch.float64) @ N, weights, N.T @ C64 @ N, rank, ridge)  # [r, q]
    return (D_free @ N.T).contiguous()  # [r, d], orthonormal rows inside span(N)


def single_key_direction(k_star: Tensor, C: Tensor, ridge: float = 0.0) -> Tensor:
    """The paper's d = C^{-1} k* normalised to unit length (float64, via a Cholesky solve)."""
    L_chol = _cholesky(regularised(C, ridge), ridge)
    d = torch.cholesky_solve(k_star.to(torch.float64)[:, None], L_chol)[:, 0]  # [d]
    return d / d.norm()
