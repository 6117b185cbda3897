"""Bounds and refusals shared by the StyleGAN2 checkpoint readers.

Every size a checkpoint states is checked against the bytes it really holds and against the bounds
below before any memory is reserved for it; every tensor view must stay inside its storage; values
read from a file appear in error messages only through :func:`summary` (never their ``repr``).

The bounds are module constants, read at each call: a user with a larger network of their own may
raise them (``olam_edit.adapters.stylegan2.safety.MAX_STORAGE_BYTES = ...``).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from olam_edit.errors import UnsafePickleError, WeightFileError, explain

# The largest single tensor of any StyleGAN2 network is the 1024px config-f discriminator's
# 8192 x 512 float32 fully-connected weight, 16 MiB (the generator's largest, a 512 x 512 x 3 x 3
# convolution, is 9 MiB). 256 MiB per storage leaves 16x headroom.
MAX_STORAGE_BYTES = 256 * 2**20

# The largest real checkpoints: a rosinality train.py file of config-f at 1024px (g, d, g_ema and
# both Adam states: about 207 M float32 values, 0.83 GB) and NVlabs' 1024px pickles (G, D, G_ema:
# about 0.36 GB). 2 GiB of tensor data per file is 2.4x the former.
MAX_TOTAL_STORAGE_BYTES = 2 * 2**30

# StyleGAN2 tensors have at most 5 dimensions (rosinality's [1, out, in, k, k] convolutions).
MAX_TENSOR_DIMS = 16

_TEXT_LIMIT = 60


class TensorFlowPickleError(UnsafePickleError):
    """A TensorFlow-era StyleGAN / StyleGAN2 pickle (``dnnlib.tflib.network.Network``): it would need
    TensorFlow and runs its own code; NVlabs' ``legacy.py`` converts it to a PyTorch pickle."""


def is_tensorflow_module(module: str) -> bool:
    """Whether a pickle's global lives in NVlabs' TensorFlow library (``dnnlib.tflib``)."""
    return module == "dnnlib.tflib" or module.startswith("dnnlib.tflib.")


def tensorflow_pickle_error(source: str, module: str, name: str) -> TensorFlowPickleError:
    """The error for a pickle that names ``dnnlib.tflib.*`` (seen in its class reference; nothing ran)."""
    return TensorFlowPickleError(explain(
        f"{source}: a TensorFlow-era StyleGAN2 pickle (it holds {clip(module)}.{clip(name)} objects)",
        expected="a PyTorch network pickle (stylegan2-ada-pytorch / stylegan3) or a rosinality .pt",
        fix="Convert it with NVlabs' stylegan2-ada-pytorch: `python legacy.py --source=old.pkl "
            "--dest=new.pkl`, then load new.pkl. Nothing was run."))


