"""Fingerprints: sha256 of tensor bytes, of canonical JSON and of a whole model."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import Tensor


def tensor_fingerprint(t: Tensor) -> str:
    """sha256 over dtype, shape and the raw bytes of ``t`` (device independent)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    data = t.detach().cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    h.update(data.numpy().tobytes())
    return h.hexdigest()


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
