"""The Space's rewriter: a :class:`~olam_edit.Rewriter` whose context keys and directions are cached.

A context selection's keys depend on the model, the layer, the seed and the mask only, so they are
computed once and shared by every session (:class:`SelectionKeys`): the second rewrite of a rule with
300 context regions costs no forward pass, and neither does another visitor's rewrite of the same
example rule. A rule's directions D depend on those keys, the rank, the ridge and C, so each rewriter
(one per layer and ridge) keeps the last few (:attr:`SharedRewriter.directions_cache`), and the PNG of
each mask that an edit's recipe embeds is encoded once per selection. Everything else (the paste and
copy samples' keys, the solve) runs as in the core, and every edit is the one the core would make.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from olam_edit import Edit
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.rules.spatial.tensors import weighted_keys
from olam_edit.spaces_app.memo import IdMemo

KEYS_CACHE_BYTES = 256 * 2**20  # float64 keys of every cached selection, all layers and models together
DIRECTIONS_KEPT = 64  # rules whose D one rewriter remembers
Keys = tuple[Tensor, Tensor]  # keys [n, in] float64, weights [n]


def selection_key(selection: Selection) -> tuple[int, str]:
    """What a selection's keys depend on besides the layer: its seed and the digest of its mask.

    Remembered for as long as the selection lives and holds the same mask array (a session's
    selections are reused request after request; their masks are never changed in place)."""
    known = _DIGESTS.get(selection)
    if known is not None and known[0] is selection.mask:
        return known[1]
    mask = np.ascontiguousarray(np.asarray(selection.mask, dtype=np.float64))
    digest = hashlib.blake2b(mask.tobytes(), digest_size=16, person=str(mask.shape).encode()[:16]).hexdigest()
    key = (int(selection.seed), digest)
    _DIGESTS.put(selection, (selection.mask, key))
    return key


_DIGESTS: IdMemo[tuple[np.ndarray, tuple[int, str]]] = IdMemo()


class SelectionKeys:
    """Keys of context selections by (model, layer, seed, mask digest); bounded, least recently used out."""

    def __init__(self, max_bytes: int = KEYS_CACHE_BYTES) -> None:
        self.max_bytes, self._bytes = max_bytes, 0
        self._keys: OrderedDict[tuple, Keys] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Keys | None:
        with self._lock:
            found = self._keys.get(key)
            if found is not None:
                self._keys.move_to_end(key)
            return found

    def put(self, key: tuple, keys: Keys) -> None:
        with self._lock:
            if key in self._keys:
                return
            self._keys[key] = keys
            self._bytes += _nbytes(keys)
            while self._bytes > self.max_bytes and len(self._keys) > 1:
                self._bytes -= _nbytes(self._keys.popitem(last=False)[1])

    def forget(self, model: str) -> None:
        """Drop every entry of ``model`` (the generator was evicted)."""
        with self._lock:
            for key in [k for k in self._keys if k[0] == model]:
                self._bytes -= _nbytes(self._keys.pop(key))


def _nbytes(keys: Keys) -> int:
    return sum(t.numel() * t.element_size() for t in keys)


class RecipeSelection(Selection):
    """A selection whose JSON form (its mask as a PNG data URL) is computed once: a rule with hundreds
    of context regions is written into every edit's recipe, one PNG per region."""

    _json: dict[str, Any] | None = None

    @classmethod
    def of(cls, selection: Selection) -> RecipeSelection:
        """``selection`` (already validated) as a RecipeSelection, the same one while it lives."""
        if isinstance(selection, RecipeSelection):
            return selection
        known = _RECIPES.get(selection)
        if known is not None and known.mask is selection.mask:
            return known
        made = object.__new__(cls)  # its seed and mask were checked when ``selection`` was made
        made.seed, made.mask = selection.seed, selection.mask
        _RECIPES.put(selection, made)
        return made

    def to_json(self) -> dict[str, Any]:
        if self._json is None:
            self._json = super().to_json()
        return dict(self._json)


_RECIPES: IdMemo[RecipeSelection] = IdMemo()


def recipe_ready(request: EditRequest) -> EditRequest:
    """``request`` with its selections as :class:`RecipeSelection` (the same rule, cheaper to record)."""
    more = {"pairs": [(RecipeSelection.of(c), RecipeSelection.of(p)) for c, p in request.pairs]} \
        if getattr(request, "pairs", None) else {}  # further (copy, paste) examples of the rule
    return replace(request, copy=RecipeSelection.of(request.copy), paste=RecipeSelection.of(request.paste),
                   context=[RecipeSelection.of(s) for s in request.context], **more)


class SharedRewriter(Rewriter):
    """A Rewriter of the Space: ``keys`` is the cache shared by every rewriter of the Space, ``model``
    the generator's name in it (the Space's spec string). Same results as the core's Rewriter."""

    def __init__(self, generator: Any, layer: str, *, keys: SelectionKeys, model: str, **options: Any) -> None:
        super().__init__(generator, layer, progress=False, **options)
        self.keys, self.model = keys, model
        self.directions_cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self._directions_lock = threading.Lock()

    def rewrite(self, requests: EditRequest | Sequence[EditRequest], *, smoothness: float | None = None) -> Edit:
        """As :meth:`Rewriter.rewrite` (the same edit), each mask of the recipe encoded once."""
        reqs = [requests] if isinstance(requests, EditRequest) else requests
        if isinstance(reqs, list | tuple) and all(isinstance(r, EditRequest) for r in reqs):
            reqs = [recipe_ready(r) for r in reqs]
            requests = reqs[0] if isinstance(requests, EditRequest) else reqs
        return super().rewrite(requests, smoothness=smoothness)

    def context_keys(self, context: list[Selection], batch: int = 50) -> Keys:
        """As :meth:`Rewriter.context_keys`: the keys of uncached selections are captured in batches of
        ``batch`` (one forward each), the others come from the shared cache."""
        if not context:
            return super().context_keys(context, batch)  # the core's RequestError
        names = [(self.model, self.layer, *selection_key(s)) for s in context]
        found = {n: self.keys.get(n) for n in dict.fromkeys(names)}
        missing = [(n, s) for n, s in zip(names, context, strict=True) if found[n] is None]
        missing = list(dict(missing).items())  # each distinct selection once
        for i in range(0, len(missing), batch):
            chunk = missing[i : i + batch]
            x, _ = self.generator.keys_and_values(self.layer, self.generator.latents([s.seed for _, s in chunk]))
            for j, (n, s) in enumerate(chunk):
                found[n] = weighted_keys(x[j : j + 1], s.mask)  # [k, in], [k]
                self.keys.put(n, found[n])
        parts = [found[n] for n in names]
        return torch.cat([k for k, _ in parts]), torch.cat([w for _, w in parts])  # [n, in], [n]

    def directions(self, request: EditRequest, rule: Any = None) -> Tensor:
        """As :meth:`Rewriter.directions`, remembered per rule (its rank, its context or, without one, its
        paste region, and any further examples it has)."""
        pairs = [s for pair in getattr(request, "pairs", None) or [] for s in pair]
        sels: Sequence[Selection] = [*(request.context or [request.paste]), *pairs]
        key = (request.rank, bool(request.context), len(pairs), *(selection_key(s) for s in sels))
        with self._directions_lock:
            if key in self.directions_cache:
                self.directions_cache.move_to_end(key)
                return self.directions_cache[key]
        D = super().directions(request, rule)  # [rank, in]
        with self._directions_lock:
            self.directions_cache[key] = D
            while len(self.directions_cache) > DIRECTIONS_KEPT:
                self.directions_cache.popitem(last=False)
        return D
