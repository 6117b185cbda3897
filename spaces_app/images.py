"""Images as the Space shows them: display sizes, tints, heatmap opacity, and the PNG files it serves;
and the size check every image a client sends passes before it is decoded (:func:`check_size`)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from olam_edit.eval.grid import to_uint8
from olam_edit.spaces_app.memo import IdMemo
from olam_edit.spaces_app.settings import DISPLAY

MAX_PAINT_SIDE = 8 * DISPLAY  # pixels per side: the painter's images are DISPLAY x DISPLAY
MAX_PAINT_PIXELS = (4 * DISPLAY) ** 2  # pixels in all (an RGBA image of this size is 4 MB decoded)
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}  # the PNGs served: fast and small (runs of pixels)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the editor's canvas exports PNG; nothing else is decoded


@dataclass(frozen=True)
class RefusedImage:
    """An image the painter did not decode, and why (shown to the visitor)."""

    reason: str


def limit_pil() -> None:
    """Set PIL's own decompression-bomb bound explicitly to the project's (never looser than it):
    PIL then refuses any image over twice :data:`olam_edit.files.validate.MAX_IMAGE_PIXELS`."""
    from PIL import Image

    from olam_edit.files.validate import MAX_IMAGE_PIXELS

    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def image_size(source: Any) -> tuple[int, int] | RefusedImage:
    """The (width, height) a PNG (file path or bytes) states in its header, or why it cannot be read.

    Only the first 24 bytes are read (the signature and the IHDR chunk, which PNG puts first).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:24])
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(24)
        except OSError:
            return RefusedImage("the painted image cannot be read")
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return RefusedImage("the painted image is not a readable PNG")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def check_size(size: tuple[int, int] | RefusedImage) -> RefusedImage | None:
    """None if an image of ``size`` may be decoded, else why not."""
    if isinstance(size, RefusedImage):
        return size
    width, height = size
    if width < 1 or height < 1 or max(width, height) > MAX_PAINT_SIDE or width * height > MAX_PAINT_PIXELS:
        return RefusedImage(f"the painted image is too large (got {width}x{height} pixels; expected at most "
                            f"{MAX_PAINT_PIXELS} pixels and {MAX_PAINT_SIDE} per side, the painter shows "
                            f"{DISPLAY}x{DISPLAY})")
    return None


def resize(img: np.ndarray, size: int = DISPLAY, smooth: bool = False) -> np.ndarray:
    """An image ``[H, W, C]`` uint8 scaled so that its longer side is ``size`` (nearest for pixel art)."""
    from PIL import Image

    h, w = img.shape[:2]
    if max(h, w) == size:
        return img
    new = (max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w))))
    up = max(h, w) < size and not smooth
    return np.asarray(Image.fromarray(img).resize(new, Image.NEAREST if up else Image.LANCZOS))


def display(images: torch.Tensor) -> list[np.ndarray]:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> a list of uint8 ``[256, 256, 3]`` arrays."""
    return [resize(im) for im in to_uint8(images)]


def tint(img: np.ndarray, weight: np.ndarray, color: tuple[int, int, int], opacity: float = 0.55) -> np.ndarray:
    """Blend ``color`` into ``img`` ``[H, W, 3]`` where ``weight`` ``[h, w]`` in [0, 1] is high."""
    w = resize_weight(weight, img.shape[:2])[..., None] * opacity  # [H, W, 1]
    out = img.astype(np.float64) * (1 - w) + np.asarray(color, np.float64) * w  # [H, W, 3]
    return out.round().clip(0, 255).astype(np.uint8)


def resize_weight(weight: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map in [0, 1] resized bilinearly to ``size`` (h, w)."""
    t = torch.as_tensor(np.asarray(weight, dtype=np.float64))[None, None]  # [1, 1, h, w]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)  # [1, 1, H, W]
    return out[0, 0].clamp(0, 1).numpy()


def heat_weight(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """Opacity of the heatmap: 0 up to the score ``low``, rising to 1 at ``high`` and above."""
    return np.clip((scores - low) / max(high - low, 1e-12), 0.0, 1.0)


class ImageFiles:
    """PNG files of the images the app shows, named by their content and written once, atomically.

    Handlers return these paths rather than arrays: Gradio rewrites the cache file of an array each
    time it is returned (not atomically), so an image shown twice could be served half-written; a
    file path it copies once and then reuses. Files unused for an hour are pruned now and then.

    A read-only array (the shared renders of :class:`~olam_edit.spaces_app.generators.Models` are) is
    encoded once: its file is remembered for as long as the array lives. The files are a cache, so
    they are renamed into place (never seen half-written) but not synced to disk, and compressed with
    zlib's fastest level and run-length strategy (the upscaled samples are runs of equal pixels: smaller
    files than PIL's default, several times faster).
    """

    def __init__(self, folder: str | Path | None = None, max_age_s: float = 3600.0) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="olam-edit-images-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_age_s, self._writes = max_age_s, 0
        self._known: IdMemo[str] = IdMemo()  # the file of each live read-only array

    def __call__(self, image: np.ndarray) -> str:
        """The path of the PNG of ``image`` ``[H, W, C]`` uint8 (written on first use)."""
        known = self._known.get(image)
        if known is not None and os.path.exists(known):
            os.utime(known)
            return known
        path = self._write(image)
        if not image.flags.writeable:
            self._known.put(image, path)
        return path

    def _write(self, image: np.ndarray) -> str:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", **PNG_OPTIONS)
        path = self.folder / f"{hashlib.sha256(buf.getvalue()).hexdigest()[:40]}.png"
        if path.exists():
            os.utime(path)
            return str(path)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)  # readers see the whole file or none
        self._writes += 1
        if self._writes % 500 == 0:
            self.prune()
        return str(path)

    def prune(self) -> None:
        """Delete the files not shown for ``max_age_s`` seconds."""
        for old in self.folder.glob("*.png"):
            if time.time() - old.stat().st_mtime > self.max_age_s:
                old.unlink(missing_ok=True)

    def convert(self, value: Any) -> Any:
        """``value`` with every image array replaced by its file (through tuples, lists and dicts)."""
        if isinstance(value, np.ndarray) and value.ndim == 3:
            return self(value)
        if isinstance(value, tuple | list):
            return type(value)(self.convert(v) for v in value)
        if isinstance(value, dict):
            return {k: self.convert(v) for k, v in value.items()}
        return value
