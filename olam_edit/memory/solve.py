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

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from olam_edit.errors import NonFiniteError, RequestError, ShapeMismatchError, explain
from olam_edit.files.validate import summary
from olam_edit.memory import layout as L
from olam_edit.memory.delta import Delta
from olam_edit.memory.handles import LayerHandle

DEFAULT_SMOOTHNESS = 1.0
MAX_SMOOTHNESS = 1e12  # beyond this the edit is zero to float64 precision anyway
# Bounds of one rewrite, checked from the problem's size before anything is built (RequestError
# with the estimate): the dense least-squares system (matrix, right-hand sides, basis responses,
# float64) at most MAX_SOLVE_BYTES, and rows * unknowns^2 * systems (LAPACK gelsd's work) at most
# MAX_SOLVE_WORK, about a minute at SOLVE_RATE (measured on two shared CPU cores; an H200 host is faster).
MAX_SOLVE_BYTES = 2 * 1024**3
MAX_SOLVE_WORK = 4e10
SOLVE_RATE = 5e8  # rows * unknowns^2 per second of gelsd, two CPU cores


def check_smoothness(smoothness: object) -> float:
    """``smoothness`` as a float if it is a finite number in [0, MAX_SMOOTHNESS], else RequestError."""
    value = math.nan
    if isinstance(smoothness, int | float) and not isinstance(smoothness, bool):
        value = float(smoothness) if abs(smoothness) < 1e300 else math.inf  # float() of a huge int overflows
    if not math.isfinite(value) or not 0 <= value <= MAX_SMOOTHNESS:
        raise RequestError(explain("smoothness must be a finite number >= 0",
                                   got=summary(smoothness), expected=f"a value in [0, {MAX_SMOOTHNESS:g}]",
                                   fix=f"Use e.g. --smoothness {DEFAULT_SMOOTHNESS:g} (0 = fit only)."))
    return value


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


@dataclass
class SolveEstimate:
    """The size of a rewrite's dense system: ``unknowns`` = rank * taps per output channel, ``rows``
    (fit positions + penalty rows), ``systems`` (1 shared, or one per output channel), ``rhs`` per
    system, the float64 ``bytes`` it occupies, ``work`` = rows * unknowns^2 * systems * solves."""

    unknowns: int
    rows: int
    systems: int
    rhs: int
    bytes: int
    work: float

    @property
    def seconds(self) -> float:
        return self.work / SOLVE_RATE

    def describe(self) -> str:
        return (f"{self.unknowns} unknowns x {self.rows} rows x {self.systems} system(s): "
                f"{self.bytes / 2**30:.2f} GiB, about {self.seconds:.0f} s")


def estimate_solve(problem: Problem, rank: int, solves: int = 1) -> SolveEstimate:
    """The :class:`SolveEstimate` of solving ``problem`` at ``rank`` (``solves`` times), from shapes only."""
    h = problem.handle
    J = rank * h.taps
    v = problem.v_star
    n_out = int(v.shape[-1] if h.layout == L.LINEAR else v.shape[1])
    n_pos = v.numel() // n_out
    per_channel = not h.linear_in_weight  # a frozen output scale solves one system per channel
    n_rows = (int((problem.flat_mask(n_pos) > 0).sum()) if per_channel else n_pos) + J
    systems, rhs = (n_out, 1) if per_channel else (1, n_out)
    nbytes = 8 * (systems * n_rows * (J + rhs) + 2 * n_pos * J + J * J)
    return SolveEstimate(J, n_rows, systems, rhs, nbytes, float(n_rows) * J * J * systems * solves)


def check_solve_size(problem: Problem, rank: int, solves: int = 1) -> SolveEstimate:
    """The estimate, or RequestError (with it) when it exceeds MAX_SOLVE_BYTES or MAX_SOLVE_WORK."""
    est = estimate_solve(problem, rank, solves)
    if est.bytes > MAX_SOLVE_BYTES or est.work > MAX_SOLVE_WORK:
        raise RequestError(explain(
            f"a rank-{rank} rewrite of this layer is too large to solve", got=est.describe(),
            expected=f"at most {MAX_SOLVE_BYTES / 2**30:g} GiB and about {MAX_SOLVE_WORK / SOLVE_RATE:.0f} s",
            fix="Lower the rank (the work grows with its square) or paint a smaller paste region."))
    return est


def solve_lambda(problem: Problem, D: Tensor, C: Tensor, smoothness: float = DEFAULT_SMOOTHNESS) -> Tensor:
    """Lambda (float64, layout shape) minimising the regularised objective for fixed D.

    Refuses (RequestError) a smoothness that is not finite and >= 0, and a system beyond the bounds
    of :func:`check_solve_size`, before building anything.
    """
    h, D = problem.handle, D.to(torch.float64)
    smoothness = check_smoothness(smoothness)
    check_solve_size(problem, D.shape[0])
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

    Returns the Delta (effective units, factors in :func:`factor_dtype`) and a :class:`SolveReport`. The smoothness
    and the size of the whole solve (refinement steps included) are checked first.
    """
    h, D64 = problem.handle, D.to(torch.float64)
    check_smoothness(smoothness)
    check_solve_size(problem, D64.shape[0], 1 if h.linear_in_weight else refine_iters)
    with h.frozen(problem.w0):  # each _residual re-freezes at its weight; released on exit
        before = _residual(problem, None, D64)
        lam, steps = solve_lambda(problem, D64, C, smoothness), 1
        if not h.linear_in_weight:
            lam, steps = _refine(problem, D64, C, smoothness, lam, refine_iters)
        best = _residual(problem, lam, D64)  # freezes a nonlinear handle at the final weight
        obj = objective(problem, lam, D64, C, smoothness)  # so this is the true objective there
    dtype = factor_dtype(h)
    delta = Delta(lam.to(dtype), D64.to(dtype), h.layout)
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
    return Delta(lam.to(factor_dtype(handle)), D.to(factor_dtype(handle)), handle.layout)


def factor_dtype(handle: LayerHandle) -> torch.dtype:
    """The dtype of a solved delta's factors: float64 for a float64 layer (so its exact properties,
    such as protected keys keeping their values, hold to float64 round-off), float32 otherwise. Edit
    files always store float32."""
    return torch.float64 if handle.parameter.dtype == torch.float64 else torch.float32
