"""Search, as the original tool's: rank a pool of samples by how strongly the rule's keys respond.

The rule's context directions D (``[r, in]``: from the session's context regions, else from its current
edit) score every key position of a sample: ``d . k`` for rank 1, ``||D k||`` for rank r, as the
Rewriter's context heatmap does. A sample's response is its largest score over positions (the
reference's ``ranking_for_key``). Samples ``0 .. N-1`` are ranked in batches with a progress bar, and
their responses are cached per model, layer and digest of D, so another page, another visitor with
the same rule, or a larger pool reuses what was computed. The top samples are shown a page at a
time, tinted where the rule fires; one click adds a sample to the context, its region the positions
where the rule fires (above the 99.9th percentile of the model's own samples, else above the 95th,
else the single strongest position).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from olam_edit import context_directions, model_lock
from olam_edit.errors import EmptySelectionError, RequestError, explain
from olam_edit.rules.spatial.request import Selection
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.spaces_app.checks import whole
from olam_edit.spaces_app.images import heat_weight, tint
from olam_edit.spaces_app.pipelines import is_pipeline
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import COLORS, DISPLAY, HEAT_LOW
from olam_edit.spaces_app.studio import Gallery, Studio, check_ridge

MAX_POOL = 1000  # samples one search ranks
BATCH = 50  # samples per forward pass while ranking
RESULTS = 12  # results per page
KEEP = 32  # rankings cached


@dataclass
class Found:
    """A session's last search: the ``layer`` and ``directions`` ranked by, the ranked ``seeds`` with their
    ``responses`` (best first), and the ``page`` shown."""

    layer: str = ""
    directions: Tensor | None = None
    seeds: list[int] = field(default_factory=list)
    responses: list[float] = field(default_factory=list)
    page: int = 0

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.seeds) // RESULTS))

    def shown(self) -> list[int]:
        return self.seeds[self.page * RESULTS : (self.page + 1) * RESULTS]


def scores(keys: Tensor, D: Tensor) -> Tensor:
    """The rule's score at every position ``[B, h, w]`` of key maps ``[B, in, h, w]`` for directions ``[r, in]``."""
    proj = torch.einsum("ri,bihw->brhw", D.double(), keys.double())  # [B, r, h, w]
    return proj[:, 0] if D.shape[0] == 1 else proj.norm(dim=1)