def clip(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks a cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def summary(obj: Any) -> str:
    """A short, bounded description of a value read from a file; never calls its ``repr`` or ``str``.

    Plain strings (cut), small integers, floats, booleans and None are shown; anything else by its
    type name and size.
    """
    kind = type(obj)
    if kind is str:
        return repr(obj[:_TEXT_LIMIT]) + ("..." if len(obj) > _TEXT_LIMIT else "")
    if kind is int:
        return str(obj) if abs(obj) < 10**18 else f"an integer of {obj.bit_length()} bits"
    if kind in (bool, float, type(None)):
        return repr(obj)
    if kind in (bytes, bytearray):
        return f"{kind.__name__} of {len(obj)} bytes"
    if isinstance(obj, dict | list | tuple | set | frozenset):
        return f"{kind.__name__} of {len(obj)} items"
    if isinstance(obj, torch.Tensor):
        return f"a {obj.ndim}-d {str(obj.dtype).removeprefix('torch.')} tensor"
    return f"a {kind.__name__}"


def describe_keys(mapping: dict, limit: int = 6) -> str:
    """``dict with keys a, b, ... (+n more)``: string keys sorted and cut, other keys by :func:`summary`."""
    names = sorted(clip(k, 40) for k in mapping if type(k) is str)
    names += [summary(k) for k in mapping if type(k) is not str][:limit]
    head = ", ".join(names[:limit]) or "none"
    more = len(mapping) - min(len(names), limit)
    return f"dict with keys {head}" + (f" ... (+{more} more)" if more > 0 else "")


def exception_text(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` when the message is plain text, else the type name alone
    (a ``KeyError`` holding a file's object is never formatted)."""
    first = exc.args[0] if exc.args else None
    if type(first) is not str or not first.strip():
        return type(exc).__name__
    line = first[: limit * 2].strip().splitlines()[0]
    return f"{type(exc).__name__}: {clip(line, limit)}"


def check_storage_bytes(nbytes: int, *, used: int, available: int | None, source: str) -> None:
    """Refuse a storage of ``nbytes`` before it is allocated: beyond :data:`MAX_STORAGE_BYTES`, beyond
    :data:`MAX_TOTAL_STORAGE_BYTES` together with the ``used`` bytes already loaded, or larger than the
    ``available`` bytes the file still holds (None: not known, the reader checks it itself)."""
    fix = "The file is damaged or was crafted; nothing was allocated."
    if nbytes > MAX_STORAGE_BYTES:
        raise WeightFileError(explain(
            f"{source}: a tensor storage is larger than the loader's bound", got=f"{summary(nbytes)} bytes",
            expected=f"at most MAX_STORAGE_BYTES = {MAX_STORAGE_BYTES} bytes (16x the largest StyleGAN2 "
                     "tensor)", fix=fix))
    if used + nbytes > MAX_TOTAL_STORAGE_BYTES:
        raise WeightFileError(explain(
            f"{source}: the checkpoint's tensors are larger than the loader's bound",
            got=f"over {summary(used + nbytes)} bytes",
            expected=f"at most MAX_TOTAL_STORAGE_BYTES = {MAX_TOTAL_STORAGE_BYTES} bytes", fix=fix))
    if available is not None and nbytes > available:
        raise WeightFileError(explain(
            f"{source}: a tensor storage claims more bytes than the file holds",
            got=f"{summary(nbytes)} bytes claimed", expected=f"at most the {available} bytes left", fix=fix))


def check_view(storage_numel: int, offset: Any, size: Any, stride: Any, *, source: str
               ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Validate a tensor view ``(offset, size, stride)`` of a storage of ``storage_numel`` elements.

    Every element must lie inside the storage, and the view may not have more elements than the
    storage holds from ``offset`` on (a stride-0 expansion or an overlap that would turn a small file
    into a large model). Returns the view as plain ints; WeightFileError otherwise.
    """
    shaped = type(size) in (tuple, list) and type(stride) in (tuple, list) and len(size) == len(stride)
    values = [offset, *size, *stride] if shaped and len(size) <= MAX_TENSOR_DIMS else None
    if values is None or not all(type(v) is int and v >= 0 for v in values):
        raise WeightFileError(explain(
            f"{source}: malformed tensor view", got=f"size {summary(size)}, stride {summary(stride)}, "
            f"offset {summary(offset)}", expected=f"non-negative integers, at most {MAX_TENSOR_DIMS} dims"))
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else offset - 1
    if last >= storage_numel or offset > storage_numel:
        raise WeightFileError(explain(
            f"{source}: a tensor reaches past the end of its storage", got=f"element {summary(last)}",
            expected=f"fewer than the storage's {storage_numel} elements",
            fix="The file is damaged or was crafted; nothing was allocated."))
    if numel > storage_numel - offset:
        raise WeightFileError(explain(
            f"{source}: a tensor repeats elements of its storage (a stride-0 or overlapping view)",
            got=f"{summary(numel)} elements from a storage of {storage_numel}",
            expected="at most as many elements as the storage holds",
            fix="Save contiguous tensors (tensor.contiguous() / .clone()); nothing was expanded."))
    return offset, tuple(size), tuple(stride)


def check_loaded_tensors(obj: Any, *, source: str) -> None:
    """Every tensor inside a loaded checkpoint (dicts, lists, tuples, argparse Namespaces) is a dense
    CPU tensor whose view passes :func:`check_view` against its own storage; WeightFileError otherwise."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            _check_tensor(item, source)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, argparse.Namespace):
            stack.extend(vars(item).values())


def _check_tensor(tensor: torch.Tensor, source: str) -> None:
    """One loaded tensor: strided, on the CPU, its view inside its storage."""
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise WeightFileError(explain(f"{source}: a tensor that is not a dense CPU tensor",
                                      got=f"{tensor.layout} on {tensor.device.type}", expected="torch.strided"))
    storage_numel = tensor.untyped_storage().nbytes() // tensor.element_size()
    check_view(storage_numel, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
               source=source)
