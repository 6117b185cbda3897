"""Evaluate an edit the way the paper does, against its fine-tuning baselines.

On held-out seeds (never those of the request) the base and edited images are compared:
- ``in_region``: mean absolute pixel change inside the rule's region, where the region of a clean
  image is where the rule's context fires (the base model's context heatmap above the 99.9th
  percentile of the statistics, as the paper outlines matches) or a mask the caller passes;
- ``collateral``: mean absolute pixel change outside it (the paper's masked L1);
- ``generality``: the share of held-out images whose in-region change exceeds ``threshold``.
The baselines run on the same request: ``finetune_layer`` optimises the whole layer without the rank
constraint, ``finetune_all`` every weight of the generator on the single copy-paste example, each
with the reference's optimiser (Adam, L1). Images are in [-1, 1].
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from olam_edit.edit.core import Edit
from olam_edit.errors import RequestError, explain
from olam_edit.rules.generator import Generator
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.rewriter import HEATMAP_QUANTILE, Rewriter
from olam_edit.rules.spatial.tensors import RuleTensors

DEFAULT_HELDOUT = range(10_000, 10_200)
GENERALITY_THRESHOLD = 0.05  # mean |change| in the region, in [-1, 1] pixel units


@dataclass
class Scores:
    """The three measures of one method on the held-out seeds."""

    in_region: float
    collateral: float
    generality: float

    @property
    def ratio(self) -> float:
        """In-region change over collateral change (higher is more local)."""
        return self.in_region / max(self.collateral, 1e-12)


@dataclass
class Report:
    """Scores by method, plus what they were measured on."""

    methods: dict[str, Scores]
    seeds: list[int]
    region_fraction: float
    settings: dict[str, Any] = field(default_factory=dict)
    edit: Edit | None = field(default=None, repr=False)
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: {**asdict(v), "ratio": v.ratio} for k, v in self.methods.items()}
        out["_meta"] = {"seeds": [self.seeds[0], self.seeds[-1], len(self.seeds)],
                        "region_fraction": self.region_fraction, **self.settings}
        return out

    def table(self) -> str:
        lines = [f"{'method':<16}{'in_region':>11}{'collateral':>12}{'ratio':>8}{'generality':>12}"]
        for name, s in self.methods.items():
            lines.append(f"{name:<16}{s.in_region:>11.4f}{s.collateral:>12.4f}{s.ratio:>8.2f}{s.generality:>12.2f}")
        return "\n".join(lines)


def heldout_seeds(request: EditRequest | None, seeds: Sequence[int] | None = None) -> list[int]:
    """``seeds`` (default 10000-10199) without any seed the request uses."""
    used = set(request.seeds) if request is not None else set()
    chosen = list(DEFAULT_HELDOUT if seeds is None else seeds)
    kept = [s for s in chosen if s not in used]
    if not kept:
        raise RequestError(explain("no held-out seeds left", got=chosen[:5],
                                   fix="Pass seeds the request does not use."))
    return kept


def per_image(before: Tensor, after: Tensor, region: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean |change| inside and outside the region of each image ``[B]``, and whether it has a region."""
    diff = (after - before).abs().mean(1)  # [B, H, W]
    inside, outside = region.float(), (~region).float()
    n_in = inside.flatten(1).sum(1)  # [B]
    in_img = (diff * inside).flatten(1).sum(1) / n_in.clamp_min(1)  # [B]
    out_img = (diff * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)  # [B]
    return in_img, out_img, n_in > 0


def score(before: Tensor, after: Tensor, region: Tensor, threshold: float = GENERALITY_THRESHOLD) -> Scores:
    """Measures from images ``[B, 3, H, W]`` and a boolean region ``[B, H, W]``.

    An image counts towards generality when its in-region change exceeds its own out-of-region
    change by more than ``threshold``: the rule took effect there, rather than the whole image moved.
    """
    diff = (after - before).abs().mean(1)  # [B, H, W]
    in_region = float((diff * region).sum() / region.sum().clamp_min(1))
    collateral = float((diff * ~region).sum() / (~region).sum().clamp_min(1))
    in_img, out_img, has_region = per_image(before, after, region)
    generality = float(((in_img - out_img > threshold) & has_region).float().mean())
    return Scores(in_region, collateral, generality)


