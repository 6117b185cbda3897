"""One layer's factors and report of a solved text rule, at a per-layer cost that does not grow with
the number of keys beyond ``[out, d]``-sized products.

Everything layer-independent is computed once (:class:`RuleProbes`): with D ``[r, d]`` the shared
directions and X ``[d, n]`` the map of :mod:`.maps`, Lambda = R X^T D^T = W M for
M = (T - K)^T X^T D^T ``[d, r]``. The report needs ||W A||_F for a few ``[d, k]`` matrices A (the
targets T^T, the residual R / W = (T - K)^T, what is left after the fit E = (T - K)^T - M D K^T,
and for protected keys K_o both K_o^T and dW K_o / W = M D K_o^T).

Few keys (2n + p <= d): one product W [T^T | K^T | K_o^T] per layer (computed as its transpose)
gives everything, each layer's weight read once: R = W T^T - W K^T, Lambda = R Q with
Q = (D X)^T ``[n, r]``, the residual after the fit R - Lambda (D K^T) and the protected change
Lambda (D K_o^T) (``[out, n]``-sized work).
Many keys: Lambda = W M, and ||W A||_F^2 = sum(W^T W * A A^T) from the ``[d, d]`` Grams, formed once.
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
        Ko = protect.to(torch.float64) if protect is not None and protect.numel() else None  # [p, d]
        self.n, self.p = K.shape[0], 0 if Ko is None else Ko.shape[0]
        self.gram = 2 * self.n + self.p > K.shape[1]
        self.probes: dict[str, Tensor] = {}
        self.stacked: Tensor | None = None
        self._scratch: Tensor | None = None
        if not self.gram:  # direct: one product [T | K | K_o] W^T per layer reads W once
            DX = self.D @ X  # [r, n]
            self.M = (DX @ diff).T  # [d, r]
            self.Qt, self.KD = DX, K @ self.D.T  # Q^T [r, n], (D K^T)^T [n, r]
            self.KoD = None if Ko is None else Ko @ self.D.T  # [p, r]
            # stored as rows: MKL runs [2n + p, d] @ [d, out] faster than W @ [d, 2n + p] in float64
            self.stacked = torch.cat([T, K, *(() if Ko is None else (Ko,))], 0).contiguous()  # [2n + p, d]
            return
        self.M = (self.D @ (X @ diff)).T  # [d, r], through [d, d] (cheaper: 2n + p > d here)
        MD = self.M @ self.D  # [d, d]
        probes = {"target": T.T, "before": diff.T, "after": diff.T - MD @ K.T}  # [d, n] each
        if Ko is not None:
            probes |= {"held": Ko.T, "moved": MD @ Ko.T}  # [d, p] each
        self.probes = {k: a @ a.T for k, a in probes.items()}  # [d, d] Grams
        self.grams = torch.stack([G.reshape(-1) for G in self.probes.values()])  # [k, d * d]

    def as_float64(self, weight: Tensor) -> Tensor:
        """``weight`` as a float64 CPU tensor, written into one scratch buffer reused from layer to layer
        (a fresh ``[out, d]`` float64 copy per layer costs more in page faults than the products); valid
        until the next call. A float64 CPU weight is used as it is."""
        w = weight.detach()
        if w.dtype == torch.float64 and w.device.type == "cpu":
            return w
        if self._scratch is None or self._scratch.numel() < w.numel():
            self._scratch = torch.empty(w.numel(), dtype=torch.float64)
        return self._scratch[: w.numel()].view(w.shape).copy_(w)  # [out, d]

    def lam_and_squared_norms(self, W: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Lambda = W M ``[out, r]`` and ||W A||_F^2 of every probe A, for one float64 weight W ``[out, d]``."""
        if self.stacked is None:
            S = W.T @ W  # [d, d]
            sums = self.grams @ S.reshape(-1)  # [k] sum(S * G) of every probe's Gram, S read once
            return W @ self.M, {k: max(float(v), 0.0) for k, v in zip(self.probes, sums, strict=True)}
        TW, KW, *held = (self.stacked @ W.T).split([self.n, self.n, *((self.p,) if self.p else ())], 0)  # [n, out]
        Rt = TW - KW  # [n, out] residual before the fit, R^T
        lam_t = self.Qt @ Rt  # [r, out] Lambda^T
        sq = {"target": float(TW.square().sum()), "before": float(Rt.square().sum()),
              "after": float((Rt - self.KD @ lam_t).square().sum())}
        if held:
            sq |= {"held": float(held[0].square().sum()), "moved": float((self.KoD @ lam_t).square().sum())}
        return lam_t.T.contiguous(), sq  # [out, r]

    def fit(self, weight: Tensor, dtype: torch.dtype = torch.float32) -> LayerFit:
        """The delta (factors stored in ``dtype``) and report of one projection ``weight`` ``[out, d]``."""
        W = self.as_float64(weight)  # [out, d]
        lam, sq = self.lam_and_squared_norms(W)  # [out, r] dW D^T
        scale = max(sq["target"], _TINY) ** 0.5
        moved = (sq["moved"] / max(sq["held"], _TINY)) ** 0.5 if "held" in sq else 0.0
        # each layer its own copy of D: edit files refuse tensors that share memory
        delta = Delta(lam.to(dtype), self.D.to(dtype, copy=True), LINEAR)
        return LayerFit(delta, float(lam.norm()) / max(float(W.norm()), _TINY), sq["before"] ** 0.5 / scale,
                        sq["after"] ** 0.5 / scale, moved)


__all__ = ["LayerFit", "RuleProbes"]
