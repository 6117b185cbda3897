"""Statistics across processes: the env:// rendezvous of ``torchrun``, and rank 0 as the one writer.

A launcher of the env:// rendezvous (``torchrun``, single node or several) starts one process per
rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Contracts:

* :func:`launched` is True only when all of those are set and ``WORLD_SIZE`` > 1; outside a launcher
  (or with a world of one) nothing in this module does anything and every process is rank 0 of 1.
* :func:`init_from_env` initialises the default process group from those variables, with the gloo
  backend when the model is on the CPU and nccl when it is on CUDA (the process's CUDA device is then
  the model's, or ``cuda:LOCAL_RANK`` when the model's device has no index).
* Inside :func:`from_launcher` (the command line opens it around every command) the first statistics
  collection calls :func:`init_from_env` itself, and the group is destroyed when the block ends. A
  Python script launched by torchrun calls :func:`init_from_env` (or ``init_process_group``) itself:
  a library call never starts a rendezvous on its own, since the other ranks might never join it.
* :func:`is_main_process` names the one process that prints and writes files (rank 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from olam_edit.errors import RequestError, explain
from olam_edit.memory.stats import SecondMoment

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_state = {"auto": False, "owned": False}  # set only inside from_launcher(); no import-time effect


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise RequestError(explain(f"the launcher variable {name} is not a whole number", got=text,
                                   fix="Launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK.")) from None


def launched() -> bool:
    """True when a launcher set the env:// variables for a world of more than one process."""
    if not all(os.environ.get(name) for name in ENV_VARS):
        return False
    return _env_int("WORLD_SIZE") > 1


def initialized() -> bool:
    """True when a default process group exists (initialised here or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Initialise the default process group from the launcher's variables; True when this call did.

    A no-op (False) outside a launcher or when a group already exists. ``device`` is where the
    model lives: gloo for the CPU, nccl for CUDA.
    """
    if not launched() or initialized():
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index if dev.index is not None else _env_int("LOCAL_RANK"))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    _state["owned"] = True
    return True


def rank_and_world(device: torch.device | str | None = None) -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one.

    Inside :func:`from_launcher`, and given the model's ``device``, a launched process that has no
    group yet initialises it first.
    """
    if _state["auto"] and device is not None:
        init_from_env(device)
    if initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_rank() -> int:
    """This process's rank: the group's, else the launcher's ``RANK``, else 0."""
    if initialized():
        return dist.get_rank()
    return _env_int("RANK") if launched() else 0


def is_main_process() -> bool:
    """True on the process that prints and writes files: rank 0 of the group, or of the launch."""
    return process_rank() == 0


def barrier() -> None:
    """Wait until every rank of the group reaches this point; a no-op without a group."""
    if initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextmanager
def from_launcher() -> Iterator[None]:
    """Within the block, statistics collection under a launcher joins the env:// rendezvous itself.

    A group this module initialised is destroyed when the block ends (also on an error, so the other
    ranks fail fast instead of waiting for a collective that will not come). Open it once per
    process, as the command line does (one command per launch): a second group initialised in the
    same processes from the same launcher store was seen to fail to connect.
    """
    before = _state["auto"]
    _state["auto"] = True
    try:
        yield
    finally:
        _state["auto"] = before
        if _state["owned"] and initialized():
            dist.destroy_process_group()
        _state["owned"] = False


def share_from_main(found: dict[str, SecondMoment], blanks: dict[str, SecondMoment]) -> dict[str, SecondMoment]:
    """Rank 0's ``found`` statistics on every rank (the other ranks pass ``found`` empty).

    Rank 0 alone reads the cache, so every rank agrees on what is still to collect even where ranks
    do not share a file system. ``blanks`` holds an empty SecondMoment per requested layer (of the
    right dimension, on the model's device: the group's backend was chosen from that device, so its
    collectives take tensors there); the other ranks fill the ones rank 0 found. Returns ``found`` on
    rank 0 and the filled blanks elsewhere.
    """
    header: list[object] = [{name: (sm.count, sm.manifest) for name, sm in found.items()}]
    dist.broadcast_object_list(header, src=0)
    meta: dict[str, tuple[int, dict]] = header[0]  # type: ignore[assignment]
    main = dist.get_rank() == 0
    out: dict[str, SecondMoment] = {}
    for name in sorted(meta):
        sm = found[name] if main else blanks[name]
        buf = sm.sum.to(blanks[name].sum.device)  # [d, d] where the backend's collectives run
        dist.broadcast(buf, src=0)
        if not main:
            sm.sum.copy_(buf)
            sm.count, sm.manifest = meta[name]
        out[name] = sm
    return out