def heatmap_region(rewriter: Rewriter, directions: Tensor, seeds: list[int], size: tuple[int, int],
                   quantile: float = HEATMAP_QUANTILE) -> Tensor:
    """Where the rule's context fires on the clean images: ``[B, H, W]`` booleans at image size."""
    heat = rewriter.context_heatmap(seeds, directions=directions)
    thr = heat.threshold if quantile == HEATMAP_QUANTILE else rewriter.score_quantile(directions, quantile)
    hit = (heat.scores > thr).double()[:, None]  # [B, 1, h, w]
    return F.interpolate(hit, size=size, mode="nearest")[:, 0] > 0.5


def evaluate(generator: Generator, edit_or_request: Edit | EditRequest, *, seeds: Sequence[int] | None = None,
             region: Tensor | None = None, baselines: bool = True, rewriter: Rewriter | None = None,
             quantile: float = HEATMAP_QUANTILE, threshold: float = GENERALITY_THRESHOLD,
             steps: dict[str, int] | None = None, progress: bool = True) -> Report:
    """Measure a rewrite (and, with a request, the paper's baselines) on held-out seeds.

    ``region`` is a fixed mask ``[H, W]`` (or ``[B, H, W]``) at image resolution; by default it is
    the base model's context heatmap. Baselines need the request (an Edit's recipe serves).
    """
    request, edit = _request_and_edit(edit_or_request)
    layer = request.layer if request is not None else edit.layers[0] if edit is not None else ""
    rw = rewriter or Rewriter(generator, layer, progress=progress)
    if edit is None and request is not None:
        edit = rw.rewrite(request)
    if edit is None:
        raise RequestError(explain("evaluate needs an edit or a request", got=type(edit_or_request).__name__))
    held = heldout_seeds(request, seeds)
    before = generator.images(held)
    reg = _region(rw, edit, layer, held, before.shape[-2:], region, quantile)
    methods = {"rewrite": score(before, generator.images(held, edit), reg, threshold)}
    models = _baselines(generator, rw, request, steps or {}, progress) if baselines and request else {}
    for name, model in models.items():
        methods[name] = score(before, _render(generator, model, held), reg, threshold)
    settings = {"layer": layer, "quantile": quantile if region is None else None, "threshold": threshold,
                "steps": _steps(steps or {}) if models else None, "region": "heatmap" if region is None else "given",
                "relative_norm": edit.manifest.get("metrics", {}).get("relative_norm")}
    report = Report(methods, held, float(reg.float().mean()), settings)
    report.edit, report.models = edit, models
    return report


def _request_and_edit(obj: Edit | EditRequest) -> tuple[EditRequest | None, Edit | None]:
    if isinstance(obj, EditRequest):
        return obj, None
    recipe = obj.manifest.get("recipe")
    return (EditRequest.from_json(recipe) if isinstance(recipe, dict) and "copy" in recipe else None), obj


def _region(rw: Rewriter, edit: Edit, layer: str, seeds: list[int], size: torch.Size, region: Tensor | None,
            quantile: float) -> Tensor:
    if region is not None:
        reg = torch.as_tensor(region).bool()
        return reg.expand(len(seeds), *reg.shape[-2:]) if reg.ndim == 2 else reg
    D = edit.deltas[layer].directions.double()
    return heatmap_region(rw, D, seeds, (size[-2], size[-1]), quantile)


def _render(generator: Generator, model: nn.Module, seeds: list[int]) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(generator.latents(seeds[i : i + 25])).clamp(-1, 1) for i in range(0, len(seeds), 25)])


# -- baselines -----------------------------------------------------------------------------------
def _steps(steps: dict[str, int]) -> dict[str, int]:
    return {"finetune_layer": steps.get("finetune_layer", 2001), "finetune_all": steps.get("finetune_all", 2001)}


