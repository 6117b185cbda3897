"""Float64 linear algebra shared by the memory and the rules: one Cholesky factor that fails with one
clear error, and the positive-definite solve built on it. Nothing here forms an explicit inverse."""

from __future__ import annotations

import torch
from torch import Tensor

from olam_edit.errors import SingularStatisticError, explain


def cholesky(A: Tensor, what: str, *, fix: str, got: object = None, expected: object = None) -> Tensor:
    """The lower Cholesky factor L ``[d, d]`` of a symmetric positive definite ``A`` (L L^T = A).

    ``what`` names the matrix in the error; a singular or indefinite ``A`` raises
    :class:`~olam_edit.errors.SingularStatisticError` with ``got`` / ``expected`` / ``fix``.
    """
    L_chol, info = torch.linalg.cholesky_ex(A)  # [d, d]
    if int(info) != 0:
        raise SingularStatisticError(explain(f"{what} is singular or not positive definite",
                                             got=got, expected=expected, fix=fix))
    return L_chol


def solve_spd(A: Tensor, B: Tensor, what: str, *, fix: str) -> Tensor:
    """A^{-1} B for symmetric positive definite ``A`` ``[d, d]`` and ``B`` ``[d, n]``, via :func:`cholesky`."""
    return torch.cholesky_solve(B, cholesky(A, what, fix=fix))  # [d, n]
