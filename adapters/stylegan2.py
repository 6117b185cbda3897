"""Load, save and convert StyleGAN2 generators without running code from the checkpoint.

Formats read into :class:`~olam_edit.adapters._stylegan2_net.StyleGAN2Generator`:

* rosinality/stylegan2-pytorch ``.pt``: ``{"g_ema": state_dict, "latent_avg": [D]}``, read with
  ``torch.load(weights_only=True)``; the architecture is inferred from the shapes (the mapping
  learning-rate multiplier, which shapes cannot show, is taken as rosinality's 0.01).
* NVlabs stylegan2-ada-pytorch / stylegan3 ``.pkl`` (``G_ema``): read by :class:`SafeUnpickler`,
  which only rebuilds tensors, containers and ``torch_utils.persistence`` records as plain data.
  The source code embedded in those records is never imported or executed. Only StyleGAN2
  "skip" generators without labels convert; StyleGAN3 (alias-free) networks are refused.
* ours: a folder with ``model.safetensors`` (our state-dict names) and ``config.json``.

:class:`StyleGAN2Adapter` wraps a loaded generator in the package's Generator protocol (seeded
latents, truncation 0.5 and constant noise by default); :func:`load_generator_from_path` is what
``olam_edit.adapters.load_generator`` calls for local paths and Hub snapshots.

Everything else (``os.system`` in a pickle, a persistence record of an unknown class) raises
:class:`~olam_edit.errors.UnsafePickleError` before anything is built.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from olam_edit.errors import EditFileError, RequestError, ShapeMismatchError, UnsafePickleError, explain

from ._stylegan2_net import NOISE_MODES, StyleGAN2Config, StyleGAN2Generator, blur_kernel, default_channels
from .base import Generator

__all__ = [
    "PersistentRecord",
    "SafeUnpickler",
    "StyleGAN2Adapter",
    "StyleGAN2Config",
    "StyleGAN2Generator",
    "build_generator",
    "convert_stylegan2",
    "estimate_w_avg",
    "find_stylegan2_file",
    "from_nvlabs",
    "from_rosinality",
    "load_generator_from_path",
    "load_nvlabs_pickle",
    "load_olam_stylegan2",
    "load_rosinality",
    "load_stylegan2",
    "rosinality_checkpoint",
    "safe_unpickle",
    "save_stylegan2",
]

FORMAT_NAME = "olam-edit-stylegan2"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# ---------------------------------------------------------------------------------------------
# Building a generator from a state dict in our names (shared by every format)
# ---------------------------------------------------------------------------------------------


def build_generator(config: StyleGAN2Config, state: dict[str, torch.Tensor], *,
                    source: str) -> StyleGAN2Generator:
    """A generator of ``config`` holding exactly ``state`` (float32, eval mode, no grad).

    Raises EditFileError on missing or unexpected keys and ShapeMismatchError on wrong shapes,
    before any weight is copied.
    """
    model = StyleGAN2Generator(config)
    expected = model.state_dict()
    _check_keys(set(expected), set(state), source)
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ShapeMismatchError(explain(
                f"{source}: tensor {key!r} has the wrong shape", got=tuple(state[key].shape),
                expected=tuple(ref.shape), fix="The file does not match the architecture read from it."))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval().requires_grad_(False)


def _check_keys(expected: set[str], got: set[str], source: str) -> None:
    """Raise EditFileError naming the missing and unexpected tensor names."""
    missing, extra = sorted(expected - got), sorted(got - expected)
    if missing or extra:
        raise EditFileError(explain(
            f"{source}: tensors do not match a StyleGAN2 generator",
            got=f"missing {_short(missing)}, unexpected {_short(extra)}",
            fix="Pass an unmodified rosinality .pt, NVlabs .pkl or olam-edit model folder."))


def _short(names: list[str], limit: int = 6) -> str:
    """``[a, b, ... (+n more)]`` for error messages."""
    head = ", ".join(names[:limit]) or "none"
    return head + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch
# ---------------------------------------------------------------------------------------------


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
        raise EditFileError(explain("not a rosinality StyleGAN2 g_ema state dict", got=f"{exc!r}",
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
        raise EditFileError(explain(f"{source}: {theirs!r} is not a tensor", got=type(tensor).__name__))
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
        raise EditFileError(explain(f"{path}: not a rosinality StyleGAN2 checkpoint",
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
        raise EditFileError(explain(f"{path}: unreadable checkpoint", got=str(exc).splitlines()[0])) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise EditFileError(explain(f"{path}: truncated or not a PyTorch checkpoint",
                                    got=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                    fix="Download the file again.")) from exc


def _describe(obj: Any) -> str:
    """Short description of an unexpected object."""
    if isinstance(obj, dict):
        return f"dict with keys {_short(sorted(map(str, obj)))}"
    return type(obj).__name__


# ---------------------------------------------------------------------------------------------
# NVlabs pickles, read without executing anything
# ---------------------------------------------------------------------------------------------

ALLOWED_PERSISTENT_CLASSES = frozenset({
    # training/networks.py (stylegan2-ada-pytorch) and networks_stylegan2.py (stylegan3)
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToRGBLayer",
    "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue",
    "MinibatchStdLayer",
    # training/networks_stylegan3.py (read so that it can be refused with a clear message)
    "SynthesisInput",
    # training/augment.py
    "AugmentPipe",
})


@dataclass
class PersistentRecord:
    """A ``torch_utils.persistence`` object as plain data: its class name and ``__dict__`` state.

    The module source stored beside it is dropped unread.
    """

    class_name: str
    state: dict

    def tensors(self) -> dict[str, torch.Tensor]:
        """Own parameters and buffers (``None`` entries skipped)."""
        found = {**self.state.get("_parameters", {}), **self.state.get("_buffers", {})}
        return {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}

    def child(self, name: str) -> PersistentRecord:
        """Sub-module ``name``; EditFileError when it is missing or not a record."""
        child = self.state.get("_modules", {}).get(name)
        if not isinstance(child, PersistentRecord):
            raise EditFileError(explain(f"{self.class_name} has no sub-network {name!r}",
                                        got=_short(sorted(self.state.get("_modules", {})))))
        return child

    def has_child(self, name: str) -> bool:
        """Whether sub-module ``name`` exists."""
        return isinstance(self.state.get("_modules", {}).get(name), PersistentRecord)


def _reconstruct_record(meta: Any) -> PersistentRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keep data, run nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise EditFileError(explain("malformed torch_utils.persistence record", got=_describe(meta)))
    name = meta.get("class_name")
    if name not in ALLOWED_PERSISTENT_CLASSES:
        raise UnsafePickleError(explain(f"the pickle holds a persistent object of class {name!r}",
                                        expected=f"one of {sorted(ALLOWED_PERSISTENT_CLASSES)}",
                                        fix="Only NVlabs StyleGAN2/3 pickles are read; nothing was run."))
    return PersistentRecord(class_name=name, state=dict(meta["state"]))


def _load_storage(data: bytes) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes``: legacy ``torch.save`` bytes, weights only."""
    if not isinstance(data, bytes | bytearray):
        raise EditFileError(explain("malformed tensor storage in the pickle", got=type(data).__name__))
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(explain("a tensor storage in the pickle asks for code",
                                        got=str(exc).splitlines()[0])) from exc


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view of an already loaded storage."""
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise EditFileError(explain("malformed tensor in the pickle", got=type(storage).__name__,
                                    expected="a storage"))
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise EditFileError(explain("malformed parameter in the pickle", got=type(data).__name__))
    return data


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access; plain dict here)."""


