"""The generators every session shares (loaded once, a few at most), their rewriters and base images."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from olam_edit.adapters import load_generator
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.spaces_app.images import display
from olam_edit.spaces_app.settings import Settings


class Models:
    """The shared generators and their rewriters.

    ``lock`` guards these caches. Running a model is serialised by the core instead: previews, key
    capture and statistics take :func:`olam_edit.model_lock`, which the Studio also holds where it reads
    the shared weights itself. Lock order: ``lock`` first, then a model's lock, never the reverse.
    """

    def __init__(self, settings: Settings, first: Any | None = None, keep: int = 2) -> None:
        self.settings, self.keep = settings, keep
        self.lock = threading.RLock()
        self._loading = threading.Lock()
        self._gens: OrderedDict[str, Any] = OrderedDict()
        self._rewriters: OrderedDict[tuple[str, str, float], Rewriter] = OrderedDict()
        self._stats: dict[tuple[str, str], SecondMoment] = {}
        self._before: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
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

    def rewriter(self, spec: str, layer: str, ridge: float = DEFAULT_RIDGE) -> Rewriter:
        """The rewriter of ``layer`` with this ``ridge``; every ridge shares the layer's key statistic
        (collected here on first use, or read from the cache, with a progress bar)."""
        with self.lock:
            key = (spec, layer, float(ridge))
            if key not in self._rewriters:
                gen = self.get(spec)
                if (spec, layer) not in self._stats:
                    self._stats[(spec, layer)] = Rewriter(gen, layer, stats_samples=self.settings.stats_samples,
                                                          cache_dir=self.settings.cache_dir).stats
                self._rewriters[key] = Rewriter(gen, layer, ridge=float(ridge), stats=self._stats[(spec, layer)])
                while len(self._rewriters) > 32:  # cheap to rebuild: the statistic stays
                    self._rewriters.popitem(last=False)
            self._rewriters.move_to_end(key)
            return self._rewriters[key]

    def before(self, spec: str, seeds: Sequence[int]) -> list[np.ndarray]:
        """Display images of the base model (cached: every session shows the same ones)."""
        key = (spec, tuple(seeds))
        with self.lock:
            if key not in self._before:
                self._before[key] = display(self.get(spec).images(list(seeds)))
                while len(self._before) > 16:
                    self._before.popitem(last=False)
            return self._before[key]
