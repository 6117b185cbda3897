"""Statistics under torchrun, launched as a user would: two processes give one process's statistic.

The launcher is the ``torchrun`` beside the test interpreter (env:// rendezvous on this machine).
Each launch is bounded by a timeout; a hang (a rank waiting for a collective) fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import olam_edit as oe
from olam_edit.errors import RequestError
from olam_edit.memory import distributed
from olam_edit.memory.collect import _cache_path

_beside = Path(sys.executable).parent / "torchrun"
TORCHRUN = str(_beside) if _beside.exists() else shutil.which("torchrun")
LAUNCH_TIMEOUT = 300  # seconds for one two-process launch (about 15 s on two busy cores)

# Run inside each rank: record every file put in place (the atomic writer ends with os.replace),
# then run the command line. One command per launch: a process group is initialised once a process.
WRAPPER = """
import os, sys
log = open(sys.argv[1] + ".rank" + os.environ["RANK"] + ".txt", "w")
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    log.write(str(dst) + "\\n"); log.flush()
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
from olam_edit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    assert TORCHRUN, "torchrun is not installed beside the test interpreter"
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env |= {"OLAM_EDIT_CACHE": str(tmp_path / "default-cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [TORCHRUN, "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=LAUNCH_TIMEOUT)


def _one_process(layer: str, cache: Path) -> oe.SecondMoment:
    from olam_edit.adapters import load_default

    return load_default().stats(layer, samples=100, cache_dir=cache, progress=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_readme_launch_equals_one_process(tmp_path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = _launch(tmp_path, "-m", "olam_edit.cli", "stats", "--layer", "main.6", "--samples", "100",
                   "--cache-dir", str(cache), "--out", str(out / "c.st"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = _one_process("main.6", tmp_path / "ref-cache")
    got = oe.SecondMoment.load(out / "c.st")
    assert got.count == ref.count == 100 * 8 * 8
    assert _rel(got.sum, ref.sum) < 1e-12
    assert got.manifest["fingerprint"] == ref.manifest["fingerprint"]  # the world size is not part of it
    lines = proc.stdout.strip().splitlines()
    assert lines == [f"main.6: {ref.count} keys of dimension 256; fingerprint {ref.manifest['fingerprint'][:16]}",
                     f"wrote {out / 'c.st'}"]  # printed once, by rank 0
    assert [p.name for p in out.iterdir()] == ["c.st"]
    assert [p.name for p in cache.iterdir()] == [_cache_path(cache, "main.6", ref.manifest["fingerprint"]).name]
    # 100 samples in batches of 25 are 4 batches; rank 0's single progress bar counts its own 2
    bars = re.findall(r"collecting key statistics:\s+100%.*?(\d+)/(\d+)", proc.stderr)
    assert bars and set(bars) == {("2", "2")}


def test_only_rank_zero_writes_and_the_cache_is_shared(tmp_path) -> None:
    script, cache, out = tmp_path / "wrapper.py", tmp_path / "cache", tmp_path / "out"
    script.write_text(WRAPPER)
    runs = []
    for i in (1, 2):  # the first launch collects, the second is served from rank 0's cache
        runs.append(_launch(tmp_path, str(script), str(tmp_path / f"writes{i}"), "stats", "--layer", "main.3",
                            "--samples", "100", "--cache-dir", str(cache), "--out", str(out / f"{i}.st")))
        assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
    ref = _one_process("main.3", tmp_path / "ref-cache")
    cached = _cache_path(cache, "main.3", ref.manifest["fingerprint"])
    writes = {(i, r): (tmp_path / f"writes{i}.rank{r}.txt").read_text().splitlines() for i in (1, 2) for r in (0, 1)}
    assert writes == {(1, 0): [str(cached), str(out / "1.st")], (1, 1): [],  # rank 1 put no file anywhere
                      (2, 0): [str(out / "2.st")], (2, 1): []}
    first, second = oe.SecondMoment.load(out / "1.st"), oe.SecondMoment.load(out / "2.st")
    assert first.count == second.count == ref.count
    assert _rel(first.sum, ref.sum) < 1e-12 and torch.equal(first.sum, second.sum)
    assert "collecting key statistics" in runs[0].stderr and "collecting key statistics" not in runs[1].stderr
    assert [len(r.stdout.strip().splitlines()) for r in runs] == [2, 2]


def test_outside_a_launcher_nothing_changes(monkeypatch) -> None:
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with distributed.from_launcher():
        assert distributed.rank_and_world("cpu") == (0, 1)
        assert distributed.is_main_process() and not distributed.initialized()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: no group, no rendezvous
    with distributed.from_launcher():
        assert distributed.rank_and_world("cpu") == (0, 1) and not distributed.initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RequestError, match="WORLD_SIZE"):
        distributed.launched()


def test_a_partial_sum_of_another_world_size_is_not_resumed(tmp_path) -> None:
    from tiny_models import latents, tiny_dcgan

    model, z = tiny_dcgan(), latents(18, seed=7)  # [18, 8, 1, 1]
    batches = [z[i : i + 3] for i in range(0, 18, 3)]
    sampler = {"seed": 7, "count": 18}
    fp = oe.stats_fingerprint(model, "3", sampler, len(batches))
    h = oe.get_handle(model, "3")
    bogus = oe.SecondMoment(h.key_dim)  # what a rank of a two-process run had after 2 of its 3 batches
    bogus.save(_cache_path(tmp_path, "3", fp, ".rank0.partial"),
               {"fingerprint": fp, "layer": "3", "batches_done": 2, "world_size": 2})
    bogus.save(_cache_path(tmp_path, "3", fp, ".rank1.partial"),
               {"fingerprint": fp, "layer": "3", "batches_done": 2, "world_size": 2})
    got = oe.collect_stats(model, ["3"], batches, sampler=sampler, cache_dir=tmp_path, checkpoint_every=100,
                           progress=False)["3"]
    fresh = oe.collect_stats(model, ["3"], batches, progress=False)["3"]
    assert got.count == fresh.count and _rel(got.sum, fresh.sum) < 1e-12
    assert not list(tmp_path.glob("*.partial.safetensors"))  # stale partial sums are removed
