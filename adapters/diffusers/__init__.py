"""Diffusers pipelines: closed-form text rules on cross-attention, spatial rules on the VAE decoder.

Importing this package needs the ``[diffusers]`` extra only when a pipeline is actually used: the
modules import diffusers lazily.
"""

from olam_edit.adapters.diffusers.text import text_edit
from olam_edit.adapters.diffusers.vae import vae_generator

__all__ = ["text_edit", "vae_generator"]
