"""Evaluate an edit the way the paper does, against its fine-tuning baselines.

On held-out seeds (never those of the request) the base and edited images are compared:
- ``in_region``: mean absolute pixel change inside the rule's region, where the region of a clean
  image is where the rule's context fires (the base model's context heatmap above the 99.9th
  percentile of the statistics, as the paper outlines matches) or a mask the caller passes;
- ``collateral``: mean absolute pixel change outside it (the paper's masked L1);
- ``generality``: the share of held-out images whose in-region change exceeds ``threshold``.
The baselines run on the same request: ``finetune_layer`` optimises the whole layer without the rank
constraint, ``finetune_all`` every weight of the generator on the single copy-paste example, each
with the reference's optimiser (Adam, L1), :data:`DEFAULT_STEPS` steps each; ``checkpoints`` also
scores each baseline after that many of its steps, to show how far it has converged. Each score
comes with its sampling error over the seeds (``ratio_se``, ``generality_se``) and the report keeps
every seed's own in-region and collateral change (``per_seed``), so a run on some of the seeds can be
compared with a stored run seed by seed. Images are in [-1, 1].
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from olam_edit.edit.core import Edit, check_strength
from olam_edit.errors import RequestError, explain
from olam_edit.rules.generator import Generator
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.rewriter import HEATMAP_QUANTILE, Rewriter
from olam_edit.rules.spatial.tensors import RuleTensors

DEFAULT_HELDOUT = range(10_000, 10_200)
GENERALITY_THRESHOLD = 0.05  # mean |change| in the region, in [-1, 1] pixel units
DEFAULT_STEPS = 2001  # Adam steps of each baseline, as the reference code's insert()
BASELINES = ("finetune_layer", "finetune_all")


@dataclass
class Scores:
    """The three measures of one method on the held-out seeds, with the sampling errors of the ratio and
    of generality (standard errors over the seeds; 0 for a single seed)."""

    in_region: float
    collateral: float
    generality: float
    ratio_se: float = 0.0
    generality_se: float = 0.0

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
    checkpoints: dict[str, Scores] = field(default_factory=dict)  # "finetune_all@100": after 100 steps
    per_seed: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)  # name -> in, out

    def to_json(self, per_seed: bool = False) -> dict[str, Any]:
        """Scores by method, ``_checkpoints`` when any, ``_meta``; with ``per_seed`` also ``_per_seed``:
        the seeds and each method's per-seed in-region and collateral change (6 significant digits)."""
        out: dict[str, Any] = {k: scores_json(v) for k, v in self.methods.items()}
        if self.checkpoints:
            out["_checkpoints"] = {k: scores_json(v) for k, v in self.checkpoints.items()}
        out["_meta"] = {"seeds": [self.seeds[0], self.seeds[-1], len(self.seeds)],
                        "region_fraction": self.region_fraction, **self.settings}
        if per_seed:
            out["_per_seed"] = {"seeds": list(self.seeds), **{k: {f: [float(f"{x:.6g}") for x in xs]
                                                               for f, xs in v.items()}
                                                           for k, v in self.per_seed.items()}}
        return out

    def table(self) -> str:
        lines = [f"{'method':<20}{'in_region':>11}{'collateral':>12}{'ratio':>8}{'generality':>12}"]
        for name, s in {**self.methods, **self.checkpoints}.items():
            lines.append(f"{name:<20}{s.in_region:>11.4f}{s.collateral:>12.4f}{s.ratio:>8.2f}{s.generality:>12.2f}")
        return "\n".join(lines)


def scores_json(s: Scores) -> dict[str, float]:
    """A Scores as JSON: its fields and the ratio."""
    return {**asdict(s), "ratio": s.ratio}


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
    hit = ((in_img - out_img > threshold) & has_region).double()  # [B]
    generality = float(hit.mean())
    n_in = region.flatten(1).sum(1).double()  # [B] region pixels of each image
    n_out = region[0].numel() - n_in  # [B]
    ratio_se = ratio_standard_error(in_img.double() * n_in, out_img.double() * n_out, n_in, n_out)
    generality_se = float(hit.std() / len(hit) ** 0.5) if len(hit) > 1 else 0.0
    return Scores(in_region, collateral, generality, ratio_se, generality_se)


