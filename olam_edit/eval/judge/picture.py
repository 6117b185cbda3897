"""The judge's picture: held-out faces before and after, large enough for a person to judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from torch import Tensor

from olam_edit.eval.judge.read import to_pixels

FACE_PX = 128  # each face's size in the picture
LABEL_W = 86  # the left column naming each row


def shown_faces(report: Any, count: int = 16) -> list[int]:
    """Positions (in the held-out seeds) of the first ``count`` judged faces the rule can change, in
    seed order: the picture shows them, with no choosing among them."""
    return [int(i) for i, ok in zip(report.judged, report.per_face_eligible, strict=True) if ok][:count]


def judge_picture(rows: dict[str, Tensor], seeds: list[int], per_row: int = 8) -> Image.Image:
    """A grid: for each block of ``per_row`` faces, one row per method (``rows``: name -> ``[n, 3, H, W]``)."""
    names = list(rows)
    pix = {k: to_pixels(v, FACE_PX) for k, v in rows.items()}
    n = len(seeds)
    blocks = (n + per_row - 1) // per_row
    canvas = Image.new("RGB", (LABEL_W + per_row * FACE_PX, blocks * (len(names) * FACE_PX + 18)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for b in range(blocks):
        y0 = b * (len(names) * FACE_PX + 18)
        for j in range(min(per_row, n - b * per_row)):
            draw.text((LABEL_W + j * FACE_PX + 4, y0 + 3), f"seed {seeds[b * per_row + j]}", fill=(0, 0, 0))
        for r, name in enumerate(names):
            y = y0 + 16 + r * FACE_PX
            draw.text((6, y + FACE_PX // 2 - 6), name, fill=(0, 0, 0))
            for j in range(min(per_row, n - b * per_row)):
                canvas.paste(Image.fromarray(pix[name][b * per_row + j]), (LABEL_W + j * FACE_PX, y))
    return canvas


def save_judge_picture(rows: dict[str, Tensor], seeds: list[int], path: str | Path) -> Path:
    """Write :func:`judge_picture` as a PNG (atomically, with the umask's mode)."""
    import io

    from olam_edit.files.atomic import atomic_write_bytes

    buf = io.BytesIO()
    judge_picture(rows, seeds).save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())