def _baselines(generator: Generator, rw: Rewriter, request: EditRequest, steps: dict[str, int], progress: bool
               ) -> dict[str, nn.Module]:
    n = _steps(steps)
    rule = rw.rule_tensors(request)
    return {"finetune_layer": finetune_layer(rw, rule, n["finetune_layer"], progress),
            "finetune_all": finetune_all(generator, rw, request, rule, n["finetune_all"], progress)}


def _relative_adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam whose step size is ``lr`` times each tensor's RMS: the reference's lr assumes unit-scale
    (equalised learning-rate) weights, so this keeps the same relative step on any layer."""
    groups = [{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))} for p in params]
    return torch.optim.Adam(groups)


def finetune_layer(rw: Rewriter, rule: RuleTensors, steps: int = 2001, progress: bool = True, lr: float = 0.05
                   ) -> nn.Module:
    """The reference's full-rank insert: Adam on the whole layer, L1 on the fit box, no projection."""
    model = copy.deepcopy(rw.generator.model)
    from olam_edit.memory.handles import get_handle

    h = get_handle(model, rw.layer)
    p = h.parameter
    opt = _relative_adam([p], lr)
    x, v_star, m = rule.x_paste.to(p.dtype), rule.v_star.to(p.dtype), rule.fit_mask.to(p.dtype)
    for _ in tqdm(range(steps), disable=not progress, desc="finetune_layer"):
        opt.zero_grad()
        loss = ((h.linear_op(x, h.effective_weight()) - v_star).abs() * m[:, None]).sum() / (m.sum() * v_star.shape[1])
        loss.backward()
        opt.step()
    return model.eval()


def goal_image(generator: Generator, rw: Rewriter, request: EditRequest, rule: RuleTensors) -> Tensor:
    """The paste sample rendered with its layer output replaced by the target values (the "goal")."""
    h = rw.handle
    v0 = h.values_of(rule.x_paste.to(h.parameter.dtype))
    delta = (rule.v_star.to(v0.dtype) - v0)  # [1, out, H, W] what the target adds to the layer output
    hook = h.module.register_forward_hook(lambda _m, _a, out: out + delta.to(out.dtype))
    try:
        with torch.no_grad():
            return generator.model(generator.latents([request.paste.seed])).clamp(-1, 1)
    finally:
        hook.remove()


def finetune_all(generator: Generator, rw: Rewriter, request: EditRequest, rule: RuleTensors, steps: int = 2001,
                 progress: bool = True, lr: float = 0.01) -> nn.Module:
    """The reference's "overfit": every weight, Adam, L1 to the goal image inside the paste box.

    The reference adds 0.01 x a VGG16 feature loss; no VGG weights exist offline, so it is L1 only.
    """
    goal = goal_image(generator, rw, request, rule)  # [1, 3, H, W]
    box = _image_box(rule, goal.shape[-2:], rule.v_star.shape[-2:]).to(goal.device)
    model = copy.deepcopy(generator.model).train(False)
    opt = _relative_adam([p for p in model.parameters() if p.requires_grad], lr)
    z = generator.latents([request.paste.seed])
    for _ in tqdm(range(steps), disable=not progress, desc="finetune_all"):
        opt.zero_grad()
        loss = ((model(z) - goal).abs() * box).sum() / (box.sum() * 3)
        loss.backward()
        opt.step()
    return model.eval()


def _image_box(rule: RuleTensors, image_size: torch.Size, value_size: torch.Size) -> Tensor:
    """The fit box scaled from the value grid to the image: ``[1, 1, H, W]`` of 0/1."""
    sy, sx = image_size[0] / value_size[0], image_size[1] / value_size[1]
    b = rule.fit_box
    m = torch.zeros(1, 1, *image_size)
    m[..., int(b.y0 * sy) : int(b.y1 * sy), int(b.x0 * sx) : int(b.x1 * sx)] = 1
    return m


# -- picture -------------------------------------------------------------------------------------
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
    strips.update({name: _render(generator, m, seeds) for name, m in models.items()})
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