def ratio_standard_error(a: Tensor, b: Tensor, n_in: Tensor, n_out: Tensor) -> float:
    """Standard error over the images of the in-region over collateral ratio
    ``R = (sum a / sum n_in) / (sum b / sum n_out)``.

    ``a`` and ``b`` are each image's summed change inside and outside its region, ``n_in`` and ``n_out``
    their pixel counts (all ``[B]``). The delta method: each image's first-order effect on R is
    ``u = (a - I n_in) / (sum n_in O) - R (b - O n_out) / (sum n_out O)`` with I, O the two means, and
    the variance is ``B / (B - 1) sum u^2``. 0 for one image or no collateral change.
    """
    n = a.numel()
    I, O = float(a.sum() / n_in.sum().clamp_min(1)), float(b.sum() / n_out.sum().clamp_min(1))
    if n < 2 or O <= 0:
        return 0.0
    R = I / O
    u = (a - I * n_in) / (float(n_in.sum()) * O) - R * (b - O * n_out) / (float(n_out.sum()) * O)  # [B]
    return float((u.square().sum() * n / (n - 1)).sqrt())


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
             steps: dict[str, int] | None = None, checkpoints: Sequence[int] = (), progress: bool = True,
             strength: float = 1.0, solved: Edit | None = None) -> Report:
    """Measure a rewrite (and, with a request, the paper's baselines) on held-out seeds.

    ``region`` is a fixed mask ``[H, W]`` (or ``[B, H, W]``) at image resolution; by default it is
    the base model's context heatmap. Baselines need the request (an Edit's recipe serves); ``steps``
    maps a baseline's name to its Adam steps (default :data:`DEFAULT_STEPS` each), each also scored
    after every step count in ``checkpoints`` below its own (``report.checkpoints``, named
    ``"finetune_all@100"``), with a progress bar and ETA when ``progress``. ``strength`` scales the
    rewrite solved from a request (:meth:`Edit.scaled`, as the Space's slider does).
    ``solved``: the request's rewrite made elsewhere (a two-stage example), measured as it is given.
    """
    request, edit = _request_and_edit(edit_or_request)
    layer = request.layer if request is not None else edit.layers[0] if edit is not None else ""
    rw = rewriter or Rewriter(generator, layer, progress=progress)
    edit = _solved(rw, request, solved or edit, strength, edit_or_request)
    held = heldout_seeds(request, seeds)
    before = generator.images(held)
    reg = _region(rw, edit, layer, held, before.shape[-2:], region, quantile)
    report = Report({}, held, float(reg.float().mean()))

    def keep(name: str, after: Tensor, checkpoint: bool = False) -> None:
        _record(report, name, before, after, reg, threshold, checkpoint)

    keep("rewrite", generator.images(held, edit))
    models: dict[str, nn.Module] = {}
    if baselines and request is not None:
        hooks = _checkpoint_hooks(generator, held, checkpoints, _steps(steps or {}), keep)
        models = _baselines(generator, rw, request, steps or {}, progress, hooks)
        for name, model in models.items():
            keep(name, render(generator, model, held))
    report.settings = {"layer": layer, "quantile": quantile if region is None else None, "threshold": threshold,
                       **_run_settings(report, steps, bool(models)), "region": "heatmap" if region is None else "given",
                       "relative_norm": edit.manifest.get("metrics", {}).get("relative_norm"),
                       **({"strength": strength} if strength != 1.0 else {})}
    report.edit, report.models = edit, models
    return report


