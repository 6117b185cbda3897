"""The modulated convolution (the editable layer), the styled conv around it and the to-RGB layer."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from olam_edit.adapters.stylegan2.config import EPS
from olam_edit.adapters.stylegan2.ops import EqualLinear, blur_kernel, fir_filter, fused_lrelu

if TYPE_CHECKING:
    from olam_edit.memory.handles import LayerHandle


class ModulatedConv(nn.Module):
    """Modulated (and optionally demodulated) convolution, split into readable steps.

    ``weight`` [O, I, k, k] is stored in checkpoint units; the effective weight is ``scale * weight``
    with ``scale = 1 / sqrt(I k k)``. ``up=True`` runs a stride-2 transposed convolution followed by
    the gain-4 FIR blur, so values are at twice the key resolution. See the module docstring for
    the hook API (``style``, ``modulated_input``, ``demodulation``, ``conv_value``, taps).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, *,
                 up: bool = False, demodulate: bool = True, flavor: str = "rosinality") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.up, self.demodulate, self.flavor = up, demodulate, flavor
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.register_buffer("blur", blur_kernel(4.0), persistent=False)
        self.style_tap = nn.Identity()
        self.key_tap = nn.Identity()
        self.value_tap = nn.Identity()

    def style(self, w: torch.Tensor) -> torch.Tensor:
        """Per-input-channel style: [B, style_dim] -> [B, I]."""
        return self.affine(w)

    def effective_weight(self) -> torch.Tensor:
        """``scale * weight``: [O, I, k, k], the weight the convolution really applies."""
        return self.weight * self.scale

    def modulated_input(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The keys: ``s (.) x``, [B, I, H, W] x [B, I] -> [B, I, H, W]."""
        return x * s.to(x.dtype)[:, :, None, None]

    def demodulation(self, weight_eff: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
        """Per-sample, per-output-channel factor ``1 / ||w_eff[o] (.) s||`` [B, O]; None if off.

        The epsilon follows ``flavor``: 1e-8 on the effective weight (rosinality) or on the stored
        weight (NVlabs, equal to ``1e-8 * scale**2`` here).
        """
        if not self.demodulate:
            return None
        eps = EPS if self.flavor == "rosinality" else EPS * self.scale**2
        tap_energy = weight_eff.square().sum(dim=(2, 3))  # [O, I]: sum_yx w_eff[o, i, y, x]^2
        return torch.rsqrt(s.square() @ tap_energy.T.to(s.dtype) + eps)  # [B, O]

    def conv_value(self, x_mod: torch.Tensor, weight_eff: torch.Tensor,
                   demod: torch.Tensor | None = None) -> torch.Tensor:
        """The values: convolve the keys with ``weight_eff`` (blur included when ``up``), times ``demod``.

        [B, I, H, W] -> [B, O, H', W'], H' = 2H if ``up`` else H. Linear in ``weight_eff`` when
        ``demod`` is None, which makes it the layer's linear operation for solvers.
        """
        weight_eff = weight_eff.to(x_mod.dtype)
        if self.up:
            out = F.conv_transpose2d(x_mod, weight_eff.transpose(0, 1), stride=2)  # [B, O, 2H+k-2, .]
            out = fir_filter(out, self.blur, self._blur_pad())  # [B, O, 2H, 2W]
        else:
            out = F.conv2d(x_mod, weight_eff, padding=self.kernel_size // 2)  # [B, O, H, W]
        if demod is not None:
            out = out * demod.to(out.dtype)[:, :, None, None]
        return out

    def _blur_pad(self) -> tuple[int, int]:
        """Padding that brings the transposed-conv output back to exactly twice the input size."""
        total = self.blur.shape[0] - self.kernel_size + 1
        return (total + 1) // 2, total // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Modulated conv of features x [B, I, H, W] under latent w [B, D] -> values [B, O, H', W']."""
        s = self.style_tap(self.style(w))  # [B, I]
        keys = self.key_tap(self.modulated_input(x, s))  # [B, I, H, W]
        weight_eff = self.effective_weight()  # [O, I, k, k]
        values = self.conv_value(keys, weight_eff, self.demodulation(weight_eff, s))
        return self.value_tap(values)  # [B, O, H', W']

    def olam_handle(self, name: str) -> LayerHandle:
        """The olam-edit handle of this layer: keys s (.) x, demodulated values (see ``stylegan2.handle``)."""
        from olam_edit.adapters.stylegan2.handle import ModConvHandle

        return ModConvHandle(name, self)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, up={self.up}, "
                f"demodulate={self.demodulate}")


class StyledConv(nn.Module):
    """One synthesis layer: modulated conv, then noise, bias and fused leaky ReLU (optional clamp).

    ``noise_strength`` [] scales the noise; ``noise_const`` [1, 1, R, R] is the stored noise used
    by ``noise_mode="const"``.
    """

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, resolution: int, *,
                 up: bool = False, conv_clamp: float | None = None, flavor: str = "rosinality") -> None:
        super().__init__()
        self.resolution = resolution
        self.conv_clamp = conv_clamp
        self.conv = ModulatedConv(in_channels, out_channels, 3, style_dim, up=up, flavor=flavor)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """[B, I, R', R'] features, [B, D] latent, noise [B or 1, 1, R, R] or None -> [B, O, R, R]."""
        out = self.conv(x, w)  # [B, O, R, R]
        if noise is not None:
            out = out + self.noise_strength.to(out.dtype) * noise.to(out.dtype)
        return fused_lrelu(out, self.bias.to(out.dtype), self.conv_clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, plus bias [img_channels] (optional clamp)."""

    def __init__(self, in_channels: int, style_dim: int, img_channels: int = 3, *,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.conv = ModulatedConv(in_channels, img_channels, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[B, C, R, R] features, [B, D] latent -> [B, img_channels, R, R]."""
        out = self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]
        return out if self.conv_clamp is None else out.clamp(-self.conv_clamp, self.conv_clamp)
