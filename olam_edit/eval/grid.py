"""Before/after pictures: image tensors in [-1, 1] laid out as a labelled grid PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from olam_edit.files.atomic import atomic_write_bytes


def to_uint8(images: Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, H, W, 3]`` uint8."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()  # [B, 3, H, W]
    return arr.permute(0, 2, 3, 1).numpy().astype(np.uint8)


def grid_image(rows: list[Tensor], labels: list[str] | None = None, zoom: int = 2, pad: int = 2):
    """A PIL image with one row per tensor ``[B, 3, H, W]`` (all the same size), labels on the left."""
    from PIL import Image, ImageDraw

    tiles = [to_uint8(r) for r in rows]
    n, h, w = tiles[0].shape[0], tiles[0].shape[1] * zoom, tiles[0].shape[2] * zoom
    left = 110 if labels else 0
    canvas = Image.new("RGB", (left + n * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        y = pad + r * (h + pad)
        if labels:
            draw.text((4, y + h // 2 - 6), labels[r], fill=(0, 0, 0))
        for c, tile in enumerate(row):
            tile_image = Image.fromarray(tile).resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(tile_image, (left + pad + c * (w + pad), y))
    return canvas


def save_grid(rows: list[Tensor], path: str | Path, labels: list[str] | None = None, zoom: int = 2) -> Path:
    """Write :func:`grid_image` as a PNG (atomically)."""
    import io

    buf = io.BytesIO()
    grid_image(rows, labels, zoom).save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())
