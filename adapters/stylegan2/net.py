"""The mapping network and the synthesis network assembled from a StyleGAN2Config."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from olam_edit.adapters.stylegan2.config import EPS, NOISE_MODES, StyleGAN2Config
from olam_edit.adapters.stylegan2.modconv import ModulatedConv, StyledConv, ToRGB
from olam_edit.adapters.stylegan2.ops import EqualLinear, blur_kernel, upsample_2x

if TYPE_CHECKING:
    pass


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
