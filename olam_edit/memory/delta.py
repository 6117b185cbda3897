"""Delta: one layer's update in factored form, dW = dense(lam, D), in effective weight units."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from olam_edit.errors import ShapeMismatchError, explain
from olam_edit.memory import layout as L


@dataclass
class Delta:
    """A factored update of one layer.

    ``lam`` has the layout's shape (see :mod:`olam_edit.memory.layout`), ``directions`` is D ``[r, in]``
    with orthonormal rows. ``scale`` multiplies the whole update (0 gives the base weight exactly).
    """

    lam: Tensor
    directions: Tensor
    layout: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.layout not in L.LAYOUTS:
            raise ShapeMismatchError(explain("unknown delta layout", got=self.layout, expected=L.LAYOUTS))
        if self.directions.ndim != 2:
            raise ShapeMismatchError(
                explain("directions must be a matrix [r, in]", got=tuple(self.directions.shape))
            )
        r_axis = 0 if self.layout == L.CONV_TRANSPOSE2D else 1
        want_ndim = 2 if self.layout == L.LINEAR else 4
        if self.lam.ndim != want_ndim or self.lam.shape[r_axis] != self.rank:
            raise ShapeMismatchError(
                explain(
                    f"lambda does not fit a {self.layout} delta of rank {self.rank}",
                    got=tuple(self.lam.shape),
                    expected=f"{want_ndim} dims with rank on axis {r_axis}",
                )
            )

    @property
    def rank(self) -> int:
        return int(self.directions.shape[0])

    @property
    def key_dim(self) -> int:
        return int(self.directions.shape[1])

    def dense(self, dtype: torch.dtype | None = None) -> Tensor:
        """The full dW (times ``scale``), in ``dtype`` (default: lam's dtype)."""
        dtype = dtype or self.lam.dtype
        dW = L.dense(self.layout, self.lam.to(dtype), self.directions.to(dtype))
        return dW * self.scale if self.scale != 1.0 else dW

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the effective weight this delta applies to."""
        s = tuple(self.lam.shape)
        if self.layout == L.LINEAR:
            return (s[0], self.key_dim)
        if self.layout == L.CONV2D:
            return (s[0], self.key_dim, *s[2:])
        return (self.key_dim, s[1], *s[2:])

    def scaled(self, scale: float) -> Delta:
        return Delta(self.lam, self.directions, self.layout, self.scale * scale)

    def to(self, *args, **kwargs) -> Delta:
        return Delta(self.lam.to(*args, **kwargs), self.directions.to(*args, **kwargs), self.layout, self.scale)

    def relative_norm(self, w: Tensor) -> float:
        """||dW|| / ||W|| (Frobenius) against the base effective weight ``w``."""
        dW = self.dense(torch.float64)
        return float(dW.norm() / w.to(torch.float64).norm().clamp_min(1e-300))
