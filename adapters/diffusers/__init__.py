"""Diffusers pipelines: closed-form text rules (edit, erase, replace) on the layers that read the prompt
(UNet cross-attention, DiT caption / context projections), spatial rules on the VAE decoder.

Importing this package needs the ``[diffusers]`` extra only when a pipeline is actually used: the
modules import diffusers lazily.
"""

from olam_edit.adapters.diffusers.erase import text_erase, text_replace
from olam_edit.adapters.diffusers.text import text_edit
from olam_edit.adapters.diffusers.vae import vae_generator

__all__ = ["text_edit", "text_erase", "text_replace", "vae_generator"]