def _solved(rw: Rewriter, request: EditRequest | None, edit: Edit | None, strength: float, given: object) -> Edit:
    """The edit to measure: ``edit`` as given, else ``request`` solved by ``rw`` and scaled by ``strength``."""
    if edit is None and request is not None:
        edit = rw.rewrite(request).scaled(check_strength(strength))
    if edit is None:
        raise RequestError(explain("evaluate needs an edit or a request", got=type(given).__name__))
    return edit


def _run_settings(report: Report, steps: dict[str, int] | None, ran: bool) -> dict[str, Any]:
    """The baselines' steps and the checkpoints scored (None when no baseline ran)."""
    done = sorted({int(k.rsplit("@", 1)[1]) for k in report.checkpoints})
    return {"steps": _steps(steps or {}) if ran else None, "checkpoints": done or None}


def _record(report: Report, name: str, before: Tensor, after: Tensor, region: Tensor, threshold: float,
            checkpoint: bool) -> None:
    """Score ``after`` against ``before`` into the report, with each seed's in-region and collateral change."""
    (report.checkpoints if checkpoint else report.methods)[name] = score(before, after, region, threshold)
    in_img, out_img, _ = per_image(before, after, region)
    report.per_seed[name] = {"in": in_img.tolist(), "out": out_img.tolist()}


StepHook = Callable[[int, nn.Module], None]  # called with (steps done, model) after each optimiser step


def _checkpoint_hooks(generator: Generator, seeds: list[int], checkpoints: Sequence[int], steps: dict[str, int],
                      keep: Callable[..., None]) -> Callable[[str], StepHook]:
    """For a baseline's name, the step hook that scores its model after each step count in ``checkpoints``
    below its last (the last is scored anyway)."""

    def for_baseline(name: str) -> StepHook:
        wanted = {c for c in checkpoints if c < steps[name]}

        def hook(step: int, model: nn.Module) -> None:
            if step in wanted:
                keep(f"{name}@{step}", render(generator, model, seeds), True)

        return hook

    return for_baseline


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


def render(generator: Generator, model: nn.Module, seeds: list[int]) -> Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] of ``seeds`` from ``model`` (a baseline's copy of the generator's)."""
    with torch.no_grad():
        return torch.cat([model(generator.latents(seeds[i : i + 25])).clamp(-1, 1) for i in range(0, len(seeds), 25)])


_render = render  # the name it had before


# -- baselines -----------------------------------------------------------------------------------
def _steps(steps: dict[str, int]) -> dict[str, int]:
    return {name: steps.get(name, DEFAULT_STEPS) for name in BASELINES}


def _baselines(generator: Generator, rw: Rewriter, request: EditRequest, steps: dict[str, int], progress: bool,
               hooks: Callable[[str], StepHook | None] | None = None) -> dict[str, nn.Module]:
    n = _steps(steps)
    _, rules = rw.example_tensors(request)  # every copy / paste example: the baselines fit what the rewrite fits
    hook: Callable[[str], StepHook | None] = hooks or (lambda _name: None)
    return {"finetune_layer": finetune_layer(rw, rules, n["finetune_layer"], progress, on_step=hook("finetune_layer"),
                                             desc="baseline 1/2: finetune_layer"),
            "finetune_all": finetune_all(generator, rw, request, rules, n["finetune_all"], progress,
                                         on_step=hook("finetune_all"), desc="baseline 2/2: finetune_all")}


def _relative_adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam whose step size is ``lr`` times each tensor's RMS: the reference's lr assumes unit-scale
    (equalised learning-rate) weights, so this keeps the same relative step on any layer."""
    groups = [{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))} for p in params]
    return torch.optim.Adam(groups)


