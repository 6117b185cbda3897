"""Judge several edits of the same faces side by side: :func:`judge` and its :class:`JudgeReport`.

Only faces the detector finds before the edit are judged (``faces``). Per method:
``detected`` the share of them still found after; ``effect`` the share of the eligible ones where the
rule visibly took effect (its :class:`~olam_edit.eval.judge.effects.Effect`); ``identity`` the mean
descriptor distance to the same face before (dlib counts < 0.6 as the same person); ``rank1`` the
share re-identified as themselves among all the judged faces before; ``drift`` the mean movement of
the landmarks outside the rule's region, in inter-ocular distances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from olam_edit.errors import RequestError, explain
from olam_edit.eval.judge import measures as M
from olam_edit.eval.judge.effects import effect as get_effect
from olam_edit.eval.judge.painted import paint
from olam_edit.eval.judge.read import Faces, from_pixels, read_faces

PAINTED = "painted"  # the hand-painted reference row


@dataclass
class JudgeRow:
    """One method's judged measures (see the module docstring)."""

    detected: float
    effect: float
    identity: float
    rank1: float
    drift: float


@dataclass
class JudgeReport:
    """Rows by method, what they were measured on, and every judged face's own numbers."""

    effect: str
    what: str
    seeds: list[int]
    faces: int
    eligible: int
    rows: dict[str, JudgeRow]
    judged: list[int] = field(default_factory=list)  # positions in ``seeds`` of the detected faces
    per_face_eligible: list[bool] = field(default_factory=list)  # of each judged face
    per_face: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)

    def table(self) -> str:
        """The rows as an aligned text table."""
        head = f"{'method':<16}{'effect':>8}{'rank-1':>8}{'identity':>10}{'drift':>8}{'detected':>10}"
        lines = [f"judge: {self.effect} ({self.what}) on {self.faces} detected faces, {self.eligible} eligible", head]
        for name, r in self.rows.items():
            lines.append(f"{name:<16}{r.effect:>8.1%}{r.rank1:>8.1%}{r.identity:>10.3f}{r.drift:>8.3f}{r.detected:>10.1%}")
        return "\n".join(lines)

    def to_json(self, per_face: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"effect": self.effect, "what": self.what, "seeds": [self.seeds[0], self.seeds[-1],
                               len(self.seeds)], "faces": self.faces, "eligible": self.eligible,
                               "rows": {k: asdict(v) for k, v in self.rows.items()}}
        if per_face:
            rounded = {k: {f: [float(f"{x:.6g}") for x in xs] for f, xs in v.items()} for k, v in self.per_face.items()}
            out["per_face"] = {"judged": self.judged, "eligible": self.per_face_eligible, **rounded}
        return out


def judge(before: Tensor, afters: dict[str, Tensor], effect: str, seeds: list[int], *, painted: bool = True,
          progress: bool = True) -> JudgeReport:
    """Judge each edited batch of ``afters`` (method -> images ``[B, 3, H, W]`` in [-1, 1]) against ``before``.

    With ``painted`` a hand-painted reference row of the effect's region is added (:mod:`.painted`).
    """
    fx = get_effect(effect)
    base = read_faces(before, progress=progress, desc="judge: before")
    if painted:
        afters = {**afters, PAINTED: from_pixels(paint(effect, base.pixels, base.landmarks), before.shape[-1])}
    idx = np.flatnonzero(base.detected)
    if len(idx) == 0:
        raise RequestError(explain("the judge found no face in the images before the edit",
                                   got=f"{len(seeds)} images, none with a detected face",
                                   fix="--judge measures edits of face models; pass seeds of faces."))
    value_before = fx.measure(base, base)[idx]  # [n]
    eligible = fx.eligible(value_before)  # [n]
    report = JudgeReport(effect, fx.what, list(seeds), len(idx), int(eligible.sum()), {}, idx.tolist(),
                         eligible.tolist())
    for name, images in afters.items():
        faces = read_faces(images, base.boxes, progress=progress, desc=f"judge: {name}")
        report.rows[name], report.per_face[name] = _row(fx, base, faces, idx, value_before, eligible)
    return report


def _row(fx: Any, base: Faces, faces: Faces, idx: np.ndarray, value_before: np.ndarray,
         eligible: np.ndarray) -> tuple[JudgeRow, dict[str, list[float]]]:
    value = fx.measure(faces, base)[idx]  # [n]
    took = fx.took(value_before, value) & eligible  # [n]
    identity = M.identity_distance(base.descriptors[idx], faces.descriptors[idx])  # [n]
    rank1 = M.rank1_reidentified(base.descriptors[idx], faces.descriptors[idx])  # [n]
    drift = M.landmark_drift(base.landmarks[idx], faces.landmarks[idx], fx.region)  # [n]
    row = JudgeRow(detected=float(faces.detected[idx].mean()) if len(idx) else 0.0,
                   effect=float(took.sum() / max(eligible.sum(), 1)), identity=float(identity.mean()),
                   rank1=float(rank1.mean()), drift=float(drift.mean()))
    per_face = {"before": value_before.tolist(), "after": value.tolist(), "took": took.astype(float).tolist(),
                "identity": identity.tolist(), "drift": drift.tolist()}
    return row, per_face
