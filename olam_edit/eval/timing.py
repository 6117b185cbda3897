"""Timing helpers the benchmarks share: a fixed thread count and the seconds of one call."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def threads(n: int = 1) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads (restored on exit): on shared cores both sides of a
    ratio on one thread each gives steadier numbers than letting them contend."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seconds(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
