"""The embedded 64x64 face DCGAN: architecture, weight checks and loader.

The weights ship inside the package as ``olam_edit/adapters/face_dcgan/weights/face_dcgan64.safetensors``
(float16, converted by :mod:`olam_edit.adapters.face_dcgan.convert` from the PyPI wheel
``gan-face-generate==1.1.1``; see ``weights/face_dcgan64.md``). They were trained on DigiFace-1M,
which is licensed for non-commercial research only.

Nothing is read at import time: the file is opened only by :func:`load_face_dcgan`.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from itertools import pairwise

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from olam_edit.errors import NonFiniteError, ShapeMismatchError, WeightFileError, explain

LATENT_SHAPE = (100, 1, 1)
IMAGE_SHAPE = (3, 64, 64)
WEIGHTS_FILE = "face_dcgan64.safetensors"

_NZ = LATENT_SHAPE[0]  # latent channels
_NGF = 64  # feature maps of the last hidden layer
_NC = IMAGE_SHAPE[0]  # image channels
_SKIPPED_SUFFIX = ".num_batches_tracked"  # BatchNorm counter, unused in eval mode, not stored


class FaceDCGAN(nn.Module):
    """The classic DCGAN generator (nz=100, ngf=64, nc=3) that maps z to a 64x64 RGB image.

    Layer names match the original checkpoint: ``main.0`` ... ``main.13`` in one ``nn.Sequential``.
    """

    def __init__(self) -> None:
        super().__init__()
        widths = [_NGF * 8, _NGF * 4, _NGF * 2, _NGF]  # 512, 256, 128, 64
        layers: list[nn.Module] = _up_block(_NZ, widths[0], stride=1, padding=0)  # 1 -> 4 px
        for c_in, c_out in pairwise(widths):
            layers += _up_block(c_in, c_out, stride=2, padding=1)  # doubles the size
        layers += [nn.ConvTranspose2d(_NGF, _NC, 4, 2, 1, bias=False), nn.Tanh()]  # 32 -> 64 px
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents ``z`` [B, 100, 1, 1] to images [B, 3, 64, 64] in [-1, 1]."""
        return self.main(z)  # [B, 3, 64, 64]


def _up_block(c_in: int, c_out: int, *, stride: int, padding: int) -> list[nn.Module]:
    """ConvTranspose2d (kernel 4, no bias) + BatchNorm2d + ReLU, as three Sequential entries.

    The ReLU is not in place (the original's is): same numbers, but a forward hook that keeps the
    BatchNorm output is not overwritten by the following ReLU.
    """
    return [
        nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def _build_empty(device: torch.device | str) -> FaceDCGAN:
    """Build the module without running the random init (so the global RNG is untouched).

    Parameters hold garbage until a state dict is loaded; BatchNorm counters are zeroed.
    """
    with torch.device("meta"):
        model = FaceDCGAN()
    model = model.to_empty(device=device)
    for name, buf in model.named_buffers():
        if name.endswith(_SKIPPED_SUFFIX):
            buf.zero_()
    return model


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Return ``{state-dict key: shape}`` for every tensor a weight file must hold.

    That is every parameter and BatchNorm running statistic, but not ``num_batches_tracked``.
    """
    with torch.device("meta"):
        state = FaceDCGAN().state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith(_SKIPPED_SUFFIX)}


def check_state(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``tensors`` has exactly the expected keys, shapes, float dtypes and finite values.

    Raises :class:`WeightFileError` (missing/unexpected keys, non-float dtype),
    :class:`ShapeMismatchError` or :class:`NonFiniteError`, all of them ``ValueError``.
    """
    expected = expected_shapes()
    _check_keys(set(tensors), set(expected))
    for key, shape in expected.items():
        _check_tensor(key, tensors[key], shape)


def _check_keys(got: set[str], expected: set[str]) -> None:
    """Raise :class:`WeightFileError` naming the missing and unexpected keys, if any."""
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise WeightFileError(
            explain(
                "Face DCGAN weight file has the wrong keys",
                got=f"missing={missing}, unexpected={unexpected}",
                expected=f"{len(expected)} keys main.0.weight ... main.12.weight",
                fix="Regenerate it with `python -m olam_edit.adapters.face_dcgan.convert`",
            )
        )


def _check_tensor(key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise if one entry has the wrong shape, a non-float dtype or non-finite values."""
    if tuple(tensor.shape) != shape:
        raise ShapeMismatchError(
            explain(f"Face DCGAN weight {key!r} has the wrong shape", got=tuple(tensor.shape), expected=shape)
        )
    if not tensor.is_floating_point():
        raise WeightFileError(
            explain(f"Face DCGAN weight {key!r} is not floating point", got=tensor.dtype, expected="float16")
        )
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"Face DCGAN weight {key!r} contains NaN or Inf")


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read and validate a face DCGAN safetensors file; return its tensors as stored (CPU).

    Raises :class:`WeightFileError` if the file is not valid safetensors, and the errors of
    :func:`check_state` if its content does not fit the architecture.
    """
    try:
        tensors = load_file(os.fspath(path), device="cpu")
    except SafetensorError as err:
        raise WeightFileError(
            explain(f"Cannot read face DCGAN weight file {os.fspath(path)!r}", got=str(err))
        ) from err
    check_state(tensors)
    return tensors


def load_face_dcgan_from(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> FaceDCGAN:
    """Load the face DCGAN from the safetensors file at ``path``.

    Returns the module on ``device`` with every float tensor in ``dtype``, in eval mode (BatchNorm
    uses its running statistics), with gradients enabled as for any fresh module.
    """
    if not dtype.is_floating_point:
        raise TypeError(explain("dtype must be floating point", got=dtype, expected="e.g. torch.float32"))
    tensors = read_weights(path)
    state = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    model = _build_empty(device).to(dtype=dtype)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked is absent (checked above)
    return model.eval()


def load_face_dcgan(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> FaceDCGAN:
    """Load the face DCGAN embedded in the package (see :func:`load_face_dcgan_from`)."""
    ref = importlib.resources.files("olam_edit.adapters.face_dcgan") / "weights" / WEIGHTS_FILE
    with importlib.resources.as_file(ref) as path:
        return load_face_dcgan_from(path, dtype=dtype, device=device)
