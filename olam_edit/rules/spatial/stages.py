"""One rule rewritten at two layers: the request's own layer first, then a second one solved on top.

A curated example may name a second stage in its settings (``add_sunglasses.eval.json``)::

    "then": {"layer": "main.12", "rank": 1, "first_strength": 0.6, "keep_top": 2}

The first stage is the request as written (its layer and rank), scaled by ``first_strength``. It is
applied to the model, the same request (same context, copy and paste) is solved again at the second
stage's layer and rank on that edited model, so its targets v* are what the copy looks like *after*
the first stage, and the first stage is reverted bit for bit. The result is one :meth:`Edit.merge` of
the two deltas (on different layers), which applies, scales, saves and publishes like any edit.

Why: at a coarse layer one value cell paints a large patch (``main.6`` of the face model: about
10 x 10 pixels per cell), which gives the rule its shape (a band across the eyes) but spills; at a
finer layer a cell paints fewer pixels (``main.9``: about 4 x 4; ``main.12``, the last: a few), which
makes the effect strong where it belongs at little cost to identity. ``first_strength`` < 1 lets
the coarse stage only sketch the shape. The second layer may also come *before* the first
(``close_mouth_pairs``: ``main.6``, then ``main.3``, where one key cell covers about 16 x 16 pixels):
the first stage changes neither its keys nor its targets, so it is solved as on the unedited model,
and its change moves the face's geometry (the lips) that the first layer then sees as keys. Both
stages use the rule's smoothness and ridge. ``keep_top``
(default 0) leaves the values of the second layer's leading key directions unchanged
(:func:`keeping_top`): without it, a rank-1 change of the last layer also dims the whole picture a
little, which brightness-based judges count as effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from olam_edit.edit.apply import apply_edit, revert_edit
from olam_edit.edit.core import Edit, check_strength
from olam_edit.errors import RequestError, explain
from olam_edit.rules.generator import Generator
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.rewriter import Rewriter


@dataclasses.dataclass(frozen=True)
class Then:
    """The second stage of a rule: its ``layer`` and ``rank``, the strength of the first stage, and how many
    of the second layer's leading key directions it leaves unchanged (``keep_top``, see the module)."""

    layer: str
    rank: int = 1
    first_strength: float = 1.0
    keep_top: int = 0


def parse_then(settings: dict[str, Any], first_layer: str) -> Then | None:
    """The ``"then"`` stage of an example's settings (None when it has none), else one RequestError."""
    raw = settings.get("then")
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"layer", "rank", "first_strength", "keep_top"}:
        raise RequestError(explain("an example's 'then' must be an object of layer, rank, first_strength and "
                                   "keep_top", got=str(raw)[:80]))
    layer, rank, fs = raw.get("layer"), raw.get("rank", 1), raw.get("first_strength", 1.0)
    top = raw.get("keep_top", 0)
    if not isinstance(layer, str) or not layer or layer == first_layer:
        raise RequestError(explain("the second stage needs a layer other than the first", got=layer,
                                   expected=f"a layer name other than {first_layer!r}"))
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 64:
        raise RequestError(explain("the second stage's rank must be a whole number in [1, 64]", got=rank))
    fs = check_strength(fs, "first_strength")
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 64:
        raise RequestError(explain("keep_top must be a whole number in [0, 64]", got=top))
    return Then(layer, rank, fs, top)


RewriterFor = Callable[[str], Rewriter]  # layer -> a rewriter of the model as it is now


def solve_staged(generator: Generator, request: EditRequest, then: Then | None, rewriter_for: RewriterFor, *,
                 smoothness: float | None = None) -> Edit:
    """The edit of ``request``: its own layer, and with ``then`` a second layer solved on top (see the
    module docstring). ``rewriter_for(layer)`` is called for the first layer before anything is applied
    and for the second with the first stage applied; it must build its statistics from the model as it
    is then (a new :class:`Rewriter` does). ``smoothness`` overrides the rewriters' own for both solves.
    The model is left exactly as it was, also on error."""
    first = rewriter_for(request.layer).rewrite(request, smoothness=smoothness)
    if then is None:
        return first
    first = first.scaled(then.first_strength)
    apply_edit(generator.model, first)
    try:
        second_request = dataclasses.replace(request, layer=then.layer, rank=then.rank)
        second = keeping_top(rewriter_for(then.layer), then.keep_top).rewrite(second_request, smoothness=smoothness)
    finally:
        revert_edit(generator.model, first)
    merged = Edit.merge([first, second])
    rule = request.description or request.name or "a rule"
    described = f"{rule}: {request.layer} (strength {then.first_strength:g}), then {then.layer} solved on it"
    recipe = {**merged.manifest["recipe"], "name": request.name, "then": dataclasses.asdict(then)}
    return Edit(merged.deltas, {**merged.manifest, "rule": described, "recipe": recipe,
                                "metrics": _metrics([first, second])})


def keeping_top(rw: Rewriter, count: int) -> Rewriter:
    """``rw``, or with ``count`` > 0 a rewriter of its layer, settings and statistics that leaves the
    values of the ``count`` leading eigenvectors of C unchanged (``protect=``). At the last layer of
    the face model the leading direction is the mean key, which every pixel shares: a rank-1 change
    along it dims or brightens the whole image, which no rule means."""
    if count == 0:
        return rw
    _, vectors = torch.linalg.eigh(rw.C)  # ascending eigenvalues; [in, in]
    top = vectors[:, -count:].T.contiguous()  # [count, in]
    return Rewriter(rw.generator, rw.layer, smoothness=rw.smoothness, ridge=rw.ridge, stats=rw.stats,
                    stats_samples=rw.stats_samples, cache_dir=rw.cache_dir, progress=rw.progress, protect=top)


def _metrics(parts: list[Edit]) -> dict[str, Any]:
    """Each stage's ‖ΔW‖/‖W‖ by layer (``relative_norms``; a stage's delta is the merged edit's on that layer)
    and the largest as ``relative_norm``."""
    norms = {}
    for part in parts:
        value = part.manifest.get("metrics", {}).get("relative_norm")
        if isinstance(value, float):
            norms[part.layers[0]] = value
    return {"relative_norms": norms, **({"relative_norm": max(norms.values())} if norms else {})}


def example_rewriter(generator: Generator, settings: dict[str, Any], *, progress: bool = True) -> RewriterFor:
    """``rewriter_for`` with an example's solver settings (smoothness, ridge) and fresh statistics."""
    from olam_edit.memory.directions import DEFAULT_RIDGE
    from olam_edit.memory.solve import DEFAULT_SMOOTHNESS

    def make(layer: str) -> Rewriter:
        return Rewriter(generator, layer, smoothness=settings.get("smoothness", DEFAULT_SMOOTHNESS),
                        ridge=settings.get("ridge", DEFAULT_RIDGE), progress=progress)

    return make


def solve_example(generator: Generator, request: EditRequest, settings: dict[str, Any], *,
                  progress: bool = True, first: Rewriter | None = None) -> Edit:
    """A curated example solved as it is shown: both stages when it has ``then``, at its ``strength``.

    ``first`` is an already-built rewriter of the request's layer (its statistics reused)."""
    make = example_rewriter(generator, settings, progress=progress)
    edit = solve_staged(generator, request, parse_then(settings, request.layer),
                        lambda layer: first if first is not None and layer == request.layer else make(layer))
    strength = check_strength(settings.get("strength", 1.0))
    return edit if strength == 1.0 else edit.scaled(strength)
