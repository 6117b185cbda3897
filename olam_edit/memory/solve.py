"""The closed-form rewrite: Lambda for fixed directions D, in one least-squares solve.

With D fixed the change of the layer's value map is linear in Lambda: dv = op(D x, Lambda), where
op is the layer's own linear operation. The paper's objective

    sum_p m_p ||dv_p - (v*_p - v0_p)||^2  +  smoothness * sum(m) * E_k ||dW k||^2

is a ridge regression over J = r * taps coefficients per output channel; the basis responses are the
same for every output channel, so one least-squares system with J unknowns and ``out``
right-hand sides solves it (the penalty enters as extra rows, so the normal equations' squared
condition number is never formed). For a
conv, E_k ||dW k||^2 = sum over taps of lam_t^T (D C D^T) lam_t, so the penalty is kron(D C D^T, I).
Handles whose output is not linear in W (StyleGAN2 demodulation) say so with ``linear_in_weight =
False`` and implement ``LayerHandle.freeze(w_eff)``; then the solve is repeated with the
nonlinearity frozen at the current weight until the residual stops falling (fixed-point
refinement). A frozen nonlinearity that scales each output channel by its own factor (the
demodulation) is ``LayerHandle.output_scale``; the solve then weights each output channel's rows
by it (one batched least squares instead of one shared one). The hooks' defaults (no-op freeze, no
factor) are exact for linear layers, so the solver calls them on every handle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from olam_edit.errors import NonFiniteError, ShapeMismatchError, explain
from olam_edit.memory import layout as L
from olam_edit.memory.delta import Delta
from olam_edit.memory.handles import LayerHandle

DEFAULT_SMOOTHNESS = 1.0


@dataclass
class Problem:
    """One rewrite problem in float64: keys map ``x``, target values ``v_star``, fit mask ``m``."""

    handle: LayerHandle
    x: Tensor  # key map, e.g. [B, in, h, w] or [n, in]
    v_star: Tensor  # target value map, same shape as handle.linear_op(x, W)
    mask: Tensor | None = None  # [same as v_star without the channel axis] fit weights, default 1
    w0: Tensor = field(default=None)  # type: ignore[assignment]  # effective base weight (float64); default: the handle's

    def __post_init__(self) -> None:
        self.x = self.x.to(torch.float64)
        self.v_star = self.v_star.to(torch.float64)
        if self.w0 is None:
            self.w0 = self.handle.effective_weight().detach().clone().to(torch.float64)
        v0 = self.handle.linear_op(self.x, self.w0)
        if v0.shape != self.v_star.shape:
            raise ShapeMismatchError(explain("target values do not match the layer's value map",
                                             got=tuple(self.v_star.shape), expected=tuple(v0.shape)))
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.v_star).all()):
            raise NonFiniteError(explain("keys or target values contain NaN or Inf",
                                         fix="Check the request's images and masks."))

    def flat_mask(self, n_pos: int) -> Tensor:
        """Fit weights as ``[P]`` (ones when no mask was given)."""
        if self.mask is None:
            return torch.ones(n_pos, dtype=torch.float64, device=self.x.device)
        return self.mask.to(torch.float64).reshape(-1)


def _channel_last(layout: str, v: Tensor) -> Tensor:
    """Value map -> ``[P, channels]`` (positions by channels)."""
    return v.reshape(-1, v.shape[-1]) if layout == L.LINEAR else v.movedim(1, -1).reshape(-1, v.shape[1])


def basis_responses(handle: LayerHandle, x: Tensor, D: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """``[P, J]``: the value-map change of each unit coefficient (shared by all output channels).

    For a handle with an output scale (see :func:`output_scale`) these are the unscaled responses
    (``LayerHandle.unscaled_delta_response``, which is ``delta_response`` when there is no scale).
    """
    r = D.shape[0]
    J = r * (1 if handle.layout == L.LINEAR else int(torch.tensor(kernel).prod()))
    eye = torch.eye(J, dtype=torch.float64, device=x.device)  # [J, J] one "output channel" per coef
    lam_basis = L.lam_from_coefs(handle.layout, eye, r, kernel)
    return _channel_last(handle.layout, handle.unscaled_delta_response(x, lam_basis, D))


def output_scale(handle: LayerHandle, x: Tensor, n_pos: int) -> Tensor | None:
    """``[P, out]`` per-position, per-output-channel factor of a handle's (frozen) linear map, or None.

    ``LayerHandle.output_scale(x) -> [B, out] | None`` (default None) with ``delta_response ==
    output_scale[:, :, None, None] * unscaled_delta_response`` (StyleGAN2: the demodulation held
    fixed). The factor is broadcast over the positions of each sample.
    """
    scale = handle.output_scale(x)
    if scale is None:
        return None
    scale = scale.to(torch.float64)  # [B, out]
    per_sample = n_pos // scale.shape[0]
    return scale[:, None, :].expand(-1, per_sample, -1).reshape(n_pos, scale.shape[1])  # [P, out]


def smoothness_matrix(D: Tensor, C: Tensor, taps: int) -> Tensor:
    """kron(D C D^T, I_taps): E_k ||dW k||^2 as a quadratic form in the coefficients ``[J, J]``."""
    G = D @ C.to(D) @ D.T  # [r, r]
    return torch.kron(G, torch.eye(taps, dtype=G.dtype, device=G.device))


def _sqrt_psd(A: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix (negative round-off eigenvalues clamped to 0)."""
    evals, evecs = torch.linalg.eigh(A)
    return evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T


