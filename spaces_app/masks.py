"""Painted masks to selections and requests: what the image editor sends, read as the core's types."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import torch

from olam_edit.errors import EmptySelectionError, RequestError, explain
from olam_edit.rules.spatial.request import EditRequest, Selection, mask_from_image
from olam_edit.spaces_app.images import RefusedImage, check_size, image_size
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import DISPLAY

FIX_PAINT = "Paint on the sample in the painter (its images are at most a few hundred pixels a side)."


def editor_mask(value: Any) -> np.ndarray:
    """The painted mask ``[H, W]`` in [0, 1] from a ``gr.ImageEditor`` value (as the editor sends it).

    The strokes are the alpha of the editor's layers (their union); when the editor returns no layers
    (a known Gradio quirk) the mask is where the composite differs from the background. A bare image
    or array is read as a mask itself. Raises EmptySelectionError when nothing is painted.
    """
    if value is None:
        raise EmptySelectionError(explain("no sample is open", fix="Pick a sample in the gallery first."))
    _refuse_unread(value)
    if isinstance(value, dict):
        layers = [np.asarray(x) for x in value.get("layers") or [] if x is not None]
        mask = _union(layers) if layers else _difference(value.get("background"), value.get("composite"))
    else:
        mask = mask_from_image(value)
    if not np.isfinite(mask).all() or float(mask.max(initial=0.0)) <= 0.0:
        raise EmptySelectionError(explain("the mask is empty", fix="Paint over the region with the brush."))
    return mask


def _refuse_unread(value: Any) -> None:
    """RequestError if the painter refused one of the images of ``value`` (see
    :func:`~olam_edit.spaces_app.painter.guard`), or if ``value`` is PNG bytes or a data URL whose
    header claims too many pixels (checked before anything decodes it)."""
    images = [value.get("background"), *(value.get("layers") or []), value.get("composite")] \
        if isinstance(value, dict) else [value]
    for image in images:
        refused = image if isinstance(image, RefusedImage) else None
        if isinstance(image, bytes | bytearray):
            refused = check_size(image_size(image))
        elif isinstance(image, str) and image.startswith("data:image/") and "," in image:
            try:
                refused = check_size(image_size(base64.b64decode(image.split(",", 1)[1])))
            except (binascii.Error, ValueError):
                refused = RefusedImage("the painted image is not valid base64")
        if refused is not None:
            raise RequestError(explain(refused.reason, fix=FIX_PAINT))


def _union(layers: list[np.ndarray]) -> np.ndarray:
    """The union (pixelwise maximum) of the strokes of the editor's layers ``[H, W]``."""
    mask = _alpha(layers[0])
    for layer in layers[1:]:
        other = _alpha(layer)
        if other.shape != mask.shape:
            raise RequestError(explain("the painted layers differ in size", got=[other.shape, mask.shape],
                                       fix=FIX_PAINT))
        np.maximum(mask, other, out=mask)
    return mask


def fit_mask(mask: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """``mask`` ``[H, W]`` averaged down so that its longer side is at most ``size`` (unchanged if it is):
    a session keeps its selections at the size the Space paints and shows them."""
    h, w = mask.shape
    if max(h, w) <= size:
        return mask
    out = (max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w))))
    t = torch.as_tensor(np.ascontiguousarray(mask, dtype=np.float64))[None, None]  # [1, 1, H, W]
    return torch.nn.functional.interpolate(t, size=out, mode="area")[0, 0].numpy()  # [h, w]


def _alpha(layer: np.ndarray) -> np.ndarray:
    """The strokes of one editor layer ``[H, W(, C)]`` as a float map ``[H, W]`` in [0, 1]."""
    if layer.ndim == 3 and layer.shape[2] in (2, 4):
        return layer[..., -1].astype(np.float64) / 255.0
    gray = layer if layer.ndim == 2 else layer.max(axis=2)
    return (gray.astype(np.float64) / (255.0 if layer.dtype.kind in "ui" else 1.0)).clip(0, 1)


def _difference(background: Any, composite: Any) -> np.ndarray:
    """1 where the composite differs visibly from the background ``[H, W]``, else 0 (``[1, 1]`` if unknown)."""
    if background is None or composite is None:
        return np.zeros((1, 1))
    bg, comp = np.asarray(background)[..., :3].astype(np.int16), np.asarray(composite)[..., :3].astype(np.int16)
    if bg.shape != comp.shape:
        return np.zeros((1, 1))
    return (np.abs(bg - comp).max(axis=2) > 24).astype(np.float64)


def selection(value: Any, seed: int | None) -> Selection:
    """A Selection from the editor value painted on sample ``seed`` (its mask at most DISPLAY a side)."""
    if seed is None:
        raise RequestError(explain("no sample is open", fix="Pick a sample in the gallery first."))
    mask = fit_mask(editor_mask(value))
    if float(mask.min()) >= 1 - 1e-6:
        raise RequestError(explain("the mask covers the whole image", expected="a region",
                                   fix="Paint only the part of the image the rule is about."))
    return Selection(int(seed), mask)


def make_request(session: Session, layer: str, rank: int) -> EditRequest:
    """The session's selections as an EditRequest (with the further copy / paste pairs of an example
    rule when one was loaded); a missing copy or paste region is an error."""
    for what, sel in (("copy", session.copy), ("paste", session.paste)):
        if sel is None:
            raise RequestError(explain(f"there is no {what} region yet",
                                       fix=f"Paint it on a sample and press 'Set {what}'."))
    return EditRequest(layer=layer, copy=session.copy, paste=session.paste, context=list(session.context),
                       rank=int(rank), model=None, pairs=list(session.pairs))
