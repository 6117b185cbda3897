"""rosinality/stylegan2-pytorch ``.pt`` files, read with ``torch.load(weights_only=True)``.

Both what ``convert_weight.py`` writes (``g_ema`` + ``latent_avg``) and what ``train.py`` saves
(``g``, ``d``, ``g_ema``, ``g_optim``, ``d_optim`` and ``args``, an ``argparse.Namespace``) load; the
file is checked within bounds before ``torch.load`` and every loaded tensor after it
(:mod:`~olam_edit.adapters.stylegan2.torchsave`, :mod:`~olam_edit.adapters.stylegan2.safety`).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from olam_edit.adapters.stylegan2.build import _check_keys, build_generator
from olam_edit.adapters.stylegan2.config import StyleGAN2Config, check_sizes, default_channels
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.adapters.stylegan2.ops import blur_kernel
from olam_edit.adapters.stylegan2.safety import (
    check_loaded_tensors,
    clip,
    describe_keys,
    exception_text,
    summary,
    tensorflow_pickle_error,
)
from olam_edit.adapters.stylegan2.torchsave import check_torch_file
from olam_edit.errors import OlamEditError, UnsafePickleError, WeightFileError, explain

# Classes a checkpoint may hold beyond torch's own weights-only allow-list, allowed only during our
# torch.load call. argparse.Namespace (train.py's ``args``) is rebuilt as ``Namespace.__new__`` plus
# setting attributes from the pickled dict: it has no __setstate__ or __reduce__ of its own, so no
# code is imported or run, and the values themselves are still held to torch's allow-list.
CHECKPOINT_GLOBALS = (argparse.Namespace,)


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
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise WeightFileError(explain("not a rosinality StyleGAN2 g_ema state dict", got=exception_text(exc),
                                      expected="keys style.1.weight, conv1.conv.weight, to_rgb1.*")) from exc
    check_sizes("rosinality g_ema", size=2 ** min(n_rgbs + 2, 64), style_dim=int(style_dim), z_dim=int(z_dim),
                channels=[int(c) for c in channels.values()], img_channels=int(img_channels),
                n_mlp=_count(g_ema, r"style\.\d+\.weight"))
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
        raise WeightFileError(explain(f"{source}: {theirs!r} is not a tensor", got=summary(tensor)))
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
    """Load a rosinality ``.pt`` with ``torch.load(weights_only=True)``: ``g_ema`` and ``latent_avg``
    (estimated when absent, as for ``train.py`` checkpoints); other entries are read and ignored."""
    ckpt = _torch_load_weights_only(Path(path))
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), dict):
        raise WeightFileError(explain(f"{path}: not a rosinality StyleGAN2 checkpoint",
                                      got=_describe(ckpt), expected='a dict with "g_ema" (and "latent_avg")',
                                      fix="Convert training checkpoints with rosinality's tools first."))
    return from_rosinality(ckpt["g_ema"], ckpt.get("latent_avg"), source=str(path))


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load`` restricted to tensors (and :data:`CHECKPOINT_GLOBALS`, for this call only), after a
    pre-flight of the file's sizes and followed by a check of every tensor's view; code-carrying and
    broken files raise our errors."""
    try:
        check_torch_file(path, source=str(path))
        with torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, OlamEditError):
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            MemoryError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        raise _load_error(path, exc) from exc
    check_loaded_tensors(ckpt, source=str(path))
    return ckpt


def _load_error(path: Path, exc: BaseException) -> WeightFileError:
    """Our error for what ``torch.load`` (or the pre-flight's reading) raised on ``path``."""
    text = exception_text(exc)
    if isinstance(exc, pickle.UnpicklingError):
        message = exc.args[0] if exc.args and type(exc.args[0]) is str else ""  # torch's own text
        found = re.search(r"GLOBAL ([\w.]{1,300})", message)
        name = found.group(1) if found else "a global outside torch's allow-list"
        if name.startswith("dnnlib.tflib."):
            return tensorflow_pickle_error(str(path), *name.rsplit(".", 1))
        if found or "Weights only load failed" in message:
            return UnsafePickleError(explain(f"{path}: the checkpoint asks to import {clip(name)}",
                                             expected="tensors and containers only",
                                             fix="Nothing was run; only load checkpoints from sources you trust."))
        return WeightFileError(explain(f"{path}: unreadable checkpoint", got=text))
    if "not resizable" in text:
        return WeightFileError(explain(f"{path}: a tensor is larger than its storage", got=text,
                                       fix="The file is damaged or was crafted; nothing was allocated."))
    return WeightFileError(explain(f"{path}: truncated or not a PyTorch checkpoint", got=text,
                                   fix="Download the file again."))


def _describe(obj: Any) -> str:
    """Short description of an unexpected object (never its repr)."""
    return describe_keys(obj) if isinstance(obj, dict) else summary(obj)
