"""rosinality/stylegan2-pytorch ``.pt`` files, read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from olam_edit.adapters.stylegan2.build import _check_keys, _short, build_generator
from olam_edit.adapters.stylegan2.config import StyleGAN2Config, default_channels
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.adapters.stylegan2.ops import blur_kernel
from olam_edit.errors import UnsafePickleError, WeightFileError, explain


def _rosinality_prefix(name: str) -> str:
    """rosinality module path of our ``layerN`` / ``rgbR``."""
    if name.startswith("rgb"):
        res = int(name[3:])
        return "to_rgb1" if res == 4 else f"to_rgbs.{int(math.log2(res)) - 3}"
    n = int(name.removeprefix("layer"))
    return "conv1" if n == 2 else f"convs.{n - 3}"


def rosinality_key_map(config: StyleGAN2Config) -> dict[str, str]:
    """Our state-dict name -> rosinality ``g_ema`` name, for every tensor of ``config``."""
    pairs = {"const": "input.input"}
    for i in range(config.n_mlp):
        pairs |= {f"mapping.fc{i}.{p}": f"style.{i + 1}.{p}" for p in ("weight", "bias")}
    model_layers = [f"layer{n}" for n in range(2, config.num_ws + 1)]
    for name in model_layers:
        ours, theirs = f"layers.{name}", _rosinality_prefix(name)
        pairs |= {f"{ours}.conv.weight": f"{theirs}.conv.weight",
                  f"{ours}.conv.affine.weight": f"{theirs}.conv.modulation.weight",
                  f"{ours}.conv.affine.bias": f"{theirs}.conv.modulation.bias",
                  f"{ours}.noise_strength": f"{theirs}.noise.weight",
                  f"{ours}.bias": f"{theirs}.activate.bias",
                  f"{ours}.noise_const": f"noises.noise_{int(name[5:]) - 2}"}
    for res in config.resolutions:
        ours, theirs = f"to_rgbs.rgb{res}", _rosinality_prefix(f"rgb{res}")
        pairs |= {f"{ours}.conv.weight": f"{theirs}.conv.weight",
                  f"{ours}.conv.affine.weight": f"{theirs}.conv.modulation.weight",
                  f"{ours}.conv.affine.bias": f"{theirs}.conv.modulation.bias",
                  f"{ours}.bias": f"{theirs}.bias"}
    return pairs


_RGB_BIAS = re.compile(r"to_rgbs\.rgb\d+\.bias")


def _rosinality_shape(key: str, shape: torch.Size) -> tuple[int, ...]:
    """rosinality's shape of one of our tensors (it keeps extra leading / trailing ones)."""
    if key == "const" or key.endswith("conv.weight"):
        return (1, *shape)
    if key.endswith("noise_strength"):
        return (1,)
    if _RGB_BIAS.fullmatch(key):
        return (1, shape[0], 1, 1)
    return tuple(shape)


def _rosinality_buffers(config: StyleGAN2Config) -> dict[str, torch.Tensor]:
    """The FIR kernels rosinality keeps as buffers in ``g_ema`` (all the gain-4 [1,3,3,1] blur)."""
    out = {}
    for j in range(len(config.resolutions) - 1):
        out[f"convs.{2 * j}.conv.blur.kernel"] = blur_kernel(4.0)
        out[f"to_rgbs.{j}.upsample.kernel"] = blur_kernel(4.0)
    return out


def _count(state: dict[str, Any], pattern: str) -> int:
    """Number of keys matching a regular expression."""
    return sum(1 for key in state if re.fullmatch(pattern, key))


def rosinality_config(g_ema: dict[str, torch.Tensor]) -> StyleGAN2Config:
    """Infer size, style_dim, n_mlp and channels from a rosinality ``g_ema`` state dict."""
    try:
        style_dim, z_dim = g_ema["style.1.weight"].shape
        n_rgbs = _count(g_ema, r"to_rgbs\.\d+\.bias")
        channels = {4: g_ema["conv1.conv.weight"].shape[1]}
        channels |= {2 ** (j + 3): g_ema[f"convs.{2 * j}.conv.weight"].shape[1] for j in range(n_rgbs)}
        img_channels = g_ema["to_rgb1.conv.weight"].shape[1]
    except (KeyError, ValueError, IndexError) as exc:
        raise WeightFileError(explain("not a rosinality StyleGAN2 g_ema state dict", got=f"{exc!r}",
                                      expected="keys style.1.weight, conv1.conv.weight, to_rgb1.*")) from exc
    size = 2 ** (n_rgbs + 2)
    multiplier = next((m for m in (1, 2, 4) if default_channels(size, m) == channels), 2)
    return StyleGAN2Config(size=size, style_dim=int(style_dim), n_mlp=_count(g_ema, r"style\.\d+\.weight"),
                           channel_multiplier=multiplier, channels=channels, z_dim=int(z_dim),
                           img_channels=int(img_channels), flavor="rosinality")


