"""EditRequest and Selection: a rule as the user states it, with a JSON form that embeds masks as PNG.

A Selection is a sample (its seed) plus a soft mask in [0, 1] at any resolution. A request names the
layer, the rank, the context selections (where the rule applies), and one copy and one paste
selection (what to put there, and where to show it).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from olam_edit.errors import RequestError, explain

PNG_PREFIX = "data:image/png;base64,"


def mask_from_image(data: Any) -> np.ndarray:
    """A float mask ``[H, W]`` in [0, 1] from an array, PNG bytes, a data URL or a PIL image.

    Colour images use their alpha channel when it is not constant, else their first channel (white
    strokes on black). Integer arrays are read as 0..255.
    """
    arr = _to_array(data)
    if arr.ndim == 3:
        has_alpha = arr.shape[2] in (2, 4) and arr[..., -1].min() != arr[..., -1].max()
        arr = arr[..., -1] if has_alpha else arr[..., 0]
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise RequestError(explain("a mask must be a 2-D image", got=f"shape {arr.shape}", expected="[H, W]"))
    arr = arr.astype(np.float64) / 255.0 if arr.dtype.kind in "ui" else arr.astype(np.float64)
    if arr.dtype.kind == "b" or not np.isfinite(arr).all():
        raise RequestError(explain("a mask contains NaN or Inf", fix="Use values in [0, 1]."))
    return np.clip(arr, 0.0, 1.0)


def _to_array(data: Any) -> np.ndarray:
    if isinstance(data, str) and data.startswith("data:image/"):
        data = base64.b64decode(data.split(",", 1)[1])
    if isinstance(data, bytes | bytearray):
        return _decode_png(bytes(data))
    if hasattr(data, "convert") and hasattr(data, "size"):  # a PIL image
        return np.asarray(data)
    try:
        return np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    except (TypeError, ValueError) as e:
        raise RequestError(explain("cannot read this mask", got=type(data).__name__,
                                   expected="an array, PNG bytes or a data:image/png URL")) from e


def _decode_png(raw: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return np.asarray(im.convert("RGBA") if im.mode in ("P", "LA", "PA") else im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise RequestError(explain("a mask is not a readable image", got=str(e)[:120])) from e


def mask_to_png(mask: np.ndarray) -> str:
    """Encode a soft mask as an 8-bit grayscale PNG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return PNG_PREFIX + base64.b64encode(buf.getvalue()).decode()


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise RequestError(explain("a seed must be a non-negative integer", got=repr(seed),
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
    def from_json(cls, obj: Any) -> Selection:
        if not isinstance(obj, dict) or "seed" not in obj or "mask" not in obj:
            raise RequestError(explain("a selection needs 'seed' and 'mask'", got=obj if not isinstance(obj, dict)
                                       else sorted(obj)))
        return cls(obj["seed"], obj["mask"])


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

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise RequestError(explain("rank must be a positive integer", got=repr(self.rank)))

    @property
    def seeds(self) -> list[int]:
        """Every seed the request uses (held-out evaluations must avoid them)."""
        return sorted({self.copy.seed, self.paste.seed, *(s.seed for s in self.context)})

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "rank": self.rank, "model": self.model, "name": self.name,
                "description": self.description, "copy": self.copy.to_json(), "paste": self.paste.to_json(),
                "context": [s.to_json() for s in self.context]}

    @classmethod
    def from_json(cls, obj: Any) -> EditRequest:
        if not isinstance(obj, dict):
            raise RequestError(explain("a request must be a JSON object", got=type(obj).__name__))
        missing = [k for k in ("layer", "copy", "paste") if k not in obj]
        if missing:
            raise RequestError(explain("the request is incomplete", got=f"missing {missing}",
                                       expected="layer, copy and paste (context optional)"))
        return cls(layer=obj["layer"], copy=Selection.from_json(obj["copy"]), paste=Selection.from_json(obj["paste"]),
                   context=[Selection.from_json(s) for s in obj.get("context") or []], rank=obj.get("rank", 1),
                   model=obj.get("model"), name=obj.get("name", ""), description=obj.get("description", ""))

    def save(self, path: str | Path) -> Path:
        from olam_edit.files.atomic import atomic_write_bytes

        return atomic_write_bytes(Path(path), (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> EditRequest:
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RequestError(explain(f"cannot read request {path}", got=str(e)[:160])) from e
        return cls.from_json(obj)
