"""The judge's measures, from landmarks ``[B, 68, 2]`` (iBUG 68-point order), pixels and descriptors.

All lengths are in units of the inter-ocular distance (between the two eyes' centres), so they do
not depend on the resolution the faces were read at. Pure numpy: no model is needed here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

RIGHT_EYE = tuple(range(36, 42))  # the subject's right eye (left in the picture)
LEFT_EYE = tuple(range(42, 48))
BROWS = tuple(range(17, 27))
NOSE = tuple(range(27, 36))
OUTER_LIP = tuple(range(48, 60))
INNER_LIP = tuple(range(60, 68))
MOUTH = OUTER_LIP + INNER_LIP
JAW = tuple(range(17))
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper and lower inner-lip points facing each other
LENS_SCALE = (1.0, 1.6)  # a lens's half-width and half-height, in eye half-widths


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the eyes' centres ``[B]`` (at least 1e-6)."""
    right = landmarks[:, RIGHT_EYE].mean(1)  # [B, 2]
    left = landmarks[:, LEFT_EYE].mean(1)  # [B, 2]
    return np.maximum(np.linalg.norm(left - right, axis=1), 1e-6)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Mean gap between the facing inner-lip points ``[B]``, over the inter-ocular distance."""
    gaps = [np.linalg.norm(landmarks[:, a] - landmarks[:, b], axis=1) for a, b in INNER_LIP_PAIRS]  # 3 x [B]
    return np.mean(gaps, axis=0) / interocular(landmarks)


def eye_opening(landmarks: np.ndarray) -> np.ndarray:
    """The eye aspect ratio (lid gap over eye width), averaged over both eyes ``[B]``."""
    ratios = []
    for e in (RIGHT_EYE, LEFT_EYE):
        p = landmarks[:, e]  # [B, 6, 2]
        gap = np.linalg.norm(p[:, 1] - p[:, 5], axis=1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=1)  # [B]
        ratios.append(gap / (2 * np.maximum(np.linalg.norm(p[:, 0] - p[:, 3], axis=1), 1e-6)))
    return np.mean(ratios, axis=0)


def luminance(pixels: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in [0, 1] of uint8 RGB pixels ``[..., 3]``."""
    return (pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0


def lens_boxes(lm: np.ndarray) -> list[list[float]]:
    """The bounding boxes ``[x0, y0, x1, y1]`` of one face's two lens ellipses (landmarks ``[68, 2]``)."""
    boxes = []
    for e in (RIGHT_EYE, LEFT_EYE):
        c = lm[list(e)].mean(0)  # [2]
        half = np.linalg.norm(lm[e[3]] - lm[e[0]]) / 2
        rx, ry = LENS_SCALE[0] * half, LENS_SCALE[1] * half * 0.6
        boxes.append([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry])
    return boxes


def lens_masks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where a pair of glasses' lenses sit: ``[B, size, size]`` booleans, one ellipse around each eye."""
    masks = np.zeros((len(landmarks), size, size), bool)
    for i, lm in enumerate(landmarks):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for box in lens_boxes(lm):
            draw.ellipse(box, fill=255)
        masks[i] = np.asarray(img) > 0
    return masks


def masked_mean(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean of ``values`` ``[B, H, W]`` inside each mask ``[B, H, W]`` (NaN for an empty mask)."""
    n = masks.reshape(len(masks), -1).sum(1)  # [B]
    total = (values * masks).reshape(len(masks), -1).sum(1)  # [B]
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def lens_brightness(pixels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Mean luma ``[B]`` inside the lens ellipses placed by ``landmarks`` (the faces before the edit)."""
    return masked_mean(luminance(pixels), lens_masks(landmarks, pixels.shape[1]))


def polygon_masks(landmarks: np.ndarray, points: tuple[int, ...], size: int) -> np.ndarray:
    """``[B, size, size]`` booleans inside the polygon through ``points`` of each face's landmarks."""
    masks = np.zeros((len(landmarks), size, size), bool)
    for i, lm in enumerate(landmarks):
        img = Image.new("L", (size, size), 0)
        ImageDraw.Draw(img).polygon([tuple(p) for p in lm[list(points)]], fill=255)
        masks[i] = np.asarray(img) > 0
    return masks


UPPER_LIP_BAND = (31, 32, 33, 34, 35, 54, 53, 52, 51, 50, 49, 48)  # the nose's base, then the upper lip's top


def upper_lip_band(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where a moustache grows: between the nose's base (31-35) and the upper lip's top (48-54)."""
    return polygon_masks(landmarks, UPPER_LIP_BAND, size)


CHIN_BAND = (48, 59, 58, 57, 56, 55, 54, 11, 10, 9, 8, 7, 6, 5)  # the lower lip's bottom, then the jaw below it


def chin_band(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where a beard grows on the chin: between the lower lip (48, 54-59) and the jaw line (5-11)."""
    return polygon_masks(landmarks, CHIN_BAND, size)


def landmark_drift(before: np.ndarray, after: np.ndarray, exclude: tuple[int, ...] = ()) -> np.ndarray:
    """Mean displacement ``[B]`` of the landmarks not in ``exclude``, over the inter-ocular distance before."""
    keep = [i for i in range(before.shape[1]) if i not in set(exclude)]
    moved = np.linalg.norm(after[:, keep] - before[:, keep], axis=2).mean(1)  # [B]
    return moved / interocular(before)


def identity_distance(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Euclidean distance ``[B]`` between each face's descriptor before and after (dlib: < 0.6 is the same person)."""
    return np.linalg.norm(after - before, axis=1)


def rank1_reidentified(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``[B]`` booleans: face ``i`` after the edit is nearest to face ``i`` among all the faces before it."""
    d = np.linalg.norm(after[:, None, :] - before[None, :, :], axis=2)  # [B, B]
    return d.argmin(1) == np.arange(len(before))
