"""collect_stats: one pass over sample batches that accumulates C = E[k k^T] for several layers.

The forward stops as soon as every requested layer has seen its input. Results are cached under a
fingerprint of everything they depend on (model weights, layer, sampler settings, sample count,
dtype), partial sums are checkpointed atomically so an interrupted run resumes. A cache entry or
checkpoint that fails SecondMoment.load's checks (digest, count, symmetry, finiteness, schema) is
renamed to ``<name>.corrupt-<time>`` with a CorruptCacheWarning and recomputed, never used.

Across processes (a ``torch.distributed`` group the caller initialised, or the one
:mod:`olam_edit.memory.distributed` joins under torchrun): rank ``r`` of ``world`` takes batches
``r, r + world, ...``, so the union of the ranks' batches is the single process's and the
all-reduced float64 sums and counts are the same statistic. Rank 0 alone reads and writes the cache
(what it found is broadcast; the others wait at a barrier until its file is in place), and the
fingerprint does not depend on the world size.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from olam_edit._version import __version__
from olam_edit.errors import RequestError, StaleStatisticsError, StatsFileError, explain
from olam_edit.files.fingerprint import json_fingerprint, model_fingerprint
from olam_edit.memory import distributed
from olam_edit.memory.handles import LayerHandle, get_handle
from olam_edit.memory.stats import STATS_SCHEMA, SecondMoment


class CorruptCacheWarning(UserWarning):
    """A statistics cache entry (or partial checkpoint) was corrupt; it was moved aside and recomputed."""


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has been seen."""


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(*batch) if isinstance(batch, tuple | list) else model(batch)


def stats_fingerprint(model: nn.Module, layer: str, sampler: dict[str, Any], num_batches: int,
                      model_fp: str | None = None) -> str:
    """The fingerprint a statistics file of ``layer`` must carry to be reused."""
    handle = get_handle(model, layer)
    return json_fingerprint({
        "model": model_fp or model_fingerprint(model), "layer": layer, "sampler": sampler,
        "num_batches": num_batches, "dtype": str(handle.parameter.dtype), "schema": STATS_SCHEMA,
    })


def _cache_path(cache_dir: Path, layer: str, fp: str, suffix: str = "") -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    return cache_dir / f"{safe}-{fp[:16]}{suffix}.safetensors"


class _Collector:
    """Hooks on several handles that add their keys to SecondMoments and stop the forward early."""

    def __init__(self, handles: list[LayerHandle], moments: dict[str, SecondMoment]) -> None:
        self.handles, self.moments = handles, moments
        self.seen: set[str] = set()

    def _hook_for(self, h: LayerHandle) -> Callable[[torch.Tensor], None]:
        def on_keys(x: torch.Tensor) -> None:
            self.moments[h.name].add(h.keys_of(x.detach()))  # keys [N, in]
            self.seen.add(h.name)
            if len(self.seen) == len(self.handles):
                raise _StopForward

        return on_keys

    def run(self, model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any]) -> None:
        self.seen = set()
        hooks = [h.register_key_hook(self._hook_for(h)) for h in self.handles]
        try:
            with torch.no_grad():
                forward(model, batch)
        except _StopForward:
            pass
        finally:
            for hook in hooks:
                hook.remove()


def collect_stats(
    model: nn.Module,
    layers: str | Sequence[str],
    batches: Sequence[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    sampler: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    checkpoint_every: int = 25,
    progress: bool = True,
) -> dict[str, SecondMoment]:
    """Accumulate C = E[k k^T] of each layer in ``layers`` over ``batches``.

    ``batches`` is an indexable sequence of model inputs (``forward(model, batch)`` runs one; the
    default calls ``model(batch)``). ``sampler`` describes how the batches were made (seed, count,
    truncation, ...); it is required for caching, since the cache key is built from it. With
    ``cache_dir``, finished statistics are reused when their fingerprint matches, and partial sums
    are checkpointed every ``checkpoint_every`` batches. Returns ``{layer: SecondMoment}``; every
    SecondMoment's ``manifest`` holds its ``fingerprint``.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    handles = [get_handle(model, n) for n in names]
    if cache_dir is not None and sampler is None:
        raise RequestError(explain("caching statistics needs a sampler description",
                                   fix="Pass sampler={'seed': ..., 'count': ...} describing the batches."))
    mfp = model_fingerprint(model) if sampler is not None else None
    fps = {n: stats_fingerprint(model, n, sampler, len(batches), mfp) for n in names} if sampler else {}
    cache = Path(cache_dir) if cache_dir is not None else None
    rank, world = distributed.rank_and_world(handles[0].parameter.device)
    done = _load_cached(cache, fps) if cache and rank == 0 else {}
    if cache and world > 1:  # every rank must agree on what is left to collect
        done = distributed.share_from_main(done, {h.name: SecondMoment(h.key_dim, h.parameter.device) for h in handles})
    todo = [h for h in handles if h.name not in done]
    if todo:
        done.update(_run(model, todo, batches, forward or _default_forward, fps, sampler, cache,
                         checkpoint_every, progress and rank == 0))
    return {n: done[n] for n in names}


def _load_cached(cache: Path, fps: dict[str, str]) -> dict[str, SecondMoment]:
    found = {}
    for name, fp in fps.items():
        sm = _load_or_move_aside(_cache_path(cache, name, fp), fp)
        if sm is not None:
            found[name] = sm
    return found


def _load_or_move_aside(path: Path, fp: str) -> SecondMoment | None:
    """The cache entry at ``path`` (None when absent); a corrupt or foreign one is renamed to
    ``<name>.corrupt-<time>`` with a warning, and None is returned so that it is recomputed."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return SecondMoment.load(path, expect_fingerprint=fp)
    except (StatsFileError, StaleStatisticsError) as e:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9}")
        try:
            os.replace(path, aside)
        except OSError as moved:
            raise StatsFileError(explain(f"cannot move the unusable cache entry {path} aside", got=str(moved)[:160],
                                         fix=f"Delete {path} and run again.")) from e
        warnings.warn(f"statistics cache entry {path.name} is unusable ({e.what}); moved it to {aside.name} "
                      "and collecting it again", CorruptCacheWarning, stacklevel=4)
        return None