def _kernel(handle: LayerHandle, w0: Tensor) -> tuple[int, ...]:
    return () if handle.layout == L.LINEAR else tuple(int(s) for s in w0.shape[2:])


def solve_lambda(problem: Problem, D: Tensor, C: Tensor, smoothness: float = DEFAULT_SMOOTHNESS) -> Tensor:
    """Lambda (float64, layout shape) minimising the regularised objective for fixed D."""
    h, D = problem.handle, D.to(torch.float64)
    kernel = _kernel(h, problem.w0)
    B = basis_responses(h, problem.x, D, kernel)  # [P, J]
    R = _channel_last(h.layout, problem.v_star - h.linear_op(problem.x, problem.w0))  # [P, out]
    sw = problem.flat_mask(B.shape[0]).sqrt()[:, None]  # [P, 1] square-root fit weights
    pen = None
    if smoothness > 0:  # the penalty as extra least-squares rows: ||sqrt(s n) kron(G^1/2, I) c||^2
        n_fit = float(sw.square().sum())
        pen = (smoothness * n_fit) ** 0.5 * _sqrt_psd(smoothness_matrix(D, C, h.taps))  # [J, J]
    scale = output_scale(h, problem.x, B.shape[0])  # [P, out] or None
    if scale is None:
        coefs = _lstsq_shared(B * sw, R * sw, pen)  # [J, out]
    else:
        keep = sw[:, 0] > 0  # rows with zero fit weight add nothing
        coefs = _lstsq_per_channel(B[keep] * sw[keep], R[keep] * sw[keep], scale[keep], pen)
    return L.lam_from_coefs(h.layout, coefs.T.contiguous(), D.shape[0], kernel)


def _driver(t: Tensor) -> str | None:
    return "gelsd" if t.device.type == "cpu" else None


def _lstsq_shared(A: Tensor, R: Tensor, pen: Tensor | None) -> Tensor:
    """``[J, out]`` minimising ||A c_o - R_o||^2 + ||pen c_o||^2 for every output channel o at once."""
    rows, rhs = [A], [R]
    if pen is not None:
        rows.append(pen)
        rhs.append(torch.zeros(pen.shape[0], R.shape[1], dtype=R.dtype, device=R.device))
    return torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs), driver=_driver(A)).solution  # [J, out]


def _lstsq_per_channel(A: Tensor, R: Tensor, scale: Tensor, pen: Tensor | None) -> Tensor:
    """``[J, out]`` minimising ||diag(scale_o) A c_o - R_o||^2 + ||pen c_o||^2 per output channel o.

    A ``[P, J]`` shared responses, R ``[P, out]`` residuals, scale ``[P, out]``: one batched solve.
    """
    n_out, J = R.shape[1], A.shape[1]
    rows = scale.T[:, :, None] * A[None]  # [out, P, J]
    rhs = R.T[:, :, None]  # [out, P, 1]
    if pen is not None:
        rows = torch.cat([rows, pen.expand(n_out, -1, -1)], dim=1)  # [out, P + J, J]
        rhs = torch.cat([rhs, rhs.new_zeros(n_out, pen.shape[0], 1)], dim=1)
    return torch.linalg.lstsq(rows, rhs, driver=_driver(A)).solution[:, :J, 0].T  # [J, out]