def finetune_layer(rw: Rewriter, rule: RuleTensors | Sequence[RuleTensors], steps: int = DEFAULT_STEPS,
                   progress: bool = True, lr: float = 0.05, on_step: StepHook | None = None,
                   desc: str = "finetune_layer") -> nn.Module:
    """The reference's full-rank insert: Adam on the whole layer, L1 on the fit box (of every copy /
    paste example when given several), no projection.

    ``on_step(steps_done, model)`` runs after every step (the model is the copy being trained).
    """
    model = copy.deepcopy(rw.generator.model)
    from olam_edit.memory.handles import get_handle

    h = get_handle(model, rw.layer)
    p = h.parameter
    opt = _relative_adam([p], lr)
    rules = [rule] if isinstance(rule, RuleTensors) else list(rule)
    x = torch.cat([r.x_paste for r in rules]).to(p.dtype)  # [E, in, h, w]
    v_star = torch.cat([r.v_star for r in rules]).to(p.dtype)  # [E, out, H, W]
    m = torch.cat([r.fit_mask for r in rules]).to(p.dtype)  # [E, H, W]
    for i in tqdm(range(steps), disable=not progress, desc=desc, unit="step"):
        opt.zero_grad()
        loss = ((h.linear_op(x, h.effective_weight()) - v_star).abs() * m[:, None]).sum() / (m.sum() * v_star.shape[1])
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(i + 1, model)
    return model.eval()


def goal_image(generator: Generator, rw: Rewriter, request: EditRequest | int, rule: RuleTensors) -> Tensor:
    """The paste sample (``request``'s, or the seed given) rendered with its layer output replaced by
    the target values (the "goal")."""
    seed = request if isinstance(request, int) else request.paste.seed
    h = rw.handle
    v0 = h.values_of(rule.x_paste.to(h.parameter.dtype))
    delta = (rule.v_star.to(v0.dtype) - v0)  # [1, out, H, W] what the target adds to the layer output
    hook = h.module.register_forward_hook(lambda _m, _a, out: out + delta.to(out.dtype))
    try:
        with torch.no_grad():
            return generator.model(generator.latents([seed])).clamp(-1, 1)
    finally:
        hook.remove()


def finetune_all(generator: Generator, rw: Rewriter, request: EditRequest, rule: RuleTensors | Sequence[RuleTensors],
                 steps: int = DEFAULT_STEPS, progress: bool = True, lr: float = 0.01, on_step: StepHook | None = None,
                 desc: str = "finetune_all") -> nn.Module:
    """The reference's "overfit": every weight, Adam, L1 to the goal image inside the paste box (of
    every copy / paste example when given several: ``rule`` then follows ``request.examples``).

    The reference adds 0.01 x a VGG16 feature loss; no VGG weights exist offline, so it is L1 only.
    ``on_step(steps_done, model)`` runs after every step.
    """
    rules = [rule] if isinstance(rule, RuleTensors) else list(rule)
    seeds = [paste.seed for _, paste in request.examples][: len(rules)]
    goal = torch.cat([goal_image(generator, rw, s, r) for s, r in zip(seeds, rules, strict=True)])  # [E, 3, H, W]
    box = torch.cat([_image_box(r, goal.shape[-2:], r.v_star.shape[-2:]) for r in rules]).to(goal.device)
    model = copy.deepcopy(generator.model).train(False)
    opt = _relative_adam([p for p in model.parameters() if p.requires_grad], lr)
    z = generator.latents(seeds)
    for i in tqdm(range(steps), disable=not progress, desc=desc, unit="step"):
        opt.zero_grad()
        loss = ((model(z) - goal).abs() * box).sum() / (box.sum() * 3)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(i + 1, model)
    return model.eval()


def _image_box(rule: RuleTensors, image_size: torch.Size, value_size: torch.Size) -> Tensor:
    """The fit box scaled from the value grid to the image: ``[1, 1, H, W]`` of 0/1."""
    sy, sx = image_size[0] / value_size[0], image_size[1] / value_size[1]
    b = rule.fit_box
    m = torch.zeros(1, 1, *image_size)
    m[..., int(b.y0 * sy) : int(b.y1 * sy), int(b.x0 * sx) : int(b.x1 * sx)] = 1
    return m

