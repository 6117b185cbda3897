"""Generic adapter: any ``nn.Module`` that maps a Gaussian latent tensor to an image.

DCGAN-style ``ConvTranspose2d`` stacks, conv decoders (a VAE decoder maps a latent map to an
image too): every Conv2d / ConvTranspose2d / Linear inside is an editable layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from olam_edit.adapters.base import Generator
from torch import Tensor, nn

from olam_edit import preview
from olam_edit.edit.core import Edit


class TorchGenerator(Generator):
    """Wraps ``model: z -> image`` with latents ``z ~ N(0, I)`` of shape ``latent_shape``.

    ``output_range`` is the range of the model's images; they are mapped to [-1, 1].
    """

    def __init__(self, model: nn.Module, latent_shape: Sequence[int], *, name: str = "torch-generator",
                 revision: str | None = None, license: str | None = None,
                 output_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__(model, name=name, revision=revision, license=license)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.output_range = output_range

    def sample_latent(self, gen: torch.Generator) -> Tensor:
        return torch.randn(self.latent_shape, generator=gen)  # [*latent_shape]

    def render(self, z: Tensor, edit: Edit | None = None, scale: float = 1.0) -> Tensor:
        with torch.no_grad():
            img = preview(self.model, edit, z.to(self.device), scale=scale)  # [B, 3, H, W]
        lo, hi = self.output_range
        return ((img - lo) * (2.0 / (hi - lo)) - 1.0).clamp(-1, 1)


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> TorchGenerator:
    """The embedded 64x64 face DCGAN (see ``weights/face_dcgan64.md``; non-commercial research data)."""
    from olam_edit.adapters.face_dcgan.model import LATENT_SHAPE, load_face_dcgan

    model = load_face_dcgan(dtype=dtype, device=device)
    return TorchGenerator(model, LATENT_SHAPE, name="olam-edit/face-dcgan64", license="mit")