def from_rosinality(g_ema: dict[str, torch.Tensor], latent_avg: torch.Tensor | None,
                    *, source: str = "rosinality checkpoint") -> StyleGAN2Generator:
    """Build our generator from rosinality's ``g_ema`` and ``latent_avg`` (zeros when absent)."""
    config = rosinality_config(g_ema)
    key_map = rosinality_key_map(config)
    ignorable = set(_rosinality_buffers(config))
    _check_keys(set(key_map.values()) | ignorable, set(g_ema) | ignorable, source)
    state = {ours: _squeeze_to(g_ema[theirs], ours, theirs, source) for ours, theirs in key_map.items()}
    avg = torch.zeros(config.style_dim) if latent_avg is None else latent_avg
    state["mapping.w_avg"] = _squeeze_to(avg, "mapping.w_avg", "latent_avg", source)
    model = build_generator(config, state, source=source)
    if latent_avg is None:
        warnings.warn(f"{source} has no latent_avg; estimating it from 4096 seeded samples as rosinality's "
                      "generate.py does", stacklevel=3)
        model.mapping.w_avg.copy_(estimate_w_avg(model))
    return model


def estimate_w_avg(model: StyleGAN2Generator, samples: int = 4096, seed: int = 0) -> torch.Tensor:
    """Mean of ``mapping(z)`` over ``samples`` latents drawn from ``seed``: [style_dim]."""
    z = torch.randn(samples, model.config.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.mapping(z.to(model.const.device)).mean(dim=0)  # [D]


def _squeeze_to(tensor: Any, ours: str, theirs: str, source: str) -> torch.Tensor:
    """Drop rosinality's extra unit axes; shapes are checked again in :func:`build_generator`."""
    if not isinstance(tensor, torch.Tensor):
        raise WeightFileError(explain(f"{source}: {theirs!r} is not a tensor", got=type(tensor).__name__))
    if ours == "mapping.w_avg" or _RGB_BIAS.fullmatch(ours):
        return tensor.reshape(-1)  # [D] / [3]
    leading_one = ours == "const" or ours.endswith(("conv.weight", "noise_strength"))
    return tensor[0] if leading_one and tensor.ndim > 0 and tensor.shape[0] == 1 else tensor


def rosinality_checkpoint(generator: StyleGAN2Generator) -> dict[str, Any]:
    """Export to rosinality's layout: ``{"g_ema": state_dict, "latent_avg": [D]}``.

    ``torch.save`` the result and rosinality's ``Generator(size, style_dim, n_mlp,
    channel_multiplier)`` loads ``g_ema`` strictly (for its default channel table).
    """
    ours = generator.state_dict()
    g_ema = {theirs: ours[key].reshape(_rosinality_shape(key, ours[key].shape)).clone()
             for key, theirs in rosinality_key_map(generator.config).items()}
    g_ema |= _rosinality_buffers(generator.config)
    return {"g_ema": g_ema, "latent_avg": ours["mapping.w_avg"].clone()}


def load_rosinality(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load a rosinality ``.pt`` (``g_ema`` + ``latent_avg``) with ``torch.load(weights_only=True)``."""
    ckpt = _torch_load_weights_only(Path(path))
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), dict):
        raise WeightFileError(explain(f"{path}: not a rosinality StyleGAN2 checkpoint",
                                      got=_describe(ckpt), expected='a dict with "g_ema" (and "latent_avg")',
                                      fix="Convert training checkpoints with rosinality's tools first."))
    return from_rosinality(ckpt["g_ema"], ckpt.get("latent_avg"), source=str(path))


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load`` restricted to tensors; code-carrying and broken files raise our errors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found or "Weights only load failed" in str(exc):
            name = found.group(1) if found else "a global outside torch's allow-list"
            message = explain(f"{path}: the checkpoint asks to import {name}",
                              expected="tensors and containers only",
                              fix="Nothing was run; only load checkpoints from sources you trust.")
            raise UnsafePickleError(message) from exc
        raise WeightFileError(explain(f"{path}: unreadable checkpoint", got=str(exc).splitlines()[0])) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightFileError(explain(f"{path}: truncated or not a PyTorch checkpoint",
                                      got=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                      fix="Download the file again.")) from exc


def _describe(obj: Any) -> str:
    """Short description of an unexpected object."""
    if isinstance(obj, dict):
        return f"dict with keys {_short(sorted(map(str, obj)))}"
    return type(obj).__name__
