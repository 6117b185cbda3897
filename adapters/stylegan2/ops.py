"""The generator's elementwise and filtering ops in plain PyTorch (no compiled kernels)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from olam_edit.adapters.stylegan2.config import BLUR_TAPS, LRELU_GAIN, LRELU_SLOPE

if TYPE_CHECKING:
    pass


def fused_lrelu(x: torch.Tensor, bias: torch.Tensor | None, clamp: float | None = None) -> torch.Tensor:
    """``leaky_relu(x + bias, 0.2) * sqrt(2)``, then an optional symmetric clamp; bias over dim 1."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    return x if clamp is None else x.clamp(-clamp, clamp)


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The separable [1, 3, 3, 1] low-pass filter as a normalised 2-D kernel times ``gain``."""
    taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
    kernel = torch.outer(taps, taps)  # [4, 4]
    return kernel / kernel.sum() * gain


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Zero-pad every side by ``pad = (before, after)`` and convolve each channel with ``kernel``."""
    channels = x.shape[1]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))  # [B, C, H + p, W + p]
    weight = kernel.flip(0, 1).to(x.dtype).expand(channels, 1, *kernel.shape)  # [C, 1, kh, kw]
    return F.conv2d(x, weight, groups=channels)


def upsample_2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """FIR up-sampling by 2 (zero insertion, then the gain-4 blur): [B, C, H, W] -> [B, C, 2H, 2W]."""
    batch, channels, height, width = x.shape
    up = x.new_zeros(batch, channels, 2 * height, 2 * width)  # [B, C, 2H, 2W]
    up[:, :, ::2, ::2] = x
    taps = kernel.shape[0]
    return fir_filter(up, kernel, (taps // 2, taps - 1 - taps // 2))


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: ``y = x (scale W)^T + lr_mul * b``.

    ``weight`` [out, in] and ``bias`` [out] are stored as in the checkpoints;
    ``scale = lr_mul / sqrt(in)``. With ``activation`` the fused leaky ReLU follows.
    """

    def __init__(self, in_dim: int, out_dim: int, *, lr_mul: float = 1.0, bias_init: float = 0.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in] -> [B, out]."""
        bias = self.bias * self.lr_mul if self.lr_mul != 1 else self.bias
        if self.activation:
            return fused_lrelu(F.linear(x, self.weight * self.scale), bias)  # [B, out]
        return F.linear(x, self.weight * self.scale, bias)  # [B, out]
