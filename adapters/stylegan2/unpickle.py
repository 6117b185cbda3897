"""A restricted unpickler for NVlabs pickles: rebuilds tensors and containers, never runs the pickle's code."""

from __future__ import annotations

import collections
import io
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch

from olam_edit.adapters.stylegan2.build import _short
from olam_edit.adapters.stylegan2.rosinality import _describe
from olam_edit.errors import UnsafePickleError, WeightFileError, explain

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
        """Sub-module ``name``; WeightFileError when it is missing or not a record."""
        child = self.state.get("_modules", {}).get(name)
        if not isinstance(child, PersistentRecord):
            raise WeightFileError(explain(f"{self.class_name} has no sub-network {name!r}",
                                          got=_short(sorted(self.state.get("_modules", {})))))
        return child

    def has_child(self, name: str) -> bool:
        """Whether sub-module ``name`` exists."""
        return isinstance(self.state.get("_modules", {}).get(name), PersistentRecord)


def _reconstruct_record(meta: Any) -> PersistentRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keep data, run nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise WeightFileError(explain("malformed torch_utils.persistence record", got=_describe(meta)))
    name = meta.get("class_name")
    if name not in ALLOWED_PERSISTENT_CLASSES:
        raise UnsafePickleError(explain(f"the pickle holds a persistent object of class {name!r}",
                                        expected=f"one of {sorted(ALLOWED_PERSISTENT_CLASSES)}",
                                        fix="Only NVlabs StyleGAN2/3 pickles are read; nothing was run."))
    return PersistentRecord(class_name=name, state=dict(meta["state"]))


def _load_storage(data: bytes) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes``: legacy ``torch.save`` bytes, weights only."""
    if not isinstance(data, bytes | bytearray):
        raise WeightFileError(explain("malformed tensor storage in the pickle", got=type(data).__name__))
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(explain("a tensor storage in the pickle asks for code",
                                        got=str(exc).splitlines()[0])) from exc


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view of an already loaded storage."""
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise WeightFileError(explain("malformed tensor in the pickle", got=type(storage).__name__,
                                      expected="a storage"))
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise WeightFileError(explain("malformed parameter in the pickle", got=type(data).__name__))
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
    """Unpickle ``file`` with :class:`SafeUnpickler`; truncated or foreign data raise WeightFileError."""
    try:
        return SafeUnpickler(file).load()
    except WeightFileError:  # UnsafePickleError included
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RuntimeError) as exc:
        raise WeightFileError(explain(f"{source}: truncated or not a network pickle",
                                      got=f"{type(exc).__name__}: {exc}"[:200],
                                      fix="Download the file again.")) from exc
