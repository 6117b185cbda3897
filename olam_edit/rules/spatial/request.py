"""EditRequest and Selection: a rule as the user states it, with a JSON form that embeds masks as PNG.

A Selection is a sample (its seed) plus a soft mask in [0, 1] at any resolution. A request names the
layer, the rank, the context selections (where the rule applies), and one copy and one paste
selection (what to put there, and where to show it); ``pairs`` adds further copy / paste examples
of the same rule, and the rewrite fits its target on all of them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from olam_edit.errors import RequestError, explain
from olam_edit.files import validate as V
from olam_edit.files.validate import MAX_IMAGE_PIXELS, MAX_JSON_BYTES, open_image, summary

PNG_PREFIX = "data:image/png;base64,"
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds below 2**64
MAX_RANK = 4096  # a sanity bound of the JSON form; the Rewriter caps the rank by the layer and the context
MAX_SELECTIONS = 1000  # context selections in one request
MAX_PAIRS = 63  # further copy / paste examples of one rule (64 examples in all)
MAX_MASK_PIXELS = MAX_IMAGE_PIXELS  # 4096 x 4096 = 16.7 MP per mask, checked before decoding
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS  # all masks of one request together (float64: at most 268 MB)
MAX_DATA_URL = 4 * MAX_JSON_BYTES // 3 + 64  # characters of one base64 data URL (a PNG of at most 16 MB)


def mask_from_image(data: Any) -> np.ndarray:
    """A float mask ``[H, W]`` in [0, 1] from an array, PNG bytes, a data URL or a PIL image.

    Colour images use their alpha channel when it is not constant, else their first channel (white
    strokes on black). Integer arrays are read as 0..255. At most MAX_MASK_PIXELS pixels (an encoded
    image is measured from its header, before it is decoded); anything else raises RequestError.
    """
    arr = _to_array(data)
    if arr.dtype.kind not in "buif":
        raise RequestError(explain("a mask must hold numbers", got=f"an array of {arr.dtype}",
                                   expected="numbers in [0, 1] or 0..255", fix="Pass an image or a numeric array."))
    if arr.ndim == 3:
        has_alpha = arr.shape[2] in (2, 4) and arr[..., -1].min() != arr[..., -1].max()
        arr = arr[..., -1] if has_alpha else arr[..., 0]
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise RequestError(explain("a mask must be a 2-D image", got=f"shape {arr.shape}", expected="[H, W]"))
    _check_pixels(arr.shape[1], arr.shape[0])
    arr = arr.astype(np.float64) / 255.0 if arr.dtype.kind in "ui" else arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise RequestError(explain("a mask contains NaN or Inf", fix="Use values in [0, 1]."))
    return np.clip(arr, 0.0, 1.0, out=arr)


def _check_pixels(w: int, h: int) -> None:
    if w * h > MAX_MASK_PIXELS:
        raise RequestError(explain("a mask is too large", got=f"{w} x {h} pixels",
                                   expected=f"at most {MAX_MASK_PIXELS} pixels (e.g. 4096 x 4096)",
                                   fix="Downscale the mask; it is resized to the layer's grid anyway."))


def _to_array(data: Any) -> np.ndarray:
    if isinstance(data, str):
        data = _data_url_bytes(data)
    if isinstance(data, bytes | bytearray):
        return _decode_png(bytes(data))
    if hasattr(data, "convert") and hasattr(data, "size"):  # a PIL image
        _check_pixels(*data.size)
        return np.asarray(data)
    try:
        arr = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    except (TypeError, ValueError, OverflowError) as e:
        raise RequestError(explain("cannot read this mask", got=type(data).__name__,
                                   expected="an array, PNG bytes or a data:image/png URL")) from e
    if arr.size > 4 * MAX_MASK_PIXELS:
        raise RequestError(explain("a mask is too large", got=f"shape {arr.shape}",
                                   expected=f"at most {MAX_MASK_PIXELS} pixels"))
    return arr


def _data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL (bounded in length), else RequestError."""
    head, comma, body = url[:MAX_DATA_URL + 1].partition(",")
    if not url.startswith("data:image/") or not comma or ";base64" not in head or len(url) > MAX_DATA_URL:
        raise RequestError(explain("a mask string is not a base64 image data URL", got=summary(url),
                                   expected=f"'{PNG_PREFIX}...' of at most {MAX_DATA_URL} characters",
                                   fix="Save the request with EditRequest.save, which embeds masks as PNG."))
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(explain("a mask data URL is not valid base64", got=str(e)[:80],
                                   expected="base64 PNG data after the comma")) from e


