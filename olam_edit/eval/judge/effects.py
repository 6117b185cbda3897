"""Each face rule's own test of whether it visibly took effect, from the judge's readings.

An :class:`Effect` measures one number per face (``measure``), says which faces the rule can change
at all (``eligible``: an open mouth for a mouth-closing rule), and whether the change from before to
after is one a person would see (``took``). ``region`` lists the landmarks inside the rule's region,
left out of the landmark drift. The registry :data:`EFFECTS` is the extension point: a new face rule
adds its effect there and names it in its example's ``.eval.json`` (``"effect": name``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from olam_edit.errors import RequestError, explain
from olam_edit.eval.judge import measures as M
from olam_edit.eval.judge.read import Faces

OPEN_MOUTH = 0.12  # inner-lip gap over the inter-ocular distance above which a mouth counts as open
OPEN_EYES = 0.2  # eye aspect ratio above which eyes count as open


@dataclass(frozen=True)
class Effect:
    """A rule's visible-effect test (see the module docstring)."""

    name: str
    what: str
    region: tuple[int, ...]

    def measure(self, faces: Faces, before: Faces) -> np.ndarray:
        """The per-face value ``[B]`` of ``faces``; ``before`` are the same faces before the edit."""
        raise NotImplementedError

    def eligible(self, value_before: np.ndarray) -> np.ndarray:
        """``[B]`` booleans: faces the rule can visibly change (all, unless overridden)."""
        return np.ones(len(value_before), bool)

    def took(self, value_before: np.ndarray, value_after: np.ndarray) -> np.ndarray:
        raise NotImplementedError


AREAS = {"lenses": M.lens_masks, "upper_lip": M.upper_lip_band, "chin": M.chin_band}  # landmarks, size -> masks


@dataclass(frozen=True)
class Darker(Effect):
    """The region got darker: mean luma after <= ``ratio`` x before, in an area of :data:`AREAS` placed
    by the landmarks before the edit (lenses around the eyes, the band above the upper lip, the chin)."""

    ratio: float = 0.6
    area: str = "lenses"

    def measure(self, faces: Faces, before: Faces) -> np.ndarray:
        mask = AREAS[self.area](before.landmarks, faces.pixels.shape[1])  # [B, S, S]
        return M.masked_mean(M.luminance(faces.pixels), mask)

    def took(self, value_before: np.ndarray, value_after: np.ndarray) -> np.ndarray:
        return value_after <= self.ratio * value_before


@dataclass(frozen=True)
class Closes(Effect):
    """An open part closes: its opening (from its own landmarks) at least halved on open ones."""

    part: str = "mouth"
    ratio: float = 0.5

    def measure(self, faces: Faces, before: Faces) -> np.ndarray:
        return M.mouth_opening(faces.landmarks) if self.part == "mouth" else M.eye_opening(faces.landmarks)

    def eligible(self, value_before: np.ndarray) -> np.ndarray:
        return value_before >= (OPEN_MOUTH if self.part == "mouth" else OPEN_EYES)

    def took(self, value_before: np.ndarray, value_after: np.ndarray) -> np.ndarray:
        return value_after <= self.ratio * value_before


@dataclass(frozen=True)
class Opens(Closes):
    """A closed part opens: its opening after reaches the open threshold and at least doubles."""

    ratio: float = 2.0

    def eligible(self, value_before: np.ndarray) -> np.ndarray:
        return ~super().eligible(value_before)

    def took(self, value_before: np.ndarray, value_after: np.ndarray) -> np.ndarray:
        limit = OPEN_MOUTH if self.part == "mouth" else OPEN_EYES
        return (value_after >= self.ratio * value_before) & (value_after >= limit)


EFFECTS: dict[str, Effect] = {
    "glasses": Darker("glasses", "lens-area brightness <= 0.6 of before", M.RIGHT_EYE + M.LEFT_EYE + M.BROWS,
                      ratio=0.6, area="lenses"),
    "moustache": Darker("moustache", "upper-lip band brightness <= 0.7 of before", M.MOUTH, ratio=0.7,
                        area="upper_lip"),
    "beard": Darker("beard", "chin brightness <= 0.7 of before", M.MOUTH + M.JAW[4:13], ratio=0.7, area="chin"),
    "mouth_close": Closes("mouth_close", f"mouth opening at least halved (mouths open >= {OPEN_MOUTH})", M.MOUTH),
    "mouth_open": Opens("mouth_open", f"mouth opening doubled and >= {OPEN_MOUTH} (mouths closed before)", M.MOUTH),
}


def effect(name: str) -> Effect:
    """The registered effect ``name``; RequestError naming the known ones otherwise."""
    if name not in EFFECTS:
        raise RequestError(explain(f"no judge effect named {name!r}", expected=f"one of {sorted(EFFECTS)}"))
    return EFFECTS[name]
