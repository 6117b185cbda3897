"""BaseGenerator: the shared implementation of the core's Generator protocol.

The protocol (what the core asks of a generator) is :class:`olam_edit.rules.generator.Generator`.
A BaseGenerator owns a stock ``nn.Module`` (never rewritten: keys and values come from hooks) and
knows how to draw deterministic latents for seeds, how to render latents to images in [-1, 1],
which layers are editable, and how to collect a layer's key statistics with a cache. A model
family subclasses it and implements :meth:`BaseGenerator.sample_latent` (and, where it needs to,
overrides :meth:`~BaseGenerator.render`, :meth:`~BaseGenerator.handle` or
:meth:`~BaseGenerator.sampler_settings`). ``Generator`` is kept as another name for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit import SecondMoment, collect_stats, get_handle, list_layers, preview, stats_fingerprint
from olam_edit.edit.apply import model_lock
from olam_edit.edit.core import Edit
from olam_edit.errors import RequestError, explain
from olam_edit.files.validate import summary
from olam_edit.memory.handles import LayerHandle
from olam_edit.rules.spatial.request import MAX_SEED

STATS_SEED = 1  # the reference collects C over latents drawn from seed 1


def default_cache_dir() -> Path:
    """Where statistics are cached: ``$OLAM_EDIT_CACHE`` or ``~/.cache/olam_edit``."""
    return Path(os.environ.get("OLAM_EDIT_CACHE", Path.home() / ".cache" / "olam_edit"))


def check_seeds(seeds: Sequence[Any]) -> list[int]:
    """Seeds must be integers in [0, MAX_SEED] (2**64 - 1, torch's limit; bools and floats are refused)."""
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED]
    if bad:
        raise RequestError(explain("seeds must be integers in [0, 2**64 - 1]",
                                   got=", ".join(summary(s) for s in bad[:5]),
                                   fix="Use whole numbers like 0, 1, 2."))
    return list(seeds)


class _StopAtLayer(Exception):
    """Raised by a key hook to end a forward pass once the layer's input is known."""


class BaseGenerator:
    """Implements :class:`olam_edit.rules.generator.Generator`; subclasses implement :meth:`sample_latent`.

    ``name``, ``revision``, ``license`` and ``component`` are what an edit made on this generator
    records (``component``: the model's place inside a pipeline, such as ``"vae"``; None for a
    plain generator).
    """

    def __init__(self, model: nn.Module, *, name: str, revision: str | None = None,
                 license: str | None = None, component: str | None = None) -> None:
        self.model = model.eval()
        self.name = name
        self.revision = revision
        self.license = license
        self.component = component

    # -- latents and images ----------------------------------------------------------------------
    def sample_latent(self, gen: torch.Generator) -> Tensor:
        """One latent (without batch axis) from a seeded CPU generator."""
        raise NotImplementedError

    def latents(self, seeds: Sequence[int]) -> Tensor:
        """Latents for ``seeds`` (``[len(seeds), *latent_shape]``), the same on every machine."""
        z = [self.sample_latent(torch.Generator().manual_seed(s)) for s in check_seeds(seeds)]
        return torch.stack(z).to(self.device, self.dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype latents are cast to (that of the model's first floating parameter)."""
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    def render(self, z: Tensor, edit: Edit | None = None, scale: float = 1.0) -> Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] for latents ``z``; with ``edit``, a non-mutating preview."""
        with torch.no_grad():
            return preview(self.model, edit, z, scale=scale).clamp(-1, 1)

    def images(self, seeds: Sequence[int], edit: Edit | None = None, scale: float = 1.0,
               batch_size: int = 16) -> Tensor:
        """Render seeds in batches."""
        out = [self.render(self.latents(seeds[i : i + batch_size]), edit, scale)
               for i in range(0, len(seeds), batch_size)]
        return torch.cat(out)

    # -- layers ----------------------------------------------------------------------------------
    def layers(self) -> list[str]:
        """Names of the editable layers."""
        return list_layers(self.model)

    def handle(self, layer: str) -> LayerHandle:
        """The layer's handle (a family whose handles need options of their own overrides this)."""
        return get_handle(self.model, layer)

    def keys_and_values(self, layer: str, z: Tensor) -> tuple[Tensor, Tensor]:
        """The layer's key map and value map (its linear output) for latents ``z``.

        The forward stops at the layer: nothing after it runs.
        """
        h = self.handle(layer)
        seen: list[Tensor] = []

        def grab(x: Tensor) -> None:
            seen.append(x)
            raise _StopAtLayer

        with model_lock(self.model):  # a concurrent preview swaps parameters in place
            hook = h.register_key_hook(grab)
            try:
                with torch.no_grad():
                    self.model(z)
            except _StopAtLayer:
                pass
            finally:
                hook.remove()
        with torch.no_grad():
            return seen[0], h.values_of(seen[0])

    # -- statistics ------------------------------------------------------------------------------
    def stats(self, layer: str, *, samples: int = 1000, batch_size: int = 25, seed: int = STATS_SEED,
              cache_dir: str | Path | None = None, progress: bool = True,
              stats_repo: str | None = None) -> SecondMoment:
        """C = E[k k^T] of ``layer`` over ``samples`` latents from ``seed`` (cached on disk).

        With ``stats_repo`` (a Hub repo id), the statistics published there for exactly this model,
        layer and sampler are downloaded instead of collected; statistics made for anything else are
        refused (StaleStatisticsError).

        Across processes (under ``torchrun`` inside the command line, or in a process group the
        caller initialised) rank ``r`` of ``world`` renders and runs only latent batches ``r, r + world,
        ...`` of :meth:`_stats_batches` (made on demand), the float64 sums are all-reduced and rank 0
        alone writes the cache: the same statistic, with the same fingerprint, as one process.
        """
        batches, sampler = self._stats_batches(samples, batch_size, seed)
        if stats_repo is not None:
            from olam_edit.hub.stats import pull_stats

            fp = stats_fingerprint(self.model, layer, sampler, len(batches))
            return pull_stats(stats_repo, layer, expect_fingerprint=fp)
        cache = default_cache_dir() / "stats" if cache_dir is None else Path(cache_dir)
        with model_lock(self.model):
            return collect_stats(self.model, [layer], batches, sampler=sampler, cache_dir=cache,
                                 progress=progress)[layer]

    def _stats_batches(self, samples: int, batch_size: int, seed: int) -> tuple[_LatentBatches, dict[str, Any]]:
        """The latent batches statistics are collected over, and the sampler description they are keyed by."""
        batches = _LatentBatches(self, seed * 1_000_003, samples, batch_size)
        sampler = {"generator": self.name, "seed": seed, "samples": samples, "batch_size": batch_size,
                   **self.sampler_settings()}
        return batches, sampler

    def sampler_settings(self) -> dict[str, Any]:
        """Extra settings that change the latent distribution (truncation, noise mode...)."""
        return {}


class _LatentBatches:
    """An indexable sequence of latent batches for consecutive seeds (made on demand)."""

    def __init__(self, gen: BaseGenerator, first: int, samples: int, batch_size: int) -> None:
        self.gen, self.first, self.samples, self.bs = gen, first, samples, batch_size

    def __len__(self) -> int:
        return -(-self.samples // self.bs)

    def __getitem__(self, i: int) -> Tensor:
        start = self.first + i * self.bs
        stop = min(self.first + self.samples, start + self.bs)
        return self.gen.latents(range(start, stop))


Generator = BaseGenerator  # the name this class had before the protocol moved to the core
