"""The Generator protocol: exactly what the core asks of a model family.

The Rewriter, the evaluation and the command line talk to a generator through these members only.
``olam_edit.adapters.BaseGenerator`` implements all of them for any ``nn.Module`` that maps a
latent tensor to an image; a model family (see ``olam_edit.adapters.registry``) usually subclasses
it, but any object with these members works (the check is structural). ``render``,
``sampler_settings``, ``device`` and ``dtype`` are BaseGenerator's own helpers: the core never
calls them, so they are not part of the contract.

Contracts every implementation keeps:

* ``model`` is the stock ``nn.Module``: the core edits its weights in place (apply / revert /
  preview) and fingerprints them; keys and values are read with hooks, never by changing it.
* ``latents(seeds)`` is deterministic: the same seeds give the same latents on every machine, so a
  request (seeds + masks) means the same images everywhere.
* ``keys_and_values(layer, z)`` returns the layer's key map and value map for latents ``z``, the key
  map in the form ``handle(layer).keys_of`` / ``values_of`` accept.
* ``images(seeds, edit, scale)`` returns ``[B, 3, H, W]`` in [-1, 1]; with ``edit`` it is a
  non-mutating preview (the model's weights are the same afterwards).
* ``stats(layer, ...)`` returns the key statistic C = E[k k^T] of ``layer`` (float64), keyed by a
  fingerprint of the weights, the layer and the sampler, so a stale statistic is never reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from olam_edit.edit.core import Edit
from olam_edit.errors import RequestError, explain
from olam_edit.memory.handles import LayerHandle
from olam_edit.memory.stats import SecondMoment


@runtime_checkable
class Generator(Protocol):
    """A generator as the core sees it (see the module docstring for the contracts)."""

    @property
    def model(self) -> nn.Module:
        """The stock model (``z -> image``) whose layers are edited."""
        ...

    @property
    def name(self) -> str:
        """The model's name (a Hub id, a path or a fixed name): recorded as an edit's ``base_model``
        and compared with a request's ``model``."""
        ...

    @property
    def revision(self) -> str | None:
        """The Hub revision the weights came from (None: unknown or not from the Hub)."""
        ...

    @property
    def license(self) -> str | None:
        """The model's licence id (e.g. ``"mit"``), copied into an edit's manifest and model card."""
        ...

    @property
    def component(self) -> str | None:
        """Where ``model`` sits inside a pipeline (``"vae"``, ``"unet"``); None for a plain generator.

        An edit records it, so applying the edit to the whole pipeline edits that part.
        """
        ...

    def layers(self) -> list[str]:
        """Names of the editable layers (module paths inside ``model``)."""
        ...

    def handle(self, layer: str) -> LayerHandle:
        """The :class:`LayerHandle` of ``layer``; LayerNotFoundError / UnsupportedLayerError otherwise."""
        ...

    def latents(self, seeds: Sequence[int]) -> Tensor:
        """Latents ``[len(seeds), *latent_shape]`` for ``seeds``, on the model's device and dtype."""
        ...

    def keys_and_values(self, layer: str, z: Tensor) -> tuple[Tensor, Tensor]:
        """The key map and value map of ``layer`` for latents ``z`` (e.g. ``[B, in, h, w]``, ``[B, out, h', w']``)."""
        ...

    def images(self, seeds: Sequence[int], edit: Edit | None = None, scale: float = 1.0,
               batch_size: int = 16) -> Tensor:
        """Images ``[len(seeds), 3, H, W]`` in [-1, 1]; with ``edit`` (at ``scale``) a non-mutating preview."""
        ...

    def stats(self, layer: str, *, samples: int = 1000, batch_size: int = 25, seed: int = 1,
              cache_dir: str | Path | None = None, progress: bool = True,
              stats_repo: str | None = None) -> SecondMoment:
        """C = E[k k^T] of ``layer`` over ``samples`` latents drawn from ``seed`` (cached; or pulled
        from ``stats_repo`` on the Hub, fingerprint-checked)."""
        ...


MEMBERS = ("model", "name", "revision", "license", "component", "layers", "handle", "latents",
           "keys_and_values", "images", "stats")  # the protocol's members, for error messages


def check_generator(obj: object) -> Generator:
    """``obj`` if it has every member of :class:`Generator`, else RequestError naming the missing ones."""
    if isinstance(obj, Generator):
        return obj
    missing = [m for m in MEMBERS if not hasattr(obj, m)]
    raise RequestError(explain(f"a {type(obj).__name__} is not a generator", got=f"missing {missing}",
                               expected="an object with the members of olam_edit.rules.generator.Generator",
                               fix="Load one with olam_edit.adapters.load_generator(...), or wrap a model in "
                                   "olam_edit.adapters.TorchGenerator(model, latent_shape)."))


__all__ = ["MEMBERS", "Generator", "check_generator"]
