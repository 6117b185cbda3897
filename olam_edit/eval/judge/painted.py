"""The hand-painted reference: each rule's change painted by hand into its own region only.

It is what a perfectly local edit costs on the judge's measures (identity, landmark drift,
detection), the floor the rewrite is compared with. Painting happens on the judge's upscaled
pixels, placed by each face's landmarks before the edit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from olam_edit.eval.judge import measures as M

LENS_COLOR = (18, 18, 22)
MOUSTACHE_COLOR = (45, 32, 25)
MOUTH_INSIDE = (70, 20, 25)
GROW = 1.15  # the painted-over mouth, around the outer lips' centre
LIP_HALF_HEIGHT = 0.07  # closed lips' half height, in mouth widths


def paint(effect_name: str, pixels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A painted copy of ``pixels`` ``[B, S, S, 3]`` for the effect ``effect_name``."""
    out = pixels.copy()
    for i in range(len(out)):
        img = Image.fromarray(out[i])
        PAINTERS[effect_name](ImageDraw.Draw(img), landmarks[i], out[i])
        out[i] = np.asarray(img)
    return out


def _glasses(draw: ImageDraw.ImageDraw, lm: np.ndarray, _px: np.ndarray) -> None:
    for box in M.lens_boxes(lm):  # the lenses the judge measures
        draw.ellipse(box, fill=LENS_COLOR)
    draw.line([tuple(lm[39]), tuple(lm[42])], fill=LENS_COLOR, width=3)


def _shut_mouth(draw: ImageDraw.ImageDraw, lm: np.ndarray, px: np.ndarray) -> None:
    """Paint the mouth over with the skin above it, then closed lips: a thin lip-coloured band at the
    upper lip's level, as wide as the mouth, with a darker seam through it."""
    size = px.shape[0]
    skin = px[M.upper_lip_band(lm[None], size)[0]]  # [n, 3]
    ring = M.polygon_masks(lm[None], M.OUTER_LIP, size)[0] & ~M.polygon_masks(lm[None], M.INNER_LIP, size)[0]
    lips = px[ring] if ring.any() else skin  # [m, 3]
    dark = lips[M.luminance(lips) <= np.median(M.luminance(lips))]  # lip pixels, not teeth
    skin_color = tuple(int(v) for v in np.median(skin if len(skin) else lips, axis=0))
    outer = lm[list(M.OUTER_LIP)]  # [12, 2]
    grown = outer.mean(0) + GROW * (outer - outer.mean(0))  # the mouth and its rim
    draw.polygon([tuple(p) for p in grown], fill=skin_color)
    left, right = lm[48], lm[54]
    y = (lm[51][1] + lm[62][1]) / 2 + 0.06 * np.linalg.norm(right - left)
    half_h = LIP_HALF_HEIGHT * np.linalg.norm(right - left)
    draw.ellipse([left[0], y - half_h, right[0], y + half_h], fill=tuple(int(v) for v in dark.mean(0)))
    width = max(2, round(M.interocular(lm[None])[0] / 25))
    draw.line([tuple(left), (float((left[0] + right[0]) / 2), float(y)), tuple(right)],
              fill=tuple(int(v * 0.5) for v in dark.mean(0)), width=width)


def _open_mouth(draw: ImageDraw.ImageDraw, lm: np.ndarray, _px: np.ndarray) -> None:
    """A dark open mouth between the lip corners, as tall as a third of the mouth's width."""
    left, right = lm[60], lm[64]
    mid = (lm[62] + lm[66]) / 2
    h = np.linalg.norm(right - left) / 3
    draw.ellipse([left[0], mid[1] - h / 2, right[0], mid[1] + h / 2], fill=MOUTH_INSIDE)


def _moustache(draw: ImageDraw.ImageDraw, lm: np.ndarray, _px: np.ndarray) -> None:
    draw.polygon([tuple(p) for p in lm[list(M.UPPER_LIP_BAND)]], fill=MOUSTACHE_COLOR)


def _beard(draw: ImageDraw.ImageDraw, lm: np.ndarray, _px: np.ndarray) -> None:
    draw.polygon([tuple(p) for p in lm[list(M.CHIN_BAND)]], fill=MOUSTACHE_COLOR)


PAINTERS = {"glasses": _glasses, "mouth_close": _shut_mouth, "mouth_open": _open_mouth, "moustache": _moustache,
            "beard": _beard}
