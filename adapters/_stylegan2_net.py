"""A StyleGAN2 generator in plain PyTorch (CPU-capable, no compiled extensions).

One network reproduces both public PyTorch ports of StyleGAN2 (config E/F, "skip" generator) for the
same weights, latents and noise: rosinality/stylegan2-pytorch and NVlabs/stylegan2-ada-pytorch
(also the StyleGAN2 networks of NVlabs/stylegan3). The two differ only in rounding and in where the
demodulation epsilon sits; :attr:`StyleGAN2Config.flavor` selects the latter. Loaders live in
``olam_edit.adapters.stylegan2``.

Module tree and state-dict names (``L = 2 log2(size) - 2``, the number of per-layer latents)::

    mapping.fc{i}.weight [D, D_in] / .bias [D]     n_mlp equalised-lr linears (lr_mul 0.01), lrelu
    mapping.w_avg [D]                              average latent used by truncation
    const [C4, 4, 4]                               learned input
    layers.layer{N}                                N = 2 .. L, paper numbering (``layer8`` ...);
                                                   conv.up is True (value grid 2x key grid) for odd N
        .conv.weight [O, I, 3, 3]                  stored units; effective = conv.scale * weight
        .conv.affine.weight [I, D] / .bias [I]     style s = affine(w)
        .noise_strength []  .noise_const [1, 1, R, R]  .bias [O]
    to_rgbs.rgb{R}.conv.* (1x1, no demodulation)  .bias [3]     R = 4, 8, ..., size

``layerN`` reads ``ws[:, N - 2]``; odd N >= 3 up-sample (stride-2 transposed conv, then a
[1, 3, 3, 1] FIR blur); ``rgbR`` reads ``ws[:, 2 * log2(R) - 3]``. ``noise[i]`` feeds ``layer{i + 2}``.

The editing API of one modulated convolution (:class:`ModulatedConv`, for ``layerN`` it is
``generator.layers[f"layer{N}"].conv``, see :meth:`StyleGAN2Generator.editable_layers`)::

    s      = conv.style(w)                       # [B, I]   style of latent w [B, D]
    w_eff  = conv.effective_weight()             # [O, I, k, k] = conv.scale * conv.weight
    keys   = conv.modulated_input(x, s)          # [B, I, H, W] = s (.) x, one key per pixel
    demod  = conv.demodulation(w_eff, s)         # [B, O] or None (toRGB)
    values = conv.conv_value(keys, w_eff, demod) # [B, O, H', W'] H' = 2H on up layers (blur included)
    op     = conv.conv_value(keys, dW)           # the layer's linear map (demod=None): for solvers

``conv.forward(x, w)`` is exactly ``conv_value(modulated_input(x, style(w)), w_eff, demodulation(...))``
and routes the style, the keys and the values through ``conv.style_tap``, ``conv.key_tap`` and
``conv.value_tap`` (three ``nn.Identity``): forward hooks on the taps read s [B, I], keys and values
(the style is what a solver needs to hold the demodulation fixed), and a forward hook on
``value_tap`` that returns a tensor replaces the values. Values are taken before noise, bias and
activation, which :class:`StyledConv` applies afterwards. ``conv.weight`` stays in the checkpoint's
units; an edit in effective units dW changes it by ``dW / conv.scale``. ``conv.olam_handle(name)``
returns the olam-edit layer handle (``olam_edit.adapters._stylegan2_handle.ModConvHandle``), so
``olam_edit.get_handle(generator, "layers.layer8.conv")`` and ``list_layers`` find every such conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from olam_edit.handles import LayerHandle

FLAVORS = ("rosinality", "nvlabs")
NOISE_MODES = ("random", "const", "none")
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
EPS = 1e-8


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Channels per resolution of the official configs (rosinality's table), up to ``size``."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
             128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
             512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: ch for res, ch in table.items() if res <= size}


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator.

    ``channels`` maps every resolution 4 .. size to its feature channels; when empty it follows
    ``channel_multiplier`` (config-f: 2). ``z_dim`` defaults to ``style_dim``. ``conv_clamp`` (NVlabs
    training option, often 256) clamps every layer output. ``flavor`` picks whose demodulation
    epsilon to reproduce: rosinality adds 1e-8 to the squared norm of the effective weight, NVlabs to
    that of the stored weight.
    """

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channels: dict[int, int] = field(default_factory=dict)
    z_dim: int = 0
    lr_mlp: float = 0.01
    img_channels: int = 3
    conv_clamp: float | None = None
    flavor: str = "rosinality"

    def __post_init__(self) -> None:
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 4, got {self.size}")
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {self.flavor!r}")
        chans = {int(r): int(c) for r, c in (self.channels or default_channels(self.size,
                                                                                self.channel_multiplier)).items()}
        missing = [r for r in self.resolutions if r not in chans]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")
        object.__setattr__(self, "channels", {r: chans[r] for r in self.resolutions})
        object.__setattr__(self, "z_dim", self.z_dim or self.style_dim)

    @property
    def resolutions(self) -> list[int]:
        """Block resolutions 4, 8, ..., size."""
        return [2**i for i in range(2, int(math.log2(self.size)) + 1)]

    @property
    def num_ws(self) -> int:
        """Number of per-layer latents (rosinality's n_latent, NVlabs' num_ws)."""
        return 2 * int(math.log2(self.size)) - 2

    def to_dict(self) -> dict:
        """JSON-ready dict (resolution keys as strings)."""
        out = asdict(self)
        out["channels"] = {str(r): c for r, c in self.channels.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> StyleGAN2Config:
        """Inverse of :meth:`to_dict`; raises ``TypeError`` on unknown fields."""
        data = dict(data)
        data["channels"] = {int(r): int(c) for r, c in data.get("channels", {}).items()}
        return cls(**data)


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


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then ``n_mlp`` equalised-lr linears with fused leaky ReLU.

    Holds the average latent ``w_avg`` [D] (rosinality's ``latent_avg``, NVlabs' ``mapping.w_avg``).
    """

    def __init__(self, z_dim: int, style_dim: int, n_mlp: int, lr_mul: float) -> None:
        super().__init__()
        self.n_mlp = n_mlp
        for i in range(n_mlp):
            fc = EqualLinear(z_dim if i == 0 else style_dim, style_dim, lr_mul=lr_mul, activation=True)
            self.add_module(f"fc{i}", fc)
        self.register_buffer("w_avg", torch.zeros(style_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, z_dim] -> [B, style_dim]."""
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + EPS)  # [B, z_dim]
        for i in range(self.n_mlp):
            x = getattr(self, f"fc{i}")(x)  # [B, D]
        return x


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
        """The olam-edit handle of this layer (keys s (.) x, demodulated values; see ``_stylegan2_handle``)."""
        from ._stylegan2_handle import ModConvHandle

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


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 "skip" generator; see the module docstring for names, shapes and the hook API.

    ``truncation``, ``truncation_cutoff`` and ``noise_mode`` are plain attributes holding the
    defaults of :meth:`forward` (1.0, None, "random" as in both originals); set them (e.g. 0.5 and
    "const") to make ``model(z)`` the deterministic sampler an editing session needs.
    """

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        self.config = config
        self.truncation: float = 1.0
        self.truncation_cutoff: int | None = None
        self.noise_mode: str = "random"
        ch, dim = config.channels, config.style_dim
        self.mapping = MappingNetwork(config.z_dim, dim, config.n_mlp, config.lr_mlp)
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        self.layers = nn.ModuleDict()
        self.to_rgbs = nn.ModuleDict()
        self.register_buffer("skip_kernel", blur_kernel(4.0), persistent=False)
        for res in config.resolutions:
            self._add_block(res, ch[max(res // 2, 4)], ch[res])

    def _add_block(self, res: int, in_ch: int, out_ch: int) -> None:
        """Append the (up) layer(s) and the toRGB of one resolution."""
        cfg, dim, n = self.config, self.config.style_dim, 2 * int(math.log2(res)) - 3
        kwargs = {"conv_clamp": cfg.conv_clamp, "flavor": cfg.flavor}
        if res > 4:
            self.layers[f"layer{n}"] = StyledConv(in_ch, out_ch, dim, res, up=True, **kwargs)
        self.layers[f"layer{n + 1}"] = StyledConv(out_ch, out_ch, dim, res, **kwargs)
        self.to_rgbs[f"rgb{res}"] = ToRGB(out_ch, dim, cfg.img_channels, conv_clamp=cfg.conv_clamp)

    @property
    def num_ws(self) -> int:
        """Number of per-layer latents ws[:, i]."""
        return self.config.num_ws

    @property
    def layer_names(self) -> list[str]:
        """``["layer2", ..., "layerL"]`` in forward order."""
        return list(self.layers.keys())

    def editable_layers(self) -> dict[str, ModulatedConv]:
        """The modulated convolution of every synthesis layer, by paper name (``layer8`` ...)."""
        return {name: layer.conv for name, layer in self.layers.items()}

    @staticmethod
    def ws_index(name: str) -> int:
        """Index into ``ws`` read by ``layerN`` (N - 2) or ``rgbR`` (2 log2 R - 3)."""
        if name.startswith("rgb"):
            return 2 * int(math.log2(int(name[3:]))) - 3
        return int(name.removeprefix("layer")) - 2

    def truncate(self, w: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """Broadcast w [B, D] to ws [B, num_ws, D] and pull the first ``cutoff`` (all) toward w_avg."""
        ws = w[:, None, :].expand(-1, self.num_ws, -1) if w.ndim == 2 else w  # [B, num_ws, D]
        if psi == 1:
            return ws
        avg = self.mapping.w_avg.to(ws.dtype)  # [D]
        stop = self.num_ws if cutoff is None else cutoff
        pulled = avg + psi * (ws[:, :stop] - avg)  # [B, stop, D]
        return torch.cat([pulled, ws[:, stop:]], dim=1)  # [B, num_ws, D]

    def make_noise(self, batch: int = 1, *, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh N(0, 1) noise for every layer, in ``layer2 .. layerL`` order: [batch, 1, R, R] each.

        Drawn on ``generator``'s device (a CPU generator gives the same noise on every machine), then
        moved to the model's.
        """
        source = generator.device if generator is not None else self.const.device
        return [torch.randn(batch, 1, lay.resolution, lay.resolution, generator=generator, device=source)
                .to(self.const.device) for lay in self.layers.values()]

    def _noise_list(self, batch: int, mode: str, noise: Sequence[torch.Tensor | None] | None,
                    generator: torch.Generator | None) -> list[torch.Tensor | None]:
        """Resolve explicit noise or a noise mode into one tensor (or None) per layer."""
        if noise is not None:
            if len(noise) != len(self.layers):
                raise ValueError(f"noise needs {len(self.layers)} entries (one per layer), got {len(noise)}")
            return list(noise)
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        if mode == "none":
            return [None] * len(self.layers)
        if mode == "const":
            return [lay.noise_const for lay in self.layers.values()]
        return self.make_noise(batch, generator=generator)

    def synthesize(self, ws: torch.Tensor, *, noise_mode: str = "random",
                   noise: Sequence[torch.Tensor | None] | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """ws [B, num_ws, D] (or w [B, D]) -> image [B, img_channels, size, size], roughly in [-1, 1]."""
        ws = self.truncate(ws)  # [B, num_ws, D]
        noises = self._noise_list(ws.shape[0], noise_mode, noise, generator)
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # [B, C4, 4, 4]
        img = None
        for i, (name, layer) in enumerate(self.layers.items()):
            x = layer(x, ws[:, self.ws_index(name)], noises[i])  # [B, C, R, R]
            if i % 2 == 0:
                rgb_name = f"rgb{layer.resolution}"
                rgb = self.to_rgbs[rgb_name](x, ws[:, self.ws_index(rgb_name)])  # [B, 3, R, R]
                img = rgb if img is None else upsample_2x(img, self.skip_kernel) + rgb
        return img

    def forward(self, z: torch.Tensor, *, truncation: float | None = None,
                truncation_cutoff: int | None = None, noise_mode: str | None = None,
                noise: Sequence[torch.Tensor | None] | None = None,
                input_is_w: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """z [B, z_dim] (or w [B, D] / ws [B, num_ws, D] with ``input_is_w``) -> image [B, 3, S, S].

        Truncation pulls toward the stored ``mapping.w_avg``; ``noise_mode`` is "random" (fresh, drawn
        from ``generator``), "const" (stored buffers) or "none"; explicit ``noise`` (one tensor or
        None per layer) wins. Arguments left as None take the attributes of the same name.
        """
        psi = self.truncation if truncation is None else truncation
        cutoff = self.truncation_cutoff if truncation_cutoff is None else truncation_cutoff
        w = z if input_is_w else self.mapping(z)  # [B, D]
        ws = self.truncate(w, psi, cutoff)  # [B, num_ws, D]
        mode = self.noise_mode if noise_mode is None else noise_mode
        return self.synthesize(ws, noise_mode=mode, noise=noise, generator=generator)