def digest(spec: str, layer: str, D: Tensor) -> str:
    """What a ranking is cached by: the model, the layer and every value of D."""
    h = hashlib.sha256(f"{spec}\0{layer}\0{tuple(D.shape)}\0".encode())
    h.update(D.detach().to(torch.float64).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Search:
    """Rankings of sample pools by a rule's response (shared by every session; see the module docstring)."""

    def __init__(self, studio: Studio) -> None:
        self.studio, self.lock = studio, threading.Lock()
        self._responses: OrderedDict[str, np.ndarray] = OrderedDict()  # digest -> [P] response of seeds 0..P-1

    def directions(self, session: Session, layer: str, rank: int, ridge: float) -> tuple[str, Tensor]:
        """The layer and directions ``[r, in]`` of the session's rule: its context regions, else its edit."""
        if is_pipeline(self.studio.generator(session)):
            raise RequestError(explain("search ranks the samples of an image generator, and this model is a "
                                       "diffusers pipeline", got=session.model,
                                       fix="Load a generator ('default' or a Hub id) to search its samples."))
        if session.context:
            rw = self.studio.models.rewriter(session.model, layer, check_ridge(ridge))
            keys, weights = rw.context_keys(session.context)  # [n, in], [n]
            if keys.shape[0] == 0:
                raise EmptySelectionError(explain("the context regions are empty at this layer's resolution",
                                                  fix="Paint larger regions."))
            return layer, context_directions(keys, weights, rw.C, int(rank), rw.ridge).to(torch.float64)
        if session.current is not None and session.current.deltas:
            name, delta = next(iter(session.current.deltas.items()))
            return name, delta.directions.to(torch.float64)
        raise RequestError(explain("there is no rule to search by yet",
                                   fix="Add a context region (or rewrite) first, then press Search."))

    def rank(self, session: Session, layer: str, rank: int, ridge: float, pool: object,
             progress: Callable[[float, str], None] = lambda f, d: None) -> Found:
        """Rank samples ``0 .. pool-1`` by the rule's response (computed in batches, cached)."""
        size = whole(pool, "search pool", 1, MAX_POOL)
        layer, D = self.directions(session, layer, rank, ridge)
        responses = self.responses(session.model, layer, D, size, progress)[:size]  # [size]
        order = np.argsort(-responses, kind="stable")  # best first; ties by seed
        return Found(layer, D, [int(s) for s in order], [float(responses[s]) for s in order])

    def responses(self, spec: str, layer: str, D: Tensor, size: int,
                  progress: Callable[[float, str], None] = lambda f, d: None) -> np.ndarray:
        """The responses ``[>= size]`` of seeds ``0 ..``: the cached ones, extended to ``size`` if needed."""
        key = digest(spec, layer, D)
        with self.lock:
            known = self._responses.get(key, np.zeros(0))
        if len(known) >= size:
            progress(1.0, f"{size} samples ranked (cached)")
            return known
        gen, parts = self.studio.models.get(spec), [known]
        starts = range(len(known), size, BATCH)
        for i, start in enumerate(starts):
            seeds = list(range(start, min(size, start + BATCH)))
            with model_lock(gen.model):  # a turn per batch: other visitors' requests run in between
                x, _ = gen.keys_and_values(layer, gen.latents(seeds))  # [b, in, h, w]
            parts.append(scores(x, D).flatten(1).amax(1).numpy())  # [b]
            progress((i + 1) / len(starts), f"ranked {seeds[-1] + 1} of {size} samples")
        done = np.concatenate(parts)
        with self.lock:
            self._responses[key] = done
            self._responses.move_to_end(key)
            while len(self._responses) > KEEP:
                self._responses.popitem(last=False)
        return done

    def _heat(self, session: Session, found: Found, seeds: list[int]) -> tuple[np.ndarray, float, float]:
        """Scores ``[b, h, w]`` of ``seeds`` and the tint's two quantiles (as the gallery's heatmap)."""
        if found.directions is None:
            raise RequestError(explain("there are no search results yet", fix="Press Search first."))
        rw: Rewriter = self.studio.models.rewriter(session.model, found.layer)
        D = found.directions
        with model_lock(rw.generator.model):
            heat = rw.context_heatmap(seeds, directions=D)
            low = rw.score_quantile(D, HEAT_LOW)
        return heat.scores.numpy(), low, heat.threshold

    def page(self, session: Session, found: Found) -> Gallery:
        """The results of ``found.page``: samples tinted where the rule fires, captioned rank, seed, response."""
        seeds = found.shown()
        if not seeds:
            return []
        heat, low, high = self._heat(session, found, seeds)
        images = self.studio.models.before(session.model, seeds)
        first = found.page * RESULTS
        return [(tint(im, heat_weight(s, low, high), COLORS["heat"]),
                 f"{first + i + 1}. #{seed} ({found.responses[first + i]:.3g})")
                for i, (im, s, seed) in enumerate(zip(images, heat, seeds, strict=True))]

    def turn(self, found: Found, step: int) -> None:
        """Show the page ``step`` pages on (RequestError past either end)."""
        page = found.page + int(step)
        if not found.seeds:
            raise RequestError(explain("there are no search results yet", fix="Press Search first."))
        if not 0 <= page < found.pages:
            raise RequestError(explain("there is no such page", got=page + 1, expected=f"1 to {found.pages}"))
        found.page = page

    def add(self, session: Session, found: Found, index: int) -> Selection:
        """Add result ``index`` of the page shown to the session's context, its region where the rule fires."""
        seeds = found.shown()
        if not 0 <= int(index) < len(seeds):
            raise RequestError(explain("no such search result on this page", got=index,
                                       expected=f"0 to {len(seeds) - 1}" if seeds else "a search first"))
        seed = seeds[int(index)]
        heat, low, high = self._heat(session, found, [seed])
        region = firing_region(heat[0], low, high)  # [h, w]
        zoom = max(1, DISPLAY // max(region.shape))
        selection = Selection(seed, np.kron(region, np.ones((zoom, zoom))))  # [H, W] at about the display size
        session.context = [*session.context, selection]
        return selection


def firing_region(score: np.ndarray, low: float, high: float) -> np.ndarray:
    """Where a sample's ``score`` ``[h, w]`` passes ``high``, else ``low``, else its largest position (0 / 1)."""
    for threshold in (high, low):
        region = score > threshold
        if region.any():
            return region.astype(np.float64)
    region = np.zeros(score.shape)
    region[np.unravel_index(int(np.argmax(score)), score.shape)] = 1.0
    return region
