"""Fingerprints: sha256 of tensor bytes, of canonical JSON and of a whole model.

:func:`cached_fingerprint` remembers a tensor's fingerprint while the tensor object lives and its
storage address, layout, autograd version counter and a sample of its values are unchanged, so
solving several edits on one unchanged model hashes each base weight once. Every in-place op on
the tensor (``copy_``, ``add_``, an optimizer step, ``load_state_dict``) bumps the version counter
and replacing a parameter makes a new object, so both re-hash. Writes that bypass the counter
(through ``.data`` or a NumPy view) are caught by an exact integer checksum of every element's bits
(their sum, and the sum over odd positions): any single changed element changes it. On the CPU a
cache hit costs about as much as hashing; on a GPU it saves copying every weight to the host (the
sums run on the device and two integers come back). Checks that must be exact against a crafted tensor
(:func:`olam_edit.edit.apply.check_base`) still use :func:`tensor_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

import torch
from torch import Tensor

PROBE_VALUES = 64  # elements of a tensor compared on each cache hit
_CACHE: dict[int, tuple[weakref.ref[Tensor], tuple[Any, ...], str]] = {}


def tensor_fingerprint(t: Tensor) -> str:
    """sha256 over dtype, shape and the raw bytes of ``t`` (device independent)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    data = t.detach().cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    h.update(data.numpy().data)  # the (C-contiguous) bytes, without a copy
    return h.hexdigest()


def _state(t: Tensor) -> tuple[Any, ...]:
    """What a cache hit must find unchanged: storage, layout, version counter and sampled values."""
    flat = t.detach().reshape(-1)  # [numel]
    idx = torch.linspace(0, max(flat.numel() - 1, 0), min(PROBE_VALUES, flat.numel())).long().to(flat.device)
    sample = flat[idx].cpu()
    if sample.dtype == torch.bfloat16:
        sample = sample.view(torch.int16)
    return (t.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, str(t.device),
            t._version, sample.numpy().tobytes(), *_checksum(flat))


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(flat: Tensor) -> tuple[int, int]:
    """Exact integer sums of the elements' bit patterns (all, and odd positions): a write to any one
    element changes the first."""
    bits = flat.contiguous().view(_INT_OF_SIZE[flat.element_size()])  # [numel] same bytes as integers
    return int(bits.sum()), int(bits[1::2].sum())  # integer sums accumulate in int64


def cached_fingerprint(t: Tensor) -> str:
    """:func:`tensor_fingerprint` of ``t``, hashed again only when ``t`` may have changed (see the module
    docstring for what is watched)."""
    key, state = id(t), _state(t)
    entry = _CACHE.get(key)
    if entry is not None and entry[0]() is t and entry[1] == state:
        return entry[2]
    digest = tensor_fingerprint(t)

    def forget(ref: weakref.ref[Tensor], key: int = key) -> None:
        if key in _CACHE and _CACHE[key][0] is ref:
            del _CACHE[key]
    _CACHE[key] = (weakref.ref(t, forget), state, digest)
    return digest


def json_fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of ``model`` (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_fingerprint(t).encode())
    return h.hexdigest()
