"""The text rule's map X (dW = R X^T) for many keys and under protection, in float64.

Sizes: ``n`` rule keys, ``m`` preserve keys, ``p`` protected keys, key dimension ``d``. Every step
here costs O(d^2 (n + m + p) + d^3) time and O(d (n + m + p) + d^2) memory: nothing is ever
``[n, n]`` or one ``[d, d]`` per rule.

**Protection** (sequential edits that keep earlier ones). The new update must leave the protected
keys K_o ``[d, p]`` (the keys earlier edits were fitted on) where they are: dW K_o = 0. That holds
exactly iff every row of dW lies in span(K_o)^perp, i.e. dW = M N^T for an orthonormal basis N
``[d, d']`` of that complement. Substituting into either objective of :mod:`.solve` gives the same
problem on reduced keys N^T K, N^T P and prior N^T C N, which is solved as usual (X') and lifted:

    X = N X'    soft:  X = N (N^T (w C + K K^T + P P^T) N)^{-1} N^T K
                hard:  the exact fit dW K = R of least E||dW k||^2 among dW with dW K_o = 0

For full-rank K_o this is the constrained optimum written with Lagrange multipliers,
X = (A^{-1} - A^{-1} K_o (K_o^T A^{-1} K_o)^{-1} K_o^T A^{-1}) K with A = w C + K K^T + P P^T (the
projection onto the complement taken in the A^{-1} metric), but it is computed through N: then
X^T K_o = X'^T (N^T K_o) vanishes to float64 round-off by construction, rather than through the
cancellation of two large terms, and rank-deficient K_o (collinear padding keys) needs no care.
Directions of K_o below :data:`PROTECT_RTOL` of its largest singular value count as not spanned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from olam_edit.errors import RequestError, explain
from olam_edit.memory.linalg import cholesky, solve_spd

PROTECT_RTOL = 1e-10  # relative singular value below which a protected direction is treated as absent
_SINGULAR_FIX = "Pass a larger ridge (e.g. 1e-2), use prior='identity', or a larger prompt corpus."
_EPS = float(torch.finfo(torch.float64).eps)


def gram_root(A: Tensor) -> Tensor:
    """A ``[d, n]`` with no more than ``d`` columns and the same A A^T: A itself, or R^T of QR(A^T)."""
    if A.shape[1] <= A.shape[0]:
        return A
    return torch.linalg.qr(A.T, mode="r").R.T  # [d, d]: (R^T)(R) = A A^T


def complement_basis(protect: Tensor) -> tuple[Tensor, int]:
    """An orthonormal basis N ``[d, d - q]`` of span(protect)^perp for keys ``[p, d]``, and q (the
    numerical rank of the protected keys). RequestError when they span every direction."""
    Ko = gram_root(protect.to(torch.float64).T)  # [d, <=d] same column space as K_o
    d = Ko.shape[0]
    U, S, _ = torch.linalg.svd(Ko, full_matrices=True)  # U [d, d]
    q = int((S > S.max() * PROTECT_RTOL).sum()) if S.numel() and float(S.max()) > 0 else 0
    if q >= d:
        raise RequestError(explain(f"the protected keys span all {d} directions of the key space, so no update "
                                   "can leave them unchanged", got=f"{protect.shape[0]} protected keys of rank {q}",
                                   expected=f"fewer than {d} independent protected keys",
                                   fix="Protect fewer edits (the most recent ones), or turn off padding keys."))
    return U[:, q:].contiguous(), q  # [d, d - q]


def soft_map(K: Tensor, P: Tensor, C: Tensor, prior_weight: float) -> Tensor:
    """X = (w C + K K^T + P P^T)^{-1} K ``[d, n]`` for keys K ``[d, n]`` and preserve keys P ``[d, m]``."""
    A = prior_weight * C + K @ K.T + P @ P.T  # [d, d]
    return solve_spd(A, K, "prior_weight C + K K^T", fix=_SINGULAR_FIX)  # [d, n]


def hard_map(K: Tensor, P: Tensor, C: Tensor) -> Tensor:
    """X = C^{-1} [K P] G^+ [:, :n] ``[d, n]`` with G = [K P]^T C^{-1} [K P], without forming G.

    With whitened keys Kw = L^{-1} [K P] = U S V^T (C = L L^T), Kw G^+ = U S^{-1} V^T, so X =
    L^{-T} U S^{-1} V[:n]^T. Singular values below sqrt(eps * max(d, n + m)) of the largest are cut,
    the cut LAPACK's least squares applies to G's (S^2) by default.
    """
    n = K.shape[1]
    L_chol = cholesky(C, "the prior C", fix=_SINGULAR_FIX)  # [d, d]
    Kw = torch.linalg.solve_triangular(L_chol, torch.cat([K, P], 1), upper=False)  # [d, n+m] whitened keys
    U, S, Vh = torch.linalg.svd(Kw, full_matrices=False)  # U [d, s], S [s], Vh [s, n+m]
    if not S.numel() or float(S.max()) <= 0:
        return torch.zeros_like(K)  # [d, n] all keys zero: nothing to fit
    keep = S > S.max() * (_EPS * max(Kw.shape)) ** 0.5
    Y = (U[:, keep] / S[keep]) @ Vh[keep, :n]  # [d, n] Kw G^+ restricted to the edited keys
    return torch.linalg.solve_triangular(L_chol.T, Y, upper=True)  # [d, n]


def protected_map(K: Tensor, P: Tensor, C: Tensor, prior_weight: float, hard: bool,
                  protect: Tensor | None) -> tuple[Tensor, int]:
    """X ``[d, n]`` of the soft or hard rule with dW K_o = 0 for ``protect`` keys ``[p, d]`` (see the
    module docstring), and the protected rank q (0 without protection)."""
    if protect is None or not protect.numel():
        return (hard_map(K, P, C) if hard else soft_map(K, P, C, prior_weight)), 0
    N, q = complement_basis(protect)  # [d, d']
    Kr, Pr, Cr = N.T @ K, N.T @ P, N.T @ C @ N  # [d', n], [d', m], [d', d'] the reduced problem
    Xr = hard_map(Kr, Pr, Cr) if hard else soft_map(Kr, Pr, Cr, prior_weight)  # [d', n]
    return N @ Xr, q  # [d, n]


__all__ = ["PROTECT_RTOL", "complement_basis", "gram_root", "hard_map", "protected_map", "soft_map"]
