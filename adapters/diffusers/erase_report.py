"""The report of an erase / replace edit: per concept the residual to its guide's values, per preserve
prompt the change of its values, measured on every edited layer in float64 (largest over the layers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from olam_edit.edit.core import Edit
from olam_edit.memory.handles import get_handle

if TYPE_CHECKING:
    from .erase import ConceptKeys


@dataclass
class ConceptReport:
    """Per concept the relative residual to the guide's values, ``||W K^T - W0 T^T|| / ||W0 T^T||``, before
    and after the edit (the largest over the edited layers); per preserve prompt the relative change of
    its values ``||dW P^T|| / ||W0 P^T||`` (largest over the layers). ``dict()`` goes into the manifest."""

    concepts: list[dict[str, Any]]
    preserve: list[dict[str, Any]]

    def dict(self) -> dict[str, Any]:
        return {"concepts": self.concepts, "preserve_change": self.preserve}

    def __str__(self) -> str:
        lines = [f"{'concept':<28} {'guide':<28} residual before -> after"]
        lines += [f"{c['concept']!r:<28} {c['guide']!r:<28} {c['residual_before']:.3g} -> {c['residual_after']:.3g}"
                  for c in self.concepts]
        lines += [f"preserve {p['prompt']!r}: change {p['change']:.3g}" for p in self.preserve]
        return "\n".join(lines)


def _relative(A: Tensor, B: Tensor) -> float:
    return float(A.norm() / B.norm().clamp_min(1e-300))


def measure(unet: Any, edit: Edit, ck: ConceptKeys, labels: Sequence[tuple[str, str]],
            preserve: Sequence[tuple[str, Tensor]] = ()) -> ConceptReport:
    """The :class:`ConceptReport` of ``edit`` (its deltas at their scale) on the current weights of
    ``unet``: ``labels`` are (concept, guide) per span of ``ck``, ``preserve`` (prompt, keys ``[m_i, d]``)."""
    worst_c = [[0.0, 0.0] for _ in ck.spans]
    worst_p = [0.0 for _ in preserve]
    K, T = ck.keys.to(torch.float64), ck.targets.to(torch.float64)  # [n, d]
    for name, delta in edit.deltas.items():
        W0 = get_handle(unet, name).parameter.detach().to(torch.float64).cpu()  # [out, d]
        W1 = W0 + delta.dense(torch.float64)  # [out, d]
        for i, (a, b) in enumerate(ck.spans):
            want = T[a:b] @ W0.T  # [n_i, out]
            worst_c[i][0] = max(worst_c[i][0], _relative(K[a:b] @ W0.T - want, want))
            worst_c[i][1] = max(worst_c[i][1], _relative(K[a:b] @ W1.T - want, want))
        for j, (_, Pj) in enumerate(preserve):
            Pj = Pj.to(torch.float64).cpu()  # [m_j, d]
            worst_p[j] = max(worst_p[j], _relative(Pj @ (W1 - W0).T, Pj @ W0.T))
    concepts = [{"concept": c, "guide": g, "keys": b - a, "residual_before": r[0], "residual_after": r[1]}
                for (c, g), (a, b), r in zip(labels, ck.spans, worst_c, strict=True)]
    return ConceptReport(concepts, [{"prompt": p, "change": v} for (p, _), v in zip(preserve, worst_p, strict=True)])


__all__ = ["ConceptReport", "measure"]