_NUMERIC_DTYPE = re.compile(r"[biufc]\d{1,2}|\?")


class _DType:
    """Stand-in for ``numpy.dtype`` that accepts numeric codes only (no object arrays)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or not _NUMERIC_DTYPE.fullmatch(code):
            raise UnsafePickleError(explain("the pickle asks for a non-numeric numpy dtype", got=repr(code)))
        self.code, self.order = code, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def numpy(self) -> np.dtype:
        """The real numpy dtype."""
        return np.dtype(self.code).newbyteorder(self.order) if self.order in "<>" else np.dtype(self.code)


def _numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number."""
    if not isinstance(dtype, _DType) or not isinstance(data, bytes):
        raise UnsafePickleError(explain("the pickle builds a numpy scalar that is not a plain number"))
    return np.frombuffer(data, dtype=dtype.numpy())[0].item()


class _NDArray:
    """Stand-in for ``numpy.ndarray`` (marker) and the arrays built from it (numeric only)."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        _version, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DType) or not isinstance(raw, bytes):
            raise UnsafePickleError(explain("the pickle builds a numpy array that is not numeric"))
        flat = np.frombuffer(raw, dtype=dtype.numpy())
        self.value = flat.reshape(shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls: Any, shape: Any = (0,), code: Any = b"b") -> _NDArray:
    """Stand-in for ``numpy.core.multiarray._reconstruct`` (ndarray only)."""
    if cls is not _NDArray:
        raise UnsafePickleError(explain("the pickle reconstructs a numpy subclass", got=repr(cls)))
    return _NDArray()


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` (how protocol-2 pickles store bytes)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise UnsafePickleError(explain("unexpected _codecs.encode call in the pickle", got=repr(encoding)))
    return text.encode(encoding)


def _safe_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    """Every global a StyleGAN pickle may name, mapped to our own harmless stand-ins."""
    table: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("numpy", "dtype"): _DType,
        ("numpy", "ndarray"): _NDArray,
        ("_codecs", "encode"): _codecs_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "scalar")] = _numpy_scalar
        table[(module, "_reconstruct")] = _numpy_reconstruct
    return table


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for NVlabs network pickles that never imports or calls anything of the file's choice.

    ``find_class`` answers only from a fixed table of our own stand-ins (tensor rebuilding through
    ``torch.load(weights_only=True)``, containers, numeric numpy values, persistence records as
    :class:`PersistentRecord`); any other global raises UnsafePickleError naming it.
    """

    _table = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._table.get((module, name))
        if found is None:
            raise UnsafePickleError(explain(
                f"the pickle asks to import {module}.{name}", expected="tensors, containers and NVlabs "
                "persistence records", fix="This is not a plain StyleGAN network pickle; nothing was run."))
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(explain("the pickle uses persistent ids", got=repr(pid)[:80],
                                        fix="Save PyTorch files with torch.save and load them as .pt."))


