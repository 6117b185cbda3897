"""The generators every session shares (loaded once, a few at most), their rewriters and their images.

Everything here is shared by all sessions and bounded: the key statistic of a layer (one per model and
layer, whatever the ridge), the context keys of selections (:mod:`olam_edit.spaces_app.rewriters`), the
activations entering an edited layer (:mod:`olam_edit.spaces_app.render`) and the display images of
recent (model, seeds, edit, strength) renders. An image depends on nothing else, so a render found here
is exactly the one a new render would give.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from olam_edit import Edit
from olam_edit.adapters import load_generator
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.spaces_app import zerogpu
from olam_edit.spaces_app.images import display
from olam_edit.spaces_app.render import ChainRenderer, render_seeds
from olam_edit.spaces_app.rewriters import SelectionKeys, SharedRewriter
from olam_edit.spaces_app.settings import Settings

RENDERS_BYTES = 192 * 2**20  # display images of recent (model, seeds, edit, strength) renders (~1000 images)
REWRITERS_KEPT = 32  # rewriters kept (cheap to rebuild: the statistic stays)


class Models:
    """The shared generators, their rewriters and their renders.

    ``lock`` guards these caches. Running a model is serialised by the core instead: previews, key
    capture and statistics take :func:`olam_edit.model_lock`, which the Studio also holds where it reads
    the shared weights itself; a chain model (the face DCGAN) renders without it
    (:class:`~olam_edit.spaces_app.render.ChainRenderer`). Lock order: ``lock`` first, then a model's
    lock, never the reverse.
    """

    def __init__(self, settings: Settings, first: Any | None = None, keep: int = 2) -> None:
        self.settings, self.keep = settings, keep
        self.lock = threading.RLock()
        self._loading = threading.Lock()
        self._gens: OrderedDict[str, Any] = OrderedDict()
        self._rewriters: OrderedDict[tuple[str, str, float], SharedRewriter] = OrderedDict()
        self._stats: dict[tuple[str, str], SecondMoment] = {}
        self._renders: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
        self._renderers: dict[str, tuple[ChainRenderer, Callable[[Tensor], Tensor]] | None] = {}
        self.keys = SelectionKeys()
        zerogpu.register(self)  # its renders run on the GPU on ZeroGPU
        if first is not None:
            self._gens[settings.model] = first

    def get(self, spec: str) -> Any:
        """The generator ``spec``, loaded on first use. Loading (a Hub download, maybe) happens outside
        ``lock`` when the caller does not hold it, so other sessions keep working meanwhile."""
        with self.lock:
            if spec in self._gens:
                self._gens.move_to_end(spec)
                return self._gens[spec]
        with self._loading:
            with self.lock:
                if spec in self._gens:
                    return self._gens[spec]
            generator = load_generator(spec)
            with self.lock:
                self._gens[spec] = generator
                self._evict()
                return generator

    def _evict(self) -> None:
        while len(self._gens) > self.keep:
            old = next(k for k in self._gens if k != self.settings.model)
            del self._gens[old]
            self._rewriters = OrderedDict((k, v) for k, v in self._rewriters.items() if k[0] != old)
            self._stats = {k: v for k, v in self._stats.items() if k[0] != old}
            self._renders = OrderedDict((k, v) for k, v in self._renders.items() if k[0] != old)
            self._renderers.pop(old, None)
            self.keys.forget(old)

    def rewriter(self, spec: str, layer: str, ridge: float = DEFAULT_RIDGE) -> SharedRewriter:
        """The rewriter of ``layer`` with this ``ridge``; every ridge shares the layer's key statistic
        (collected here on first use, or read from the cache, with a progress bar)."""
        with self.lock:
            key = (spec, layer, float(ridge))
            if key not in self._rewriters:
                gen = self.get(spec)
                if (spec, layer) not in self._stats:
                    self._stats[(spec, layer)] = Rewriter(gen, layer, stats_samples=self.settings.stats_samples,
                                                          cache_dir=self.settings.cache_dir).stats
                self._rewriters[key] = SharedRewriter(gen, layer, ridge=float(ridge), stats=self._stats[(spec, layer)],
                                                      keys=self.keys, model=spec)
                while len(self._rewriters) > REWRITERS_KEPT:
                    self._rewriters.popitem(last=False)
            self._rewriters.move_to_end(key)
            return self._rewriters[key]

    def before(self, spec: str, seeds: Sequence[int]) -> list[np.ndarray]:
        """Display images of the base model (every session shows the same ones)."""
        return self.images(spec, seeds)

    def images(self, spec: str, seeds: Sequence[int], edit: Edit | None = None, scale: float = 1.0
               ) -> list[np.ndarray]:
        """Display images (read-only ``[256, 256, 3]`` uint8) of ``seeds`` with ``edit`` at ``scale``: the
        generator's ``images(seeds, edit, scale)``, from the shared renders when this one was made before."""
        scale = float(scale)
        if edit is None or scale == 0:  # the base model
            edit, scale = None, 1.0
        key = (spec, tuple(int(s) for s in seeds), None if edit is None else edit.fingerprint, scale)
        with self.lock:
            if key in self._renders:
                self._renders.move_to_end(key)
                return self._renders[key]
        shown = zerogpu.call(self, "display", spec, list(seeds), edit, scale)
        for im in shown:
            im.flags.writeable = False  # shared by sessions (and its PNG file is reused, see ImageFiles)
        with self.lock:
            self._renders[key] = shown
            while len(self._renders) > 1 and sum(im.nbytes for v in self._renders.values() for im in v) > RENDERS_BYTES:
                self._renders.popitem(last=False)
        return shown

    def display(self, spec: str, seeds: list[int], edit: Edit | None = None, scale: float = 1.0) -> list[np.ndarray]:
        """Display images of a render (:meth:`render`): pure GPU-bound work, on ZeroGPU in the GPU worker."""
        return display(self.render(spec, seeds, edit, scale))

    def render(self, spec: str, seeds: list[int], edit: Edit | None = None, scale: float = 1.0) -> Tensor:
        """``generator.images(seeds, edit, scale)`` ``[B, 3, H, W]``, without the model's lock for a chain model."""
        gen = self.get(spec)
        chain = self._chain(spec, gen)
        if chain is None or not chain[0].supports(edit):
            return gen.images(seeds, edit, scale)
        return render_seeds(gen, chain[0], seeds, edit, scale, chain[1])

    def _chain(self, spec: str, gen: Any) -> tuple[ChainRenderer, Callable[[Tensor], Tensor]] | None:
        with self.lock:
            if spec not in self._renderers:
                self._renderers[spec] = chain_renderer(gen)
            return self._renderers[spec]


def chain_renderer(gen: Any) -> tuple[ChainRenderer, Callable[[Tensor], Tensor]] | None:
    """A lock-free renderer of ``gen`` and its output mapping, when ``gen`` renders as a plain
    :class:`~olam_edit.adapters.TorchGenerator` does (its ``images`` and ``render`` not overridden) and
    its model is a chain; else None (its own ``images`` is used)."""
    from olam_edit.adapters.base import BaseGenerator
    from olam_edit.adapters.torch_generator import TorchGenerator

    if type(gen).render is not TorchGenerator.render or type(gen).images is not BaseGenerator.images:
        return None
    renderer = ChainRenderer.of(gen.model)
    if renderer is None:
        return None
    lo, hi = gen.output_range

    def finish(img: Tensor) -> Tensor:  # TorchGenerator.render's mapping to [-1, 1]
        return ((img - lo) * (2.0 / (hi - lo)) - 1.0).clamp(-1, 1)

    return renderer, finish
