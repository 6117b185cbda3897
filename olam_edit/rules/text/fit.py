"""One layer's factors and report of a solved text rule, at a per-layer cost that does not grow with
the number of keys beyond ``[out, d]``-sized products.

Everything layer-independent is computed once (:class:`RuleProbes`): with D ``[r, d]`` the shared
directions and X ``[d, n]`` the map of :mod:`.maps`, Lambda = R X^T D^T = W M for
M = (T - K)^T X^T D^T ``[d, r]``. The report needs ||W A||_F for a few ``[d, k]`` matrices A (the
targets T^T, the residual R / W = (T - K)^T, what is left after the fit E = (T - K)^T - M D K^T,
and for protected keys K_o both K_o^T and dW K_o / W = M D K_o^T). When their columns outnumber
d, ||W A||_F^2 = sum(W^T W * A A^T) uses the ``[d, d]`` Grams, formed once, instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from olam_edit.memory.delta import Delta
from olam_edit.memory.layout import LINEAR

_TINY = 1e-300


@dataclass
class LayerFit:
    """One layer's factored delta and how well it fits: ||dW||/||W||, the residual ||R - dW K^T||
    before and after relative to ||W0 T^T||, and for protected keys K_o ||dW K_o|| / ||W K_o||
    (``protected_change``, float64 before the factors are stored; 0.0 without protection)."""

    delta: Delta
    relative_norm: float
    residual_before: float
    residual_after: float
    protected_change: float = 0.0


class RuleProbes:
    """The layer-independent part of a fit: M ``[d, r]`` (Lambda = W M), D, and the report's probes."""

    def __init__(self, keys: Tensor, targets: Tensor, X: Tensor, D: Tensor, protect: Tensor | None = None) -> None:
        K, T = keys.to(torch.float64), targets.to(torch.float64)  # [n, d]
        diff = T - K  # [n, d]
        self.D = D.to(torch.float64)  # [r, d]
        self.M = (self.D @ X @ diff).T  # [d, r]
        probes = {"target": T.T, "before": diff.T, "after": diff.T - self.M @ (self.D @ K.T)}  # [d, n] each
        if protect is not None and protect.numel():
            Ko = protect.to(torch.float64)  # [p, d]
            probes |= {"held": Ko.T, "moved": self.M @ (self.D @ Ko.T)}  # [d, p] each
        self.gram = sum(a.shape[1] for a in probes.values()) > K.shape[1]
        self.probes = {k: a @ a.T for k, a in probes.items()} if self.gram else probes  # [d, d] or [d, k]
        # direct: one product W [M | probes] per layer reads W once
        self.stacked = None if self.gram else torch.cat([self.M, *probes.values()], 1)  # [d, r + sum k]

    def lam_and_squared_norms(self, W: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Lambda = W M ``[out, r]`` and ||W A||_F^2 of every probe A, for one float64 weight W ``[out, d]``."""
        if self.stacked is None:
            S = W.T @ W  # [d, d]
            return W @ self.M, {k: max(float((S * G).sum()), 0.0) for k, G in self.probes.items()}
        parts = (W @ self.stacked).split([self.M.shape[1], *(a.shape[1] for a in self.probes.values())], 1)
        return parts[0], {k: float(v.square().sum()) for k, v in zip(self.probes, parts[1:], strict=True)}

    def fit(self, weight: Tensor, dtype: torch.dtype = torch.float32) -> LayerFit:
        """The delta (factors stored in ``dtype``) and report of one projection ``weight`` ``[out, d]``."""
        W = weight.detach().to(torch.float64).cpu()  # [out, d]
        lam, sq = self.lam_and_squared_norms(W)  # [out, r] dW D^T
        scale = max(sq["target"], _TINY) ** 0.5
        moved = (sq["moved"] / max(sq["held"], _TINY)) ** 0.5 if "held" in sq else 0.0
        # each layer its own copy of D: edit files refuse tensors that share memory
        delta = Delta(lam.to(dtype), self.D.to(dtype, copy=True), LINEAR)
        return LayerFit(delta, float(lam.norm()) / max(float(W.norm()), _TINY), sq["before"] ** 0.5 / scale,
                        sq["after"] ** 0.5 / scale, moved)


__all__ = ["LayerFit", "RuleProbes"]