def safe_unpickle(file: BinaryIO, *, source: str = "pickle") -> Any:
    """Unpickle ``file`` with :class:`SafeUnpickler`; truncated or foreign data raise EditFileError."""
    try:
        return SafeUnpickler(file).load()
    except (UnsafePickleError, EditFileError):
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RuntimeError) as exc:
        raise EditFileError(explain(f"{source}: truncated or not a network pickle",
                                    got=f"{type(exc).__name__}: {exc}"[:200],
                                    fix="Download the file again.")) from exc


def load_nvlabs_pickle(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load ``G_ema`` of an NVlabs stylegan2-ada-pytorch / stylegan3 pickle, executing nothing."""
    with open(path, "rb") as handle:
        data = safe_unpickle(handle, source=str(path))
    g_ema = data.get("G_ema") if isinstance(data, dict) else data
    if not isinstance(g_ema, PersistentRecord) or g_ema.class_name != "Generator":
        raise EditFileError(explain(f"{path}: no NVlabs generator in the pickle", got=_describe(data),
                                    expected='a dict with "G_ema" (a persistent Generator)'))
    return from_nvlabs(g_ema, source=str(path))


def from_nvlabs(g_ema: PersistentRecord, *, source: str = "NVlabs pickle") -> StyleGAN2Generator:
    """Convert a ``Generator`` record (StyleGAN2, skip architecture, no labels) to our generator."""
    synthesis, mapping = g_ema.child("synthesis"), g_ema.child("mapping")
    _refuse_unsupported(g_ema, synthesis, source)
    config = nvlabs_config(g_ema, synthesis, mapping)
    state = _nvlabs_mapping_state(mapping, config)
    for res in config.resolutions:
        state |= _nvlabs_block_state(synthesis.child(f"b{res}"), res)
    return build_generator(config, state, source=source)


def _refuse_unsupported(g_ema: PersistentRecord, synthesis: PersistentRecord, source: str) -> None:
    """Raise EditFileError for StyleGAN3 synthesis, conditional models and non-skip generators."""
    if synthesis.has_child("input") or not synthesis.has_child("b4"):
        raise EditFileError(explain(f"{source}: a StyleGAN3 (alias-free) generator", expected="StyleGAN2",
                                    fix="Only StyleGAN2 networks (stylegan2-ada-pytorch, or stylegan3's "
                                        "--cfg=stylegan2) can be loaded."))
    if int(g_ema.state.get("c_dim", 0) or 0) > 0:
        raise EditFileError(explain(f"{source}: a class-conditional generator",
                                    got=f"c_dim={g_ema.state['c_dim']}", expected="c_dim=0",
                                    fix="Conditional StyleGAN2 models are not supported."))
    block = synthesis.child("b4")
    if block.state.get("architecture", "skip") != "skip":
        raise EditFileError(explain(f"{source}: unsupported generator architecture",
                                    got=block.state.get("architecture"), expected="skip"))


def nvlabs_config(g_ema: PersistentRecord, synthesis: PersistentRecord, mapping: PersistentRecord
                  ) -> StyleGAN2Config:
    """Architecture of an NVlabs StyleGAN2 generator, from its records' attributes and shapes."""
    size = int(g_ema.state["img_resolution"])
    res_list = [2**i for i in range(2, int(math.log2(size)) + 1)]
    channels = {res: int(synthesis.child(f"b{res}").child("conv1").tensors()["weight"].shape[0])
                for res in res_list}
    fc0 = mapping.child("fc0")
    clamp = synthesis.child("b4").child("conv1").state.get("conv_clamp")
    multiplier = next((m for m in (1, 2, 4) if default_channels(size, m) == channels), 2)
    return StyleGAN2Config(size=size, style_dim=int(g_ema.state["w_dim"]),
                           n_mlp=int(mapping.state["num_layers"]),
                           channel_multiplier=multiplier, channels=channels, z_dim=int(g_ema.state["z_dim"]),
                           lr_mlp=float(fc0.state.get("bias_gain", 0.01)),
                           img_channels=int(g_ema.state.get("img_channels", 3)),
                           conv_clamp=None if clamp is None else float(clamp), flavor="nvlabs")


def _nvlabs_mapping_state(mapping: PersistentRecord, config: StyleGAN2Config) -> dict[str, torch.Tensor]:
    """Mapping weights and ``w_avg`` in our names."""
    state = {}
    for i in range(config.n_mlp):
        fc = mapping.child(f"fc{i}")
        if fc.state.get("activation", "lrelu") != "lrelu":
            raise EditFileError(explain("unsupported mapping activation", got=fc.state.get("activation"),
                                        expected="lrelu"))
        state |= {f"mapping.fc{i}.{k}": v for k, v in fc.tensors().items()}
    avg = mapping.tensors().get("w_avg")
    state["mapping.w_avg"] = torch.zeros(config.style_dim) if avg is None else avg
    return state


def _nvlabs_block_state(block: PersistentRecord, res: int) -> dict[str, torch.Tensor]:
    """One synthesis block (``b{res}``) in our names: const, conv0 / conv1 layers, toRGB."""
    n = 2 * int(math.log2(res)) - 3
    state = {}
    if res == 4:
        state["const"] = block.tensors()["const"]
    else:
        state |= _nvlabs_layer_state(block.child("conv0"), f"layers.layer{n}")
    state |= _nvlabs_layer_state(block.child("conv1"), f"layers.layer{n + 1}")
    rgb = block.child("torgb").tensors()
    prefix = f"to_rgbs.rgb{res}"
    state |= {f"{prefix}.conv.weight": rgb["weight"], f"{prefix}.bias": rgb["bias"]}
    affine = block.child("torgb").child("affine").tensors()
    state |= {f"{prefix}.conv.affine.{k}": v for k, v in affine.items()}
    return state


def _nvlabs_layer_state(layer: PersistentRecord, prefix: str) -> dict[str, torch.Tensor]:
    """One ``SynthesisLayer`` in our names; a layer without noise gets zero strength."""
    if layer.state.get("activation", "lrelu") != "lrelu":
        raise EditFileError(explain(f"{prefix}: unsupported activation", got=layer.state.get("activation"),
                                    expected="lrelu"))
    own = layer.tensors()
    res = int(layer.state.get("resolution", own["weight"].shape[-1]))
    const = own.get("noise_const", torch.zeros(res, res))
    state = {f"{prefix}.conv.weight": own["weight"], f"{prefix}.bias": own["bias"],
             f"{prefix}.noise_strength": own.get("noise_strength", torch.zeros(())).reshape(()),
             f"{prefix}.noise_const": const.reshape(1, 1, *const.shape[-2:])}
    return state | {f"{prefix}.conv.affine.{k}": v for k, v in layer.child("affine").tensors().items()}


# ---------------------------------------------------------------------------------------------
# Our format: model.safetensors + config.json
# ---------------------------------------------------------------------------------------------


def save_stylegan2(generator: StyleGAN2Generator, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomically); return it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in generator.state_dict().items()}
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": generator.config.to_dict()}
    metadata = {"format": "pt", "olam_edit": FORMAT_NAME}
    _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def _atomic_write(target: Path, write: Callable[[str], Any]) -> None:
    """Run ``write(temp_path)`` beside ``target``, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_olam_stylegan2(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load our format from its folder, or from its ``model.safetensors`` with ``config.json`` beside."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    config = _read_config(folder / CONFIG_NAME)
    try:
        state = load_file(folder / WEIGHTS_NAME)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise EditFileError(explain(f"{folder / WEIGHTS_NAME}: unreadable safetensors file",
                                    got=str(exc)[:200], fix="Download or convert the model again.")) from exc
    return build_generator(config, state, source=str(folder / WEIGHTS_NAME))


def _read_config(path: Path) -> StyleGAN2Config:
    """Parse and validate ``config.json``."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT_NAME:
            raise EditFileError(explain(f"{path}: not an olam-edit StyleGAN2 config", got=data.get("format"),
                                        expected=FORMAT_NAME))
        return StyleGAN2Config.from_dict(data["config"])
    except EditFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EditFileError(explain(f"{path}: unreadable StyleGAN2 config",
                                    got=f"{type(exc).__name__}: {exc}",
                                    fix="Re-create it with save_stylegan2 / convert_stylegan2.")) from exc


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

