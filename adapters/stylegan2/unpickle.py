"""A restricted unpickler for NVlabs pickles: rebuilds tensors and containers, never runs the pickle's code."""

from __future__ import annotations

import collections
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch

from olam_edit.adapters.stylegan2.opscan import scan_pickle
from olam_edit.adapters.stylegan2.rosinality import _describe
from olam_edit.adapters.stylegan2.safety import (
    check_view,
    clip,
    describe_keys,
    exception_text,
    is_tensorflow_module,
    summary,
    tensorflow_pickle_error,
)
from olam_edit.adapters.stylegan2.torchsave import LoadedStorage, load_storage_blob
from olam_edit.errors import OlamEditError, UnsafePickleError, WeightFileError, explain

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
        """Own parameters and buffers (``None`` entries and entries that are not tensors skipped)."""
        found = {**self._mapping("_parameters"), **self._mapping("_buffers")}
        return {k: v for k, v in found.items() if type(k) is str and isinstance(v, torch.Tensor)}

    def child(self, name: str) -> PersistentRecord:
        """Sub-module ``name``; WeightFileError when it is missing or not a record."""
        child = self._mapping("_modules").get(name)
        if not isinstance(child, PersistentRecord):
            raise WeightFileError(explain(f"{self.class_name} has no sub-network {name!r}",
                                          got=describe_keys(self._mapping("_modules"))))
        return child

    def has_child(self, name: str) -> bool:
        """Whether sub-module ``name`` exists."""
        return isinstance(self._mapping("_modules").get(name), PersistentRecord)

    def _mapping(self, key: str) -> dict:
        """``state[key]`` when it is a dict, else an empty one."""
        found = self.state.get(key)
        return found if isinstance(found, dict) else {}


def _reconstruct_record(meta: Any) -> PersistentRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keep data, run nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise WeightFileError(explain("malformed torch_utils.persistence record", got=_describe(meta)))
    name = meta.get("class_name")
    if type(name) is not str or name not in ALLOWED_PERSISTENT_CLASSES:
        raise UnsafePickleError(explain(f"the pickle holds a persistent object of class {summary(name)}",
                                        expected=f"one of {sorted(ALLOWED_PERSISTENT_CLASSES)}",
                                        fix="Only NVlabs StyleGAN2/3 pickles are read; nothing was run."))
    return PersistentRecord(class_name=name, state=dict(meta["state"]))


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
            raise UnsafePickleError(explain("the pickle asks for a non-numeric numpy dtype", got=summary(code)))
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
        raise UnsafePickleError(explain("the pickle reconstructs a numpy subclass", got=summary(cls)))
    return _NDArray()


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` (how protocol-2 pickles store bytes)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise UnsafePickleError(explain("unexpected _codecs.encode call in the pickle", got=summary(encoding)))
    return text.encode(encoding)


def _safe_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    """Every global a StyleGAN pickle may name, mapped to our own harmless stand-ins."""
    table: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
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

    ``find_class`` answers only from a fixed table of our own stand-ins (containers, numeric numpy
    values, persistence records as :class:`PersistentRecord`) and two methods of its own: tensor
    storages are read by :func:`~olam_edit.adapters.stylegan2.torchsave.load_storage_blob` (every size
    checked against the bytes present and the bounds of :mod:`~olam_edit.adapters.stylegan2.safety`
    before it is allocated) and tensors are views that must lie inside their storage. Any other
    global raises UnsafePickleError naming it; a ``dnnlib.tflib`` global (a TensorFlow-era pickle)
    raises TensorFlowPickleError, which names NVlabs' converter. ``source`` names the file in errors.
    """

    _table = _safe_globals()

    def __init__(self, file: BinaryIO, *, source: str = "pickle") -> None:
        super().__init__(file)
        self.source = source
        self._storage_bytes = 0
        self._own = {("torch.storage", "_load_from_bytes"): self._load_storage,
                     ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor}

    def find_class(self, module: str, name: str) -> Any:
        found = self._own.get((module, name)) or self._table.get((module, name))
        if found is None and is_tensorflow_module(module):
            raise tensorflow_pickle_error(self.source, module, name)
        if found is None:
            raise UnsafePickleError(explain(
                f"{self.source}: the pickle asks to import {clip(module)}.{clip(name)}",
                expected="tensors, containers and NVlabs persistence records",
                fix="This is not a plain StyleGAN network pickle; nothing was run."))
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(explain(f"{self.source}: the pickle uses persistent ids", got=summary(pid),
                                        fix="Save PyTorch files with torch.save and load them as .pt."))

    def _load_storage(self, data: Any) -> LoadedStorage:
        """Stand-in for ``torch.storage._load_from_bytes``: one legacy ``torch.save`` storage, bounded."""
        storage = load_storage_blob(data, used=self._storage_bytes, source=self.source)
        self._storage_bytes += storage.flat.numel() * storage.flat.element_size()
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
        """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view inside an already loaded storage."""
        if not isinstance(storage, LoadedStorage):
            raise WeightFileError(explain(f"{self.source}: malformed tensor", got=summary(storage),
                                          expected="a storage"))
        offset, size, stride = check_view(storage.flat.numel(), offset, size, stride, source=self.source)
        return storage.flat.as_strided(size, stride, offset)


def safe_unpickle(file: BinaryIO, *, source: str = "pickle") -> Any:
    """Unpickle ``file`` with :class:`SafeUnpickler` after :func:`~olam_edit.adapters.stylegan2.opscan.scan_pickle`
    checked its opcodes within bounds (UnsafePickleError otherwise); truncated or foreign data raise
    WeightFileError."""
    try:
        start = file.tell()
        scan_pickle(file, source=source)  # memo, payload, nesting and sharing bounds, before unpickling
        file.seek(start)
        return SafeUnpickler(file, source=source).load()
    except OlamEditError:  # WeightFileError, UnsafePickleError, TensorFlowPickleError
        raise
    except MemoryError as exc:
        raise WeightFileError(explain(f"{source}: a size stated in the pickle does not fit in memory",
                                      fix="The file is damaged or was crafted.")) from exc
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RuntimeError, OverflowError, RecursionError) as exc:
        raise WeightFileError(explain(f"{source}: truncated or not a network pickle",
                                      got=exception_text(exc), fix="Download the file again.")) from exc
