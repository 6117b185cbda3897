"""Pictures of evaluations: a bar chart per method above before/after strips, and the sweep's chart."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from olam_edit.edit.core import Edit
from olam_edit.eval.evaluate import Report, render
from olam_edit.rules.generator import Generator

COLORS = {"in_region": (200, 60, 60), "collateral": (90, 90, 200)}


def bar_chart(report: Report, width: int = 420, height: int = 220):
    """A PIL bar chart: in-region and collateral change per method, ratio and generality below."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    top = max(max(s.in_region, s.collateral) for s in report.methods.values()) or 1.0
    slot = (width - 20) / len(report.methods)
    for i, (name, s) in enumerate(report.methods.items()):
        x = 10 + i * slot
        for j, (key, val) in enumerate((("in_region", s.in_region), ("collateral", s.collateral))):
            h = (height - 70) * val / top
            x0 = x + 10 + j * (slot - 20) / 2
            draw.rectangle([x0, height - 50 - h, x0 + (slot - 30) / 2, height - 50], fill=COLORS[key])
        draw.text((x + 8, height - 45), name, fill=(0, 0, 0))
        draw.text((x + 8, height - 30), f"ratio {s.ratio:.2f}  gen {s.generality:.2f}", fill=(0, 0, 0))
    draw.text((10, 5), "mean |change|: red = in region, blue = collateral", fill=(0, 0, 0))
    return img


def save_picture(report: Report, strips: dict[str, Tensor], path: Any) -> Any:
    """Bar chart above before/after strips (``strips``: method name -> images ``[B, 3, H, W]``)."""
    import io
    from pathlib import Path

    from PIL import Image

    from olam_edit.eval.grid import grid_image
    from olam_edit.files.atomic import atomic_write_bytes

    grid = grid_image(list(strips.values()), labels=list(strips), zoom=2)
    chart = bar_chart(report, width=max(420, grid.width))
    canvas = Image.new("RGB", (max(chart.width, grid.width), chart.height + grid.height), (255, 255, 255))
    canvas.paste(chart, (0, 0))
    canvas.paste(grid, (0, chart.height))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def render_strips(generator: Generator, edit: Edit, models: dict[str, nn.Module], seeds: list[int]
                  ) -> dict[str, Tensor]:
    """Images of a few seeds for each method, for the picture."""
    strips = {"before": generator.images(seeds), "rewrite": generator.images(seeds, edit)}
    strips.update({name: render(generator, m, seeds) for name, m in models.items()})
    return strips


def sweep_chart(rows: list[dict[str, Any]], width: int = 480, bar: int = 22):
    """A PIL horizontal bar chart of the in-region / collateral ratio of each (layer, rank)."""
    from PIL import Image, ImageDraw

    ok = [r for r in rows if "ratio" in r]
    img = Image.new("RGB", (width, 30 + bar * max(len(rows), 1)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), "in-region change / collateral change (higher is more local)", fill=(0, 0, 0))
    top = max((r["ratio"] for r in ok), default=1.0) or 1.0
    for i, r in enumerate(rows):
        y = 26 + i * bar
        draw.text((8, y + 4), f"{r['layer']} r{r['rank']}", fill=(0, 0, 0))
        if "ratio" in r:
            draw.rectangle([110, y + 3, 110 + (width - 180) * r["ratio"] / top, y + bar - 5], fill=(200, 60, 60))
            draw.text((width - 60, y + 4), f"{r['ratio']:.2f}", fill=(0, 0, 0))
        else:
            draw.text((110, y + 4), "failed", fill=(150, 0, 0))
    return img
