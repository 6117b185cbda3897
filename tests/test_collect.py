"""collect_stats: hooks, early stop, caching by fingerprint, resume after a kill, torch.distributed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import latents, tiny_dcgan

import olam_edit as oe
from olam_edit.errors import LayerNotFoundError, RequestError

LAYERS = ["0", "3"]


def _reference(model, layer: str, batches) -> torch.Tensor:
    h = oe.get_handle(model, layer)
    keys = []
    with h.capture_input() as cap, torch.no_grad():
        for b in batches:
            model(b)
    keys = torch.cat([h.keys_of(x) for x in cap.inputs])
    return keys.double().T @ keys.double() / keys.shape[0]


def _batches(n: int = 12, bs: int = 4) -> list[torch.Tensor]:
    z = latents(n * bs)
    return [z[i * bs : (i + 1) * bs] for i in range(n)]


def test_collects_several_layers_in_one_pass() -> None:
    model, batches = tiny_dcgan(), _batches()
    stats = oe.collect_stats(model, LAYERS, batches, progress=False)
    for layer in LAYERS:
        ref = _reference(model, layer, batches)
        assert float((stats[layer].moment() - ref).norm() / ref.norm()) < 1e-12
    assert stats["3"].count == 12 * 4 * 4 * 4  # every pixel of every sample at 4x4


def test_forward_stops_after_last_requested_layer() -> None:
    model = tiny_dcgan()
    seen = []
    model[6].register_forward_pre_hook(lambda m, a: seen.append(1))
    oe.collect_stats(model, ["3"], _batches(2), progress=False)
    assert seen == []


def test_cache_reuses_and_is_keyed_by_model_and_sampler(tmp_path) -> None:
    model, batches = tiny_dcgan(), _batches()
    sampler = {"seed": 0, "count": 48}
    first = oe.collect_stats(model, ["3"], batches, sampler=sampler, cache_dir=tmp_path, progress=False)["3"]
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    calls = []
    model[3].register_forward_pre_hook(lambda m, a: calls.append(1))
    again = oe.collect_stats(model, ["3"], batches, sampler=sampler, cache_dir=tmp_path, progress=False)["3"]
    assert calls == [] and torch.equal(again.sum, first.sum)
    assert again.manifest["fingerprint"] == first.manifest["fingerprint"]
    other = oe.collect_stats(
        model, ["3"], batches, sampler={"seed": 1, "count": 48}, cache_dir=tmp_path, progress=False
    )["3"]
    assert other.manifest["fingerprint"] != first.manifest["fingerprint"] and len(calls) > 0
    with torch.no_grad():
        model[0].weight.add_(0.01)
    changed = oe.stats_fingerprint(model, "3", sampler, len(batches))
    assert changed != first.manifest["fingerprint"]


def test_bad_arguments() -> None:
    with pytest.raises(LayerNotFoundError, match="closest"):
        oe.collect_stats(tiny_dcgan(), ["33"], _batches(1), progress=False)
    with pytest.raises(RequestError, match="sampler"):
        oe.collect_stats(tiny_dcgan(), ["3"], _batches(1), cache_dir="/tmp/x", progress=False)


KILLER = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from tiny_models import latents, tiny_dcgan
    import olam_edit as oe
    model = tiny_dcgan()
    z = latents(48)
    batches = [z[i * 4:(i + 1) * 4] for i in range(12)]
    n = [0]
    def forward(m, b):
        n[0] += 1
        if n[0] == int(sys.argv[1]):
            os._exit(9)  # die hard, no cleanup, mid-run
        return m(b)
    oe.collect_stats(model, ["0", "3"], batches, forward=forward, sampler={{"seed": 0}}, cache_dir=sys.argv[2],
                     checkpoint_every=3, progress=False)
""")


def test_killed_run_resumes_from_checkpoint(tmp_path) -> None:
    script = tmp_path / "run.py"
    script.write_text(KILLER.format(tests=str(Path(__file__).parent)))
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, str(script), "8", str(cache)], capture_output=True)
    assert proc.returncode == 9
    partial = sorted(p.name for p in cache.glob("*.partial.safetensors"))
    assert len(partial) == 2
    model, batches = tiny_dcgan(), _batches()
    resumed_calls = []

    def forward(m, b):
        resumed_calls.append(1)
        return m(b)

    got = oe.collect_stats(
        model,
        ["0", "3"],
        batches,
        forward=forward,
        sampler={"seed": 0},
        cache_dir=cache,
        checkpoint_every=3,
        progress=False,
    )
    assert len(resumed_calls) == 12 - 6  # checkpoints at 3 and 6; the run died in batch 8
    fresh = oe.collect_stats(model, ["0", "3"], batches, progress=False)
    for layer in ("0", "3"):
        assert got[layer].count == fresh[layer].count
        assert float((got[layer].sum - fresh[layer].sum).norm() / fresh[layer].sum.norm()) < 1e-12
    assert not list(cache.glob("*.partial.safetensors"))


def _dist_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        stats = oe.collect_stats(tiny_dcgan(), ["3"], _batches(), progress=False)
        if rank == 0:
            torch.save({"sum": stats["3"].sum, "count": stats["3"].count}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path) -> None:
    out = str(tmp_path / "dist.pt")
    mp.spawn(_dist_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    ref = oe.collect_stats(tiny_dcgan(), ["3"], _batches(), progress=False)["3"]
    assert got["count"] == ref.count
    assert float((got["sum"] - ref.sum).norm() / ref.sum.norm()) < 1e-12
