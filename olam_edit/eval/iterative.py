"""The reference code's iterative fit, kept as an option and as the benchmark's baseline.

``fit_reference`` reproduces ``insert()`` of the paper's code: Adam (lr 0.05, default betas) on the
whole effective weight, mean L1 between the value map and the target over the fit region, and every
``piter`` steps (and after the last) the weight is projected back to W0 + dense(lam, D).
``fit_adam_objective`` runs Adam on lam for the closed form's own regularised objective, to show
that the closed form reaches the optimum the iteration only approaches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from olam_edit.memory import layout as L
from olam_edit.memory.solve import Problem


def _project(problem: Problem, w: Tensor, w_perp: Tensor, D: Tensor) -> Tensor:
    """W_perp + P(W): keep only the part of the change that lies in span(D)."""
    h = problem.handle
    return w_perp + h.dense(h.lam_of(w, D), D)


def fit_reference(problem: Problem, D: Tensor, *, steps: int = 2001, lr: float = 0.05, piter: int = 10
                  ) -> Tensor:
    """Lambda from the reference procedure (float64, layout shape)."""
    h, D = problem.handle, D.to(torch.float64)
    w0 = problem.w0
    w_perp = w0 - h.dense(h.lam_of(w0, D), D)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    m = problem.mask
    for it in range(steps):
        opt.zero_grad()
        err = (h.linear_op(problem.x, w) - problem.v_star).abs()
        loss = err.mean() if m is None else (err * m.unsqueeze(1 if err.ndim == 4 else -1)).mean()
        loss.backward()
        opt.step()
        if it % piter == 0 or it == steps - 1:
            with torch.no_grad():
                w.copy_(_project(problem, w, w_perp, D))
    return h.lam_of(w.detach() - w0, D)


def fit_adam_objective(problem: Problem, D: Tensor, C: Tensor, smoothness: float, *, steps: int = 3000,
                       lr: float = 0.01) -> Tensor:
    """Adam on lam for the regularised objective of :func:`olam_edit.memory.solve.objective`."""
    h, D = problem.handle, D.to(torch.float64)
    lam = torch.zeros_like(h.lam_of(problem.w0, D), requires_grad=True)
    opt = torch.optim.Adam([lam], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with torch.no_grad():
        r0 = problem.v_star - h.linear_op(problem.x, problem.w0)  # what the edit must add; constant in lam
    for _ in range(steps):
        opt.zero_grad()
        loss = _objective_tensor(problem, lam, D, C, smoothness, r0)
        loss.backward()
        opt.step()
        sched.step()
    return lam.detach()


def _objective_tensor(problem: Problem, lam: Tensor, D: Tensor, C: Tensor, smoothness: float,
                      r0: Tensor | None = None) -> Tensor:
    """Differentiable twin of :func:`olam_edit.memory.solve.objective`, normalised by the fit size.

    ``r0`` is ``v_star - op(x, W0)`` when the caller has it (it does not depend on lam); computed otherwise.
    """
    h = problem.handle
    if r0 is None:
        r0 = problem.v_star - h.linear_op(problem.x, problem.w0)
    resid = r0 - h.delta_response(problem.x, lam, D)
    m = problem.mask
    fit = resid.square().sum() if m is None else (resid.square() * m.unsqueeze(1 if resid.ndim == 4 else -1)).sum()
    n = resid[:, 0].numel() if m is None else float(m.sum())
    G = D @ C.to(D) @ D.T  # [r, r]
    pen = _penalty(h.layout, lam, G)
    return (fit + smoothness * n * pen) / n


def _penalty(layout: str, lam: Tensor, G: Tensor) -> Tensor:
    """sum over taps and output channels of lam_t^T G lam_t."""
    coefs = L.coefs_from_lam(layout, lam)  # [out, r*taps]
    r = G.shape[0]
    c = coefs.reshape(coefs.shape[0], r, -1)  # [out, r, taps]
    return torch.einsum("ort,rs,ost->", c, G, c)

