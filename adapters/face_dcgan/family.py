"""The face DCGAN as a family of the adapter registry: its weight file, recognised by its header, loads
as a :class:`~olam_edit.adapters.TorchGenerator`; :func:`load_default` loads the copy shipped inside
the package (what ``load_generator("default")`` returns)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from olam_edit.adapters.face_dcgan.model import LATENT_SHAPE, expected_shapes, load_face_dcgan, load_face_dcgan_from
from olam_edit.adapters.torch_generator import TorchGenerator
from olam_edit.errors import WeightFileError, explain

DEFAULT_NAME = "olam-edit/face-dcgan64"  # the shipped model's name in edits and requests
DEFAULT_LICENSE = "other"  # weights MIT, training data DigiFace-1M (non-commercial research only): not a Hub id


def is_face_dcgan_file(path: Path) -> bool:
    """Whether ``path`` is a ``.safetensors`` file with exactly the face DCGAN's names and shapes.

    Reads the file's header only (the tensor table), never the weights.
    """
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError, ValueError):
        return False
    return shapes == expected_shapes()


def sniff(path: Path) -> bool:
    """A face DCGAN weight file (the registry finds it inside a folder such as a Hub snapshot)."""
    return is_face_dcgan_file(Path(path))


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         name: str | None = None, revision: str | None = None, license: str | None = None) -> TorchGenerator:
    """The face DCGAN in the weight file ``path``; ``name`` defaults to the path (the registry passes
    the Hub repo id for a snapshot)."""
    path = Path(path)
    if path.is_dir():
        raise WeightFileError(explain(f"{path} is a folder", expected="a face DCGAN .safetensors file",
                                      fix="Name the weight file to load."))
    model = load_face_dcgan_from(path, dtype=dtype, device=device)
    return TorchGenerator(model, LATENT_SHAPE, name=str(path) if name is None else name, revision=revision,
                          license=license)


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> TorchGenerator:
    """The embedded 64x64 face DCGAN (see ``weights/face_dcgan64.md``; non-commercial research data)."""
    model = load_face_dcgan(dtype=dtype, device=device)
    return TorchGenerator(model, LATENT_SHAPE, name=DEFAULT_NAME, license=DEFAULT_LICENSE)