_SUFFIX_RANK = {".safetensors": 0, ".pt": 1, ".pth": 1, ".pkl": 2}


def find_stylegan2_file(repo_dir: str | os.PathLike) -> Path:
    """The checkpoint to load from a downloaded snapshot: ours, else a ``.pt``/``.pth``, else a ``.pkl``.

    Our ``model.safetensors`` counts only with ``config.json`` beside it. Two candidates of the best
    kind raise EditFileError (name the file instead); none raises FileNotFoundError.
    """
    root = Path(repo_dir)
    found: dict[int, list[Path]] = {}
    for file in sorted(root.rglob("*")):
        rank = _SUFFIX_RANK.get(file.suffix.lower())
        hidden = any(part.startswith(".") for part in file.relative_to(root).parts)
        if rank is None or hidden or not file.is_file():
            continue
        if rank == 0 and (file.name != WEIGHTS_NAME or not (file.parent / CONFIG_NAME).is_file()):
            continue
        found.setdefault(rank, []).append(file)
    if not found:
        raise FileNotFoundError(explain(f"no StyleGAN2 checkpoint in {root}",
                                        expected="model.safetensors + config.json, *.pt or *.pkl"))
    best = found[min(found)]
    if len(best) > 1:
        raise EditFileError(explain(f"several StyleGAN2 checkpoints in {root}",
                                    got=_short([str(p.relative_to(root)) for p in best]),
                                    fix="Name the file to load."))
    return best[0]