def _resume(cache: Path | None, todo: list[LayerHandle], fps: dict[str, str], rank: int, world: int,
            n_mine: int) -> tuple[dict[str, SecondMoment], int]:
    """Moments to start from and how many of this process's ``n_mine`` batches they already hold.

    A partial sum is resumed only by the same rank of a world of the same size (another world
    splits the batches differently), and only when it is intact and claims 1..n_mine batches; a
    corrupt one is moved aside (see :func:`_load_or_move_aside`) and the run starts over.
    """
    fresh = {h.name: SecondMoment(h.key_dim, device=h.parameter.device) for h in todo}
    if cache is None or not fps:
        return fresh, 0
    parts = {}
    for h in todo:
        sm = _load_or_move_aside(_cache_path(cache, h.name, fps[h.name], f".rank{rank}.partial"), fps[h.name])
        if sm is None:
            return fresh, 0
        parts[h.name] = sm
    steps = {p.manifest.get("batches_done") for p in parts.values()}
    same_world = all(p.manifest.get("world_size", 1) == world for p in parts.values())
    step = steps.pop() if len(steps) == 1 else None
    if not same_world or not isinstance(step, int) or not 0 < step <= n_mine:
        return fresh, 0
    return parts, step


def _save_partial(cache: Path, moments: dict[str, SecondMoment], fps: dict[str, str], rank: int,
                  world: int, done: int) -> None:
    for name, sm in moments.items():
        sm.save(_cache_path(cache, name, fps[name], f".rank{rank}.partial"),
                {"fingerprint": fps[name], "layer": name, "batches_done": done, "world_size": world})


def _run(model: nn.Module, todo: list[LayerHandle], batches: Sequence[Any], forward: Callable,
         fps: dict[str, str], sampler: dict[str, Any] | None, cache: Path | None, every: int,
         progress: bool) -> dict[str, SecondMoment]:
    rank, world = distributed.rank_and_world()
    mine = list(range(rank, len(batches), world))  # this rank's batches; the ranks' union is all of them
    moments, start = _resume(cache, todo, fps, rank, world, len(mine))
    collector = _Collector(todo, moments)
    bar = tqdm(total=len(mine), initial=start, disable=not progress, desc="collecting key statistics")
    for step in range(start, len(mine)):
        collector.run(model, batches[mine[step]], forward)
        bar.update(1)
        if cache is not None and fps and (step + 1) % every == 0 and step + 1 < len(mine):
            _save_partial(cache, moments, fps, rank, world, step + 1)
    bar.close()
    return _finish(moments, fps, sampler, cache, rank, world)


def _finish(moments: dict[str, SecondMoment], fps: dict[str, str], sampler: dict[str, Any] | None,
            cache: Path | None, rank: int, world: int) -> dict[str, SecondMoment]:
    for name, sm in moments.items():
        if world > 1:
            sm.all_reduce()
        sm.manifest = {"fingerprint": fps.get(name), "layer": name, "sampler": sampler,
                       "olam_edit_version": __version__}
        if cache is not None and fps:
            if rank == 0:
                sm.save(_cache_path(cache, name, fps[name]))
                for stale in cache.glob(_cache_path(cache, name, fps[name], ".rank*.partial").name):
                    stale.unlink(missing_ok=True)  # partial sums of any world size are now useless
            _cache_path(cache, name, fps[name], f".rank{rank}.partial").unlink(missing_ok=True)
    if cache is not None and fps and world > 1:
        distributed.barrier()  # no rank goes on (and reads the cache) before rank 0's files are in place
    return moments
