"""Weight layouts: how a factored update (lam, D) maps onto a layer's effective weight.

Three layouts cover every handle. D is always ``[r, in]`` (orthonormal rows, input channels);
lam's shape depends on the layout:

- ``linear``            W [out, in]             lam [out, r]          dW = lam @ D
- ``conv2d``            W [out, in, kh, kw]     lam [out, r, kh, kw]  dW[o,i,y,x] = sum_r lam[o,r,y,x] D[r,i]
- ``conv_transpose2d``  W [in, out, kh, kw]     lam [r, out, kh, kw]  dW[i,o,y,x] = sum_r D[r,i] lam[r,o,y,x]

The solver works on per-output-channel *coefficients* ``[out, J]`` with J = r * taps, ordered
r-major, tap-minor; :func:`lam_from_coefs` and :func:`coefs_from_lam` convert.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LINEAR = "linear"
CONV2D = "conv2d"
CONV_TRANSPOSE2D = "conv_transpose2d"
LAYOUTS = (LINEAR, CONV2D, CONV_TRANSPOSE2D)


def key_dim(layout: str, w_shape: torch.Size) -> int:
    return int(w_shape[0] if layout == CONV_TRANSPOSE2D else w_shape[1])


def out_dim(layout: str, w_shape: torch.Size) -> int:
    return int(w_shape[1] if layout == CONV_TRANSPOSE2D else w_shape[0])


def taps(layout: str, w_shape: torch.Size) -> int:
    return 1 if layout == LINEAR else math.prod(w_shape[2:])


def lam_shape(layout: str, w_shape: torch.Size, r: int) -> tuple[int, ...]:
    """Shape of lam for a weight of shape ``w_shape`` and rank ``r``."""
    if layout == LINEAR:
        return (int(w_shape[0]), r)
    if layout == CONV2D:
        return (int(w_shape[0]), r, *map(int, w_shape[2:]))
    return (r, int(w_shape[1]), *map(int, w_shape[2:]))


def dense(layout: str, lam: Tensor, D: Tensor) -> Tensor:
    """dW from its factors (see the module docstring)."""
    if layout == LINEAR:
        return lam @ D  # [out, in]
    if layout == CONV2D:
        return torch.einsum("oryx,ri->oiyx", lam, D)  # [out, in, kh, kw]
    return torch.einsum("ri,royx->ioyx", D, lam)  # [in, out, kh, kw]


def lam_of(layout: str, dW: Tensor, D: Tensor) -> Tensor:
    """lam such that dense(lam, D) = dW projected on span(D) along the input axis."""
    if layout == LINEAR:
        return dW @ D.T  # [out, r]
    if layout == CONV2D:
        return torch.einsum("oiyx,ri->oryx", dW, D)  # [out, r, kh, kw]
    return torch.einsum("ioyx,ri->royx", dW, D)  # [r, out, kh, kw]


def lam_from_coefs(layout: str, coefs: Tensor, r: int, kernel: tuple[int, ...]) -> Tensor:
    """Per-output-channel coefficients ``[out, r*taps]`` -> lam in the layout's shape."""
    n_out = coefs.shape[0]
    if layout == LINEAR:
        return coefs.reshape(n_out, r)
    lam = coefs.reshape(n_out, r, *kernel)  # [out, r, kh, kw]
    return lam if layout == CONV2D else lam.transpose(0, 1)


def coefs_from_lam(layout: str, lam: Tensor) -> Tensor:
    """Inverse of :func:`lam_from_coefs`: lam -> ``[out, r*taps]``."""
    if layout == CONV_TRANSPOSE2D:
        lam = lam.transpose(0, 1)
    return lam.reshape(lam.shape[0], -1)


def flatten_keys(layout: str, x: Tensor) -> Tensor:
    """One key per position: ``[N, in]`` (channel axis 1 for conv maps, last axis for linear)."""
    if layout == LINEAR:
        return x.reshape(-1, x.shape[-1])
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def project_input(layout: str, x: Tensor, D: Tensor) -> Tensor:
    """Replace every key k of the map x by D k (channel axis keeps its place)."""
    if layout == LINEAR:
        return x @ D.T  # [..., r]
    return torch.einsum("ri,bi...->br...", D, x)  # [B, r, H, W]