def _sniff(path: Path) -> str:
    """``"ours"``, ``"rosinality"`` or ``"nvlabs"`` from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or path.name == CONFIG_NAME:
        return "ours"
    if suffix in (".pt", ".pth"):
        return "rosinality"
    if suffix == ".pkl":
        return "nvlabs"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        return "rosinality"
    if head[:1] == b"\x80":
        return "rosinality" if head[1:2] == b"\x02" else "nvlabs"
    raise EditFileError(explain(f"{path}: unknown checkpoint format", got=repr(head),
                                expected=".safetensors, .pt or .pkl"))


def load_stylegan2(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load a generator from any supported file, or from a folder (see :func:`find_stylegan2_file`)."""
    path = Path(path)
    if path.is_dir():
        path = find_stylegan2_file(path)
    if not path.exists():
        raise FileNotFoundError(explain(f"no such checkpoint: {path}"))
    loader = {"ours": load_olam_stylegan2, "rosinality": load_rosinality, "nvlabs": load_nvlabs_pickle}
    return loader[_sniff(path)](path)


def convert_stylegan2(src: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """Convert any supported checkpoint to our safetensors format in ``dst_dir``; return the folder."""
    return save_stylegan2(load_stylegan2(src), dst_dir)


# ---------------------------------------------------------------------------------------------
# The Generator protocol (what the Rewriter, the CLI and the app talk to)
# ---------------------------------------------------------------------------------------------

DEFAULT_TRUNCATION = 0.5  # the paper's notebooks and UI


class StyleGAN2Adapter(Generator):
    """A :class:`StyleGAN2Generator` as a deterministic sampler ``z [z_dim] -> image [3, S, S]``.

    ``truncation`` (default 0.5 as in the paper's UI), ``truncation_cutoff`` and ``noise_mode``
    (default "const", the stored noise, so a seed always gives the same image) are written to the
    model's attributes, which ``model(z)`` uses; they are part of :meth:`sampler_settings`, so
    statistics cached under other settings are not reused. Editable layers are the modulated convs
    ``layers.layerN.conv`` (and ``to_rgbs.rgbR.conv``); :meth:`layer_name` maps ``"layer8"`` to one.
    Key maps are pinned by the handle, which remembers each map's style so it can compute values.
    """

    key_hook_options: ClassVar[dict[str, Any]] = {"pin": True}

    def __init__(self, model: StyleGAN2Generator, *, name: str, truncation: float = DEFAULT_TRUNCATION,
                 truncation_cutoff: int | None = None, noise_mode: str = "const", revision: str | None = None,
                 license: str | None = None) -> None:
        super().__init__(model, name=name, revision=revision, license=license)
        self.truncation, self.truncation_cutoff, self.noise_mode = truncation, truncation_cutoff, noise_mode

    @property
    def truncation(self) -> float:
        return self.model.truncation

    @truncation.setter
    def truncation(self, psi: float) -> None:
        if not isinstance(psi, int | float) or isinstance(psi, bool) or not math.isfinite(psi):
            raise RequestError(explain("truncation must be a finite number", got=repr(psi), expected="e.g. 0.5"))
        self.model.truncation = float(psi)

    @property
    def truncation_cutoff(self) -> int | None:
        return self.model.truncation_cutoff

    @truncation_cutoff.setter
    def truncation_cutoff(self, cutoff: int | None) -> None:
        self.model.truncation_cutoff = None if cutoff is None else int(cutoff)

    @property
    def noise_mode(self) -> str:
        return self.model.noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise RequestError(explain("unknown noise mode", got=repr(mode), expected=NOISE_MODES,
                                       fix='Use "const" for reproducible samples.'))
        self.model.noise_mode = mode

    def sample_latent(self, gen: torch.Generator) -> torch.Tensor:
        """z ~ N(0, I) of shape ``[z_dim]`` from a seeded CPU generator."""
        return torch.randn(self.model.config.z_dim, generator=gen)  # [z_dim]

    def sampler_settings(self) -> dict[str, Any]:
        """Truncation, its cutoff and the noise mode: they change the keys' distribution."""
        return {"truncation": self.truncation, "truncation_cutoff": self.truncation_cutoff,
                "noise_mode": self.noise_mode}

    @staticmethod
    def layer_name(layer: str) -> str:
        """Module path of a paper layer name: ``"layer8"`` -> ``"layers.layer8.conv"`` (others unchanged)."""
        return f"layers.{layer}.conv" if re.fullmatch(r"layer\d+", layer) else layer


def load_generator_from_path(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                             truncation: float = DEFAULT_TRUNCATION, truncation_cutoff: int | None = None,
                             noise_mode: str = "const", name: str | None = None, revision: str | None = None,
                             license: str | None = None) -> StyleGAN2Adapter:
    """Load any supported StyleGAN2 checkpoint (file or folder) as a :class:`StyleGAN2Adapter`.

    ``name`` defaults to ``str(path)`` (pass the Hub repo id for a snapshot folder).
    """
    model = load_stylegan2(path).to(device)
    return StyleGAN2Adapter(model, name=str(path) if name is None else name, truncation=truncation,
                            truncation_cutoff=truncation_cutoff, noise_mode=noise_mode, revision=revision,
                            license=license)
