"""Generic adapter: any ``nn.Module`` that maps a Gaussian latent tensor to an image.

DCGAN-style ``ConvTranspose2d`` stacks, conv decoders (a VAE decoder maps a latent map to an
image too): every Conv2d / ConvTranspose2d / Linear inside is an editable layer. A model family
whose model is such a module loads into a :class:`TorchGenerator` (the face DCGAN does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from olam_edit import preview
from olam_edit.adapters.base import BaseGenerator
from olam_edit.edit.core import Edit


class TorchGenerator(BaseGenerator):
    """Wraps ``model: z -> image`` with latents ``z ~ N(0, I)`` of shape ``latent_shape``.

    ``output_range`` is the range of the model's images; they are mapped to [-1, 1]. ``component``
    names the model's place inside a pipeline (``"vae"``), None for a plain generator.
    """

    def __init__(self, model: nn.Module, latent_shape: Sequence[int], *, name: str = "torch-generator",
                 revision: str | None = None, license: str | None = None, component: str | None = None,
                 output_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__(model, name=name, revision=revision, license=license, component=component)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.output_range = output_range

    def sample_latent(self, gen: torch.Generator) -> Tensor:
        return torch.randn(self.latent_shape, generator=gen)  # [*latent_shape]

    def render(self, z: Tensor, edit: Edit | None = None, scale: float = 1.0) -> Tensor:
        with torch.no_grad():
            img = preview(self.model, edit, z.to(self.device), scale=scale)  # [B, 3, H, W]
        lo, hi = self.output_range
        return ((img - lo) * (2.0 / (hi - lo)) - 1.0).clamp(-1, 1)