def objective(problem: Problem, lam: Tensor, D: Tensor, C: Tensor, smoothness: float) -> float:
    """The value of the regularised objective at (lam, D) (float64)."""
    h = problem.handle
    dv = h.delta_response(problem.x, lam.to(torch.float64), D.to(torch.float64))
    resid = _channel_last(h.layout, problem.v_star - h.linear_op(problem.x, problem.w0) - dv)  # [P, out]
    m = problem.flat_mask(resid.shape[0])
    fit = float((resid.square().sum(1) * m).sum())
    coefs = L.coefs_from_lam(h.layout, lam.to(torch.float64))  # [out, J]
    pen = float(torch.einsum("oj,jk,ok->", coefs, smoothness_matrix(D.to(torch.float64), C, h.taps), coefs))
    return fit + smoothness * float(m.sum()) * pen


@dataclass
class SolveReport:
    """What a solve did: ||dW||/||W||, objective, residual before and after, refinement steps."""

    relative_norm: float
    objective: float
    residual_before: float
    residual_after: float
    iterations: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _residual(problem: Problem, lam: Tensor | None, D: Tensor) -> float:
    h = problem.handle
    w = problem.w0 if lam is None else problem.w0 + h.dense(lam, D.to(torch.float64))
    h.freeze(w)  # a no-op for a handle that is linear in the weight
    r = problem.v_star - h.linear_op(problem.x, w)
    m = problem.flat_mask(_channel_last(h.layout, r).shape[0])
    return float((_channel_last(h.layout, r).square().sum(1) * m).sum().sqrt())


def rewrite_layer(problem: Problem, D: Tensor, C: Tensor, smoothness: float = DEFAULT_SMOOTHNESS,
                  refine_iters: int = 5) -> tuple[Delta, SolveReport]:
    """Solve Lambda in closed form (with fixed-point refinement for nonlinear handles).

    Returns the Delta (float32 factors, effective units) and a :class:`SolveReport`.
    """
    h, D64 = problem.handle, D.to(torch.float64)
    with h.frozen(problem.w0):  # each _residual re-freezes at its weight; released on exit
        before = _residual(problem, None, D64)
        lam, steps = solve_lambda(problem, D64, C, smoothness), 1
        if not h.linear_in_weight:
            lam, steps = _refine(problem, D64, C, smoothness, lam, refine_iters)
        best = _residual(problem, lam, D64)  # freezes a nonlinear handle at the final weight
        obj = objective(problem, lam, D64, C, smoothness)  # so this is the true objective there
    delta = Delta(lam.to(torch.float32), D64.to(torch.float32), h.layout)
    report = SolveReport(delta.relative_norm(problem.w0), obj, before, best, steps)
    return delta, report


def _refine(problem: Problem, D: Tensor, C: Tensor, smoothness: float, lam: Tensor, iters: int
            ) -> tuple[Tensor, int]:
    """Fixed-point iteration: freeze the nonlinearity at W0 + dW, re-solve, stop when not improving."""
    best_lam, best_res, steps = lam, _residual(problem, lam, D), 1
    for _ in range(iters - 1):
        lam_new = solve_lambda(problem, D, C, smoothness)  # nonlinearity frozen by _residual above
        res = _residual(problem, lam_new, D)
        steps += 1
        if res >= best_res * (1 - 1e-9):
            break
        best_lam, best_res = lam_new, res
    return best_lam, steps


def erase_delta(handle: LayerHandle, D: Tensor) -> Delta:
    """The paper's removal rule: W1 = W0 - W0 D^T D (zero the response on span(D))."""
    w0 = handle.effective_weight().detach().to(torch.float64)
    lam = -handle.lam_of(w0, D.to(torch.float64))
    return Delta(lam.to(torch.float32), D.to(torch.float32), handle.layout)
