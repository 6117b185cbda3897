"""ZeroGPU: the Space's GPU-bound work under ``spaces.GPU`` when the ``spaces`` package is importable.

On a ZeroGPU Space (the ``spaces`` package installed and ``SPACES_ZERO_GPU`` set, which Hugging Face
does for ``zero-a10g`` hardware) a function decorated with ``spaces.GPU`` runs in a GPU worker: a fork
of the app, given pickled copies of its arguments, whose result is pickled back. Anywhere else
``spaces.GPU`` returns the function unchanged, and without the package :func:`gpu` does the same.

So the Space sends only *pure* work there, by name: :func:`call` runs ``owner.method(*args)`` through
one decorated function, :func:`run_registered`, where ``owner`` is an object registered at start-up
(the worker, a fork, has its own copy of it). Such a method takes plain, picklable values and returns
its answer; it never relies on changing its arguments, which the worker only has copies of (the
Studio's solves, renders and heatmaps are written that way). Outside a Gradio event (building the
page, tests) and off ZeroGPU, :func:`call` is a plain method call.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
DURATION_S = 60  # seconds of GPU one call may hold (ZeroGPU's default)
_OWNERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # objects :func:`call` may send


def spaces_module() -> Any | None:
    """The ``spaces`` package, or None when it is not installed."""
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def gpu(fn: F) -> F:
    """``spaces.GPU(fn)`` when the ``spaces`` package is importable (itself a no-op off ZeroGPU), else ``fn``."""
    spaces = spaces_module()
    return fn if spaces is None else spaces.GPU(fn, duration=DURATION_S)


def enabled() -> bool:
    """Whether this process runs on ZeroGPU (``spaces`` importable and its ZeroGPU switch on)."""
    spaces = spaces_module()
    config = getattr(getattr(spaces, "config", None), "Config", None)
    return bool(getattr(config, "zero_gpu", False))


def register(owner: Any) -> Any:
    """Let :func:`call` run ``owner``'s methods on the GPU (register before the app serves); returns ``owner``."""
    _OWNERS[id(owner)] = owner
    return owner


@gpu
def run_registered(owner_id: int, method: str, args: tuple, kwargs: dict) -> Any:
    """``method`` of the registered object ``owner_id`` on ``args``: the one function ZeroGPU runs."""
    return getattr(_OWNERS[owner_id], method)(*args, **kwargs)


def in_event() -> bool:
    """Whether the caller is a Gradio event handler (ZeroGPU schedules GPU time per visitor's request)."""
    try:
        from gradio.context import LocalContext
    except ImportError:
        return False
    return LocalContext.event_id.get(None) is not None


def call(owner: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``owner.method(*args, **kwargs)``; on ZeroGPU, inside a Gradio event, in the GPU worker."""
    if id(owner) in _OWNERS and enabled() and in_event():
        return run_registered(id(owner), method, args, kwargs)
    return getattr(owner, method)(*args, **kwargs)