def _decode_png(raw: bytes) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` pixels of an encoded image, its size checked before decoding.

    Only the band a mask uses is kept (the alpha channel when it varies, else the first), so a
    colour image costs one byte per pixel beyond the decoded image itself.
    """
    im = open_image(raw, RequestError, where="a mask image", max_pixels=MAX_MASK_PIXELS)
    with im:
        if im.mode in ("P", "LA", "PA"):
            im = im.convert("RGBA")
        bands = im.getbands()
        if len(bands) == 1:
            return np.asarray(im)
        lo, hi = im.getextrema()[-1]
        keep = len(bands) in (2, 4) and lo != hi
        return np.asarray(im.getchannel(len(bands) - 1 if keep else 0))


def mask_to_png(mask: np.ndarray) -> str:
    """Encode a soft mask as an 8-bit grayscale PNG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return PNG_PREFIX + base64.b64encode(buf.getvalue()).decode()


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= MAX_SEED:
        raise RequestError(explain("a seed must be an integer in [0, 2**64 - 1]", got=summary(seed),
                                   fix="Use the whole number shown under the sample."))
    return int(seed)


@dataclass
class Selection:
    """One painted region: a sample ``seed`` and a soft ``mask`` ``[H, W]`` in [0, 1]."""

    seed: int
    mask: np.ndarray

    def __post_init__(self) -> None:
        self.seed = _check_seed(self.seed)
        self.mask = mask_from_image(self.mask)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "mask": mask_to_png(self.mask)}

    @classmethod
    def from_json(cls, obj: Any, where: str = "a selection") -> Selection:
        """A Selection from ``{"seed": int, "mask": data URL or nested lists of numbers}``."""
        if not isinstance(obj, dict) or "seed" not in obj or "mask" not in obj:
            raise RequestError(explain(f"{where} needs 'seed' and 'mask'",
                                       got=summary(obj) if not isinstance(obj, dict) else sorted(map(str, obj))[:8]))
        mask = V.field(obj, "mask", (str, list), RequestError, where=where)
        return cls(obj["seed"], mask)


@dataclass
class EditRequest:
    """A rule as stated by the user: copy what is under ``copy`` to where ``paste`` points, for
    every key like those under ``context`` (the paste region when ``context`` is empty)."""

    layer: str
    copy: Selection
    paste: Selection
    context: list[Selection] = field(default_factory=list)
    rank: int = 1
    model: str | None = None
    name: str = ""
    description: str = ""
    pairs: list[tuple[Selection, Selection]] = field(default_factory=list)

    def __post_init__(self) -> None:
        E = RequestError
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 1 <= self.rank <= MAX_RANK:
            raise E(explain("rank must be a positive integer", got=summary(self.rank), expected=f"1..{MAX_RANK}",
                            fix="Use a small rank such as 1 to 8."))
        V.text(self.layer, E, where="the request's layer", max_len=256)
        if self.model is not None:
            V.text(self.model, E, where="the request's model", allow_empty=True)
        V.text(self.name, E, where="the request's name", allow_empty=True)
        V.text(self.description, E, where="the request's description", allow_empty=True)
        if not isinstance(self.context, list) or len(self.context) > MAX_SELECTIONS:
            raise V.fail(E, "the request's context", self.context, f"a list of at most {MAX_SELECTIONS} selections")
        if not isinstance(self.pairs, list) or len(self.pairs) > MAX_PAIRS or not all(
                isinstance(p, tuple | list) and len(p) == 2 for p in self.pairs):
            raise V.fail(E, "the request's pairs", self.pairs, f"a list of at most {MAX_PAIRS} (copy, paste) pairs")
        self.pairs = [(c, p) for c, p in self.pairs]
        sels = [self.copy, self.paste, *self.context, *(s for pair in self.pairs for s in pair)]
        if not all(isinstance(s, Selection) for s in sels):
            raise E(explain("copy, paste, context and pairs must be Selections",
                            fix="Build them with Selection(seed, mask)."))
        pixels = sum(s.mask.size for s in sels)
        if pixels > MAX_REQUEST_PIXELS:
            raise E(explain("the request's masks are too large together", got=f"{pixels} pixels",
                            expected=f"at most {MAX_REQUEST_PIXELS}", fix="Downscale the masks (e.g. to 256 x 256)."))

    @property
    def examples(self) -> list[tuple[Selection, Selection]]:
        """Every (copy, paste) example of the rule: the request's own first, then ``pairs``."""
        return [(self.copy, self.paste), *self.pairs]

    @property
    def seeds(self) -> list[int]:
        """Every seed the request uses (held-out evaluations must avoid them)."""
        return sorted({s.seed for pair in self.examples for s in pair} | {s.seed for s in self.context})

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``pairs`` only when there are any, so a one-example request reads as before)."""
        out = {"layer": self.layer, "rank": self.rank, "model": self.model, "name": self.name,
               "description": self.description, "copy": self.copy.to_json(), "paste": self.paste.to_json(),
               "context": [s.to_json() for s in self.context]}
        if self.pairs:
            out["pairs"] = [{"copy": c.to_json(), "paste": p.to_json()} for c, p in self.pairs]
        return out

    @classmethod
    def from_json(cls, obj: Any) -> EditRequest:
        """A request from its JSON form, every field checked (types, ranges, sizes) before use.

        Masks are decoded one at a time and the total is bounded as they are, so a request never
        holds more than MAX_REQUEST_PIXELS mask pixels. Unknown keys are ignored.
        """
        E = RequestError
        if not isinstance(obj, dict):
            raise E(explain("a request must be a JSON object", got=type(obj).__name__))
        missing = [k for k in ("layer", "copy", "paste") if k not in obj]
        if missing:
            raise E(explain("the request is incomplete", got=f"missing {missing}",
                            expected="layer, copy and paste (context optional)"))
        layer = V.text(V.field(obj, "layer", str, E, where="request"), E, where="request.layer", max_len=256)
        rank = V.field(obj, "rank", int, E, where="request", required=False, default=1)
        model = V.field(obj, "model", (str, type(None)), E, where="request", required=False)
        name = V.field(obj, "name", str, E, where="request", required=False, default="")
        description = V.field(obj, "description", str, E, where="request", required=False, default="")
        context = V.field(obj, "context", (list, type(None)), E, where="request", required=False) or []
        if len(context) > MAX_SELECTIONS:
            raise V.fail(E, "request.context", context, f"at most {MAX_SELECTIONS} selections")
        pairs = V.field(obj, "pairs", (list, type(None)), E, where="request", required=False) or []
        if len(pairs) > MAX_PAIRS or not all(isinstance(p, dict) and {"copy", "paste"} <= set(p) for p in pairs):
            raise V.fail(E, "request.pairs", pairs, f"at most {MAX_PAIRS} objects with copy and paste")
        sels, pixels = [], 0
        pair_items = [(f"request.pairs[{i}].{k}", p[k]) for i, p in enumerate(pairs) for k in ("copy", "paste")]
        for where, item in [("request.copy", obj["copy"]), ("request.paste", obj["paste"]),
                            *((f"request.context[{i}]", c) for i, c in enumerate(context)), *pair_items]:
            sels.append(Selection.from_json(item, where))
            pixels += sels[-1].mask.size
            if pixels > MAX_REQUEST_PIXELS:
                raise E(explain("the request's masks are too large together", got=f"more than {pixels} pixels",
                                expected=f"at most {MAX_REQUEST_PIXELS}", fix="Downscale the masks."))
        n = 2 + len(context)
        extra = [(sels[n + 2 * i], sels[n + 2 * i + 1]) for i in range(len(pairs))]
        return cls(layer=layer, copy=sels[0], paste=sels[1], context=sels[2:n], rank=rank, model=model,
                   name=name, description=description, pairs=extra)

    def save(self, path: str | Path) -> Path:
        from olam_edit.files.atomic import atomic_write_bytes

        return atomic_write_bytes(Path(path), (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> EditRequest:
        """Read a request file: a regular file of at most MAX_JSON_BYTES of UTF-8 JSON (bounded depth)."""
        return cls.from_json(V.read_json(path, RequestError, max_depth=16))
