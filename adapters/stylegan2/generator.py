"""StyleGAN2 behind the Generator protocol: seeded latents, truncation and noise settings."""

from __future__ import annotations

import math
import os
import re
from typing import Any

import torch

from olam_edit.adapters.base import BaseGenerator
from olam_edit.adapters.stylegan2.config import NOISE_MODES
from olam_edit.adapters.stylegan2.files import load_stylegan2
from olam_edit.adapters.stylegan2.handle import ModConvHandle
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.errors import RequestError, explain
from olam_edit.memory.handles import LayerHandle

DEFAULT_TRUNCATION = 0.5  # the paper's notebooks and UI


class StyleGAN2Adapter(BaseGenerator):
    """A :class:`StyleGAN2Generator` as a deterministic sampler ``z [z_dim] -> image [3, S, S]``.

    ``truncation`` (default 0.5 as in the paper's UI), ``truncation_cutoff`` and ``noise_mode``
    (default "const", the stored noise, so a seed always gives the same image) are written to the
    model's attributes, which ``model(z)`` uses; they are part of :meth:`sampler_settings`, so
    statistics cached under other settings are not reused. Editable layers are the modulated convs
    ``layers.layerN.conv`` (and ``to_rgbs.rgbR.conv``); :meth:`layer_name` maps ``"layer8"`` to one.
    The handles it gives out are pinned (see :meth:`handle`), so every key map it captures stays
    findable by its style while statistics passes run.
    """

    def __init__(self, model: StyleGAN2Generator, *, name: str, truncation: float = DEFAULT_TRUNCATION,
                 truncation_cutoff: int | None = None, noise_mode: str = "const", revision: str | None = None,
                 license: str | None = None) -> None:
        super().__init__(model, name=name, revision=revision, license=license)
        self.truncation, self.truncation_cutoff, self.noise_mode = truncation, truncation_cutoff, noise_mode

    @property
    def truncation(self) -> float:
        return self.model.truncation

    @truncation.setter
    def truncation(self, psi: float) -> None:
        if not isinstance(psi, int | float) or isinstance(psi, bool) or not math.isfinite(psi):
            raise RequestError(explain("truncation must be a finite number", got=repr(psi), expected="e.g. 0.5"))
        self.model.truncation = float(psi)

    @property
    def truncation_cutoff(self) -> int | None:
        return self.model.truncation_cutoff

    @truncation_cutoff.setter
    def truncation_cutoff(self, cutoff: int | None) -> None:
        self.model.truncation_cutoff = None if cutoff is None else int(cutoff)

    @property
    def noise_mode(self) -> str:
        return self.model.noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise RequestError(explain("unknown noise mode", got=repr(mode), expected=NOISE_MODES,
                                       fix='Use "const" for reproducible samples.'))
        self.model.noise_mode = mode

    def sample_latent(self, gen: torch.Generator) -> torch.Tensor:
        """z ~ N(0, I) of shape ``[z_dim]`` from a seeded CPU generator."""
        return torch.randn(self.model.config.z_dim, generator=gen)  # [z_dim]

    def sampler_settings(self) -> dict[str, Any]:
        """Truncation, its cutoff and the noise mode: they change the keys' distribution."""
        return {"truncation": self.truncation, "truncation_cutoff": self.truncation_cutoff,
                "noise_mode": self.noise_mode}

    def handle(self, layer: str) -> LayerHandle:
        """The layer's handle; a modulated conv's is pinned: the style of every key map its hooks deliver
        (``keys_and_values``, the Rewriter's captures) is kept among the 256 pinned ones, so the values
        of those keys can be computed later (see :mod:`olam_edit.adapters.stylegan2.handle`)."""
        h = super().handle(layer)
        return h.pinned() if isinstance(h, ModConvHandle) else h

    @staticmethod
    def layer_name(layer: str) -> str:
        """Module path of a paper layer name: ``"layer8"`` -> ``"layers.layer8.conv"`` (others unchanged)."""
        return f"layers.{layer}.conv" if re.fullmatch(r"layer\d+", layer) else layer


def load_generator_from_path(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                             truncation: float = DEFAULT_TRUNCATION, truncation_cutoff: int | None = None,
                             noise_mode: str = "const", name: str | None = None, revision: str | None = None,
                             license: str | None = None) -> StyleGAN2Adapter:
    """Load any supported StyleGAN2 checkpoint (file or folder) as a :class:`StyleGAN2Adapter`.

    ``name`` defaults to ``str(path)`` (pass the Hub repo id for a snapshot folder).
    """
    model = load_stylegan2(path).to(device)
    return StyleGAN2Adapter(model, name=str(path) if name is None else name, truncation=truncation,
                            truncation_cutoff=truncation_cutoff, noise_mode=noise_mode, revision=revision,
                            license=license)
