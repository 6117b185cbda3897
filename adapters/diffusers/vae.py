"""Spatial rules on a diffusers latent-to-image decoder (``AutoencoderKL``) through the generic adapter.

:class:`VAEDecode` wraps a VAE's ``post_quant_conv`` and ``decoder`` as one ``z -> image`` module
whose layer names are the VAE's own (``decoder.up_blocks.0.resnets.0.conv1``...), so an edit made on
it applies to ``pipe.vae`` (or the VAE) directly, and exports as a LoRA on the VAE. Latents are
diffusion latents, ``z ~ N(0, I)``, decoded as the pipelines do: ``decoder(z / scaling_factor + shift)``.
:func:`vae_generator` turns it into a :class:`~olam_edit.adapters.TorchGenerator`, on which the
:class:`~olam_edit.rules.spatial.rewriter.Rewriter` runs unchanged. Nothing here imports diffusers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from olam_edit.adapters.torch_generator import TorchGenerator
from olam_edit.errors import UnsupportedModelError, explain

COMPONENT = "vae"


class VAEDecode(nn.Module):
    """``z -> image`` in [-1, 1] through a VAE's decoder; shares (does not copy) the VAE's modules."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(vae, "decoder", None), nn.Module):
            raise UnsupportedModelError(explain(f"{type(vae).__name__} has no .decoder to rewrite",
                                                expected="an AutoencoderKL (or a pipeline with .vae)"))
        self.post_quant_conv = getattr(vae, "post_quant_conv", None)
        self.decoder = vae.decoder
        config = getattr(vae, "config", None)
        self.scaling_factor = float(_cfg(config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(_cfg(config, "shift_factor", 0.0) or 0.0)

    def forward(self, z: Tensor) -> Tensor:
        z = z / self.scaling_factor + self.shift_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)  # [B, 3, H, W]


def vae_of(model: Any) -> nn.Module:
    """``pipe.vae``, or ``model`` itself when it has a ``.decoder``."""
    vae = getattr(model, "vae", None)
    if isinstance(vae, nn.Module):
        return vae
    if isinstance(model, nn.Module) and isinstance(getattr(model, "decoder", None), nn.Module):
        return model
    raise UnsupportedModelError(explain(f"no latent-to-image decoder in this {type(model).__name__}",
                                        expected="an AutoencoderKL or a pipeline with .vae"))


def vae_generator(model: Any, latent_size: int | tuple[int, int] | None = None, *, name: str | None = None,
                  revision: str | None = None, license: str | None = None) -> TorchGenerator:
    """A Generator over the decoder of ``model`` (an AutoencoderKL or a pipeline with ``.vae``).

    ``latent_size`` is the latent map's height and width (default: the VAE's sample size over its
    down-sampling factor, e.g. 64 for Stable Diffusion's 512-pixel images).
    """
    vae = vae_of(model)
    decode = VAEDecode(vae)
    channels = int(_cfg(vae.config, "latent_channels", 4)) if hasattr(vae, "config") else _in_channels(decode)
    hw = latent_size or _default_latent_size(vae)
    h, w = (hw, hw) if isinstance(hw, int) else hw
    return TorchGenerator(decode, (channels, h, w), name=name or _name(model) or "diffusers-vae", revision=revision,
                          license=license, component=COMPONENT)  # an edit's target inside a pipeline: pipe.vae


def _cfg(config: Any, key: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _in_channels(decode: VAEDecode) -> int:
    first = decode.post_quant_conv if decode.post_quant_conv is not None else decode.decoder.conv_in
    return int(first.in_channels)


def _default_latent_size(vae: nn.Module) -> int:
    config = getattr(vae, "config", None)
    size = _cfg(config, "sample_size", 64)
    size = size[0] if isinstance(size, list | tuple) else size
    factor = 2 ** (len(_cfg(config, "block_out_channels", (0,))) - 1)
    return max(1, int(size) // factor)


def _name(model: Any) -> str | None:
    for obj in (model, getattr(model, "vae", None)):
        name = _cfg(getattr(obj, "config", None), "_name_or_path", None)
        if name:
            return str(name)
    return None
