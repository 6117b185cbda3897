"""Model-family adapters, installed as ``olam_edit.adapters`` (one folder per family).

:func:`load_generator` turns a spec into a Generator: ``"default"`` (the embedded face DCGAN), a
local path, or a Hub repo id, through the family registry (:mod:`olam_edit.adapters.registry`:
``register(name, sniff, load)`` adds a family). :class:`BaseGenerator` implements the core's
Generator protocol (:class:`olam_edit.rules.generator.Generator`) for any ``nn.Module``;
``Generator`` is another name for it. Importing this package imports no family.
"""

from __future__ import annotations

import torch

from olam_edit.adapters.base import BaseGenerator, Generator
from olam_edit.adapters.registry import load_generator, register, registered, unregister
from olam_edit.adapters.torch_generator import TorchGenerator

__all__ = ["BaseGenerator", "Generator", "TorchGenerator", "load_default", "load_generator", "register",
           "registered", "unregister"]


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> TorchGenerator:
    """The embedded 64x64 face DCGAN (see ``face_dcgan/weights/face_dcgan64.md``; non-commercial research data)."""
    from olam_edit.adapters.face_dcgan.family import load_default as load

    return load(dtype=dtype, device=device)
