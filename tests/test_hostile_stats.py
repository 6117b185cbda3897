"""Issue 13, statistics: every damaged statistics file or cache entry is refused or recomputed, never used.

Each reproduction of the issue is one named test: a flipped bit in the sum, ``count`` edited to 0 or
-5, an asymmetric, zeroed or NaN sum, a flipped bit in a partial checkpoint, a truncated cache entry,
and a manifest that breaks the schema.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import latents, tiny_dcgan

import olam_edit as oe
from olam_edit.cli import main
from olam_edit.errors import StatsFileError
from olam_edit.memory.collect import CorruptCacheWarning
from olam_edit.memory.stats import SYMMETRY_TOL, stats_digest

SAMPLER = {"seed": 3, "count": 32}


def _stat(d: int = 6, n: int = 50, seed: int = 11) -> oe.SecondMoment:
    g = torch.Generator().manual_seed(seed)
    return oe.SecondMoment(d).add(torch.randn(n, d, generator=g, dtype=torch.float64))  # keys [n, d]


def _offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of each tensor's data in a safetensors file (read from its header)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def _patch(path: Path, name: str, offset: int, new: bytes) -> None:
    """Overwrite bytes of tensor ``name`` at ``offset`` within its data (the header is kept)."""
    start, end = _offsets(path)[name]
    assert start + offset + len(new) <= end
    raw = bytearray(path.read_bytes())
    raw[start + offset : start + offset + len(new)] = new
    path.write_bytes(bytes(raw))


def _resave(path: Path, S: torch.Tensor, count: int | None = None) -> None:
    """Rewrite ``path`` with another sum (and count), keeping its manifest (and so its digest)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["sum"] = S.contiguous()
    if count is not None:
        tensors["count"] = torch.tensor([count], dtype=torch.int64)
    save_file(tensors, str(path), metadata=meta)


def _refused(path: Path, match: str) -> StatsFileError:
    with pytest.raises(StatsFileError, match=match) as caught:
        oe.SecondMoment.load(path)
    e = caught.value
    assert e.got is not None and e.expected is not None and e.fix
    return e


def test_a_saved_statistic_carries_the_digest_of_its_sum_and_count(tmp_path: Path) -> None:
    sm = _stat()
    sm.save(tmp_path / "c.safetensors", {"fingerprint": "f"})
    back = oe.SecondMoment.load(tmp_path / "c.safetensors", expect_fingerprint="f")
    assert back.manifest["digest"] == stats_digest(sm.sum, sm.count) != stats_digest(sm.sum, sm.count + 1)
    assert torch.equal(back.sum, sm.sum) and back.count == sm.count


def test_flipped_bit_in_sum_is_refused(tmp_path: Path) -> None:
    path = _stat().save(tmp_path / "c.safetensors")
    d = 6
    # the lowest mantissa bit of a diagonal entry: the sum stays finite and symmetric, only the digest sees it
    byte = (2 * d + 2) * 8
    raw = bytearray(path.read_bytes())
    start = _offsets(path)["sum"][0]
    raw[start + byte] ^= 1
    path.write_bytes(bytes(raw))
    _refused(path, "does not match its digest")


@pytest.mark.parametrize("count", [0, -5])
def test_count_edited_to_zero_or_negative_is_refused(tmp_path: Path, count: int) -> None:
    path = _stat().save(tmp_path / "c.safetensors")
    _patch(path, "count", 0, struct.pack("<q", count))
    e = _refused(path, "count is not positive")
    assert e.got == count


def test_asymmetric_sum_is_refused(tmp_path: Path) -> None:
    sm = _stat()
    path = sm.save(tmp_path / "c.safetensors")
    S = sm.sum.clone()
    S[0, 1] += 1e-3 * float(S.abs().max())  # far beyond round-off, not matched at [1, 0]
    _resave(path, S)
    _refused(path, "not symmetric")


def test_symmetry_tolerance_accepts_blas_round_off(tmp_path: Path) -> None:
    sm = _stat()
    sm.sum[0, 1] += 0.1 * SYMMETRY_TOL * float(sm.sum.abs().max())  # round-off of a sum added in another order
    sm.save(tmp_path / "c.safetensors")
    assert oe.SecondMoment.load(tmp_path / "c.safetensors").count == sm.count


def test_zeroed_sum_is_refused(tmp_path: Path) -> None:
    path = _stat().save(tmp_path / "c.safetensors")
    _resave(path, torch.zeros(6, 6, dtype=torch.float64))
    _refused(path, "sum is zero")


def test_nan_in_sum_is_refused(tmp_path: Path) -> None:
    sm = _stat()
    path = sm.save(tmp_path / "c.safetensors")
    S = sm.sum.clone()
    S[2, 3] = S[3, 2] = float("nan")
    _resave(path, S)
    e = _refused(path, "NaN or Inf")
    assert "2 non-finite" in str(e.got)


@pytest.mark.parametrize(("change", "match"), [
    ({"dim": "6"}, r"dim is not valid"),
    ({"dim": 7}, "inconsistent"),
    ({"digest": None}, r"digest is not valid"),
    ({"digest": "xyz"}, r"digest is not valid"),
    ({"schema_version": 1}, "older olam-edit without a content digest"),
    ({"schema_version": 99}, "schema is newer"),
    ({"batches_done": -1}, r"batches_done is not valid"),
    ({"world_size": 0}, r"world_size is not valid"),
    ({"fingerprint": 5}, r"fingerprint is not valid"),
])
def test_manifest_schema_is_checked_in_one_place(tmp_path: Path, change: dict, match: str) -> None:
    sm = _stat()
    path = sm.save(tmp_path / "c.safetensors", {"fingerprint": "f"})
    meta = {**sm.manifest, **change}
    save_file(load_file(str(path)), str(path), metadata={"olam_edit_stats": json.dumps(meta)})
    _refused(path, match)


def test_manifest_that_is_not_json_or_too_deep_is_refused(tmp_path: Path) -> None:
    path = _stat().save(tmp_path / "c.safetensors")
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"olam_edit_stats": "[" * 5000 + "]" * 5000})
    _refused(path, "nests too deeply")
    save_file(tensors, str(path), metadata={"olam_edit_stats": "{not json"})
    with pytest.raises(StatsFileError, match="not valid JSON"):
        oe.SecondMoment.load(path)


def test_extra_or_mistyped_tensors_are_refused_before_reading(tmp_path: Path) -> None:
    sm = _stat()
    path = sm.save(tmp_path / "c.safetensors")
    meta = {"olam_edit_stats": json.dumps(sm.manifest)}
    save_file({"sum": sm.sum.float(), "count": torch.tensor([sm.count])}, str(path), metadata=meta)
    _refused(path, "inconsistent")
    save_file({"sum": sm.sum, "count": torch.tensor([sm.count]), "extra": torch.zeros(10)}, str(path), metadata=meta)
    _refused(path, "inconsistent")


def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    os.mkfifo(path)
    with pytest.raises(StatsFileError, match="not a regular file"):
        oe.SecondMoment.load(path)


# ------------------------------------------------------------------------------- the statistics cache
def _batches(n: int = 8, bs: int = 4) -> list[torch.Tensor]:
    z = latents(n * bs)  # [n * bs, nz, 1, 1]
    return [z[i * bs : (i + 1) * bs] for i in range(n)]


def _collect(model: torch.nn.Module, cache: Path, **kw: object) -> oe.SecondMoment:
    return oe.collect_stats(model, ["3"], _batches(), sampler=SAMPLER, cache_dir=cache, progress=False, **kw)["3"]


def _cache_entry(cache: Path) -> Path:
    (path,) = [p for p in cache.glob("*.safetensors") if ".partial" not in p.name]
    return path


@pytest.mark.parametrize("damage", ["flip", "truncate", "count"])
def test_corrupt_cache_entry_is_moved_aside_and_recomputed(tmp_path: Path, damage: str) -> None:
    model = tiny_dcgan()
    good = _collect(model, tmp_path)
    path = _cache_entry(tmp_path)
    if damage == "flip":
        start, _ = _offsets(path)["sum"]
        raw = bytearray(path.read_bytes())
        raw[start + 3] ^= 0x10
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        _patch(path, "count", 0, struct.pack("<q", -5))
    with pytest.warns(CorruptCacheWarning, match="moved it to"):
        again = _collect(model, tmp_path)
    assert torch.equal(again.sum, good.sum) and again.count == good.count
    aside = list(tmp_path.glob(f"{path.name}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() != path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheWarning)
        assert torch.equal(_collect(model, tmp_path).sum, good.sum)  # the recomputed entry is used as is


class _Killed(Exception):
    """Stands for a run killed mid-way."""


def test_flipped_bit_in_partial_checkpoint_is_not_resumed(tmp_path: Path) -> None:
    model, fresh_cache = tiny_dcgan(), tmp_path / "fresh"
    reference = _collect(model, fresh_cache)
    cache, calls = tmp_path / "killed", []

    def dies_after_five(m: torch.nn.Module, batch: torch.Tensor) -> None:
        calls.append(1)
        if len(calls) > 5:
            raise _Killed
        m(batch)

    with pytest.raises(_Killed):
        _collect(model, cache, forward=dies_after_five, checkpoint_every=2)
    (partial,) = cache.glob("*.partial.safetensors")
    assert json.loads(load_file_meta(partial))["batches_done"] == 4
    start, _ = _offsets(partial)["sum"]
    raw = bytearray(partial.read_bytes())
    raw[start + 8 * 7 + 5] ^= 0x04  # a bit of [1, 1]: finite and symmetric, a C off by far more than round-off
    partial.write_bytes(bytes(raw))
    with pytest.warns(CorruptCacheWarning, match="partial"):
        resumed = _collect(model, cache, checkpoint_every=2)
    assert torch.equal(resumed.sum, reference.sum) and resumed.count == reference.count
    assert len(list(cache.glob("*.partial.safetensors.corrupt-*"))) == 1


def test_partial_checkpoint_claiming_more_batches_than_exist_starts_over(tmp_path: Path) -> None:
    model = tiny_dcgan()
    reference = _collect(model, tmp_path / "fresh")
    cache = tmp_path / "c"
    cache.mkdir()
    name = _cache_entry(tmp_path / "fresh").name.replace(".safetensors", ".rank0.partial.safetensors")
    meta = {"fingerprint": reference.manifest["fingerprint"], "layer": "3", "batches_done": 10**6, "world_size": 1}
    reference.save(cache / name, meta)
    resumed = _collect(model, cache)
    assert torch.equal(resumed.sum, reference.sum) and resumed.count == reference.count


def load_file_meta(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["olam_edit_stats"]


def test_stats_cli_recomputes_a_cache_entry_edited_to_minus_five_keys(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = ["stats", "--layer", "main.0", "--samples", "4", "--batch-size", "2", "--cache-dir", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    (path,) = tmp_path.rglob("*.safetensors")
    _patch(path, "count", 0, struct.pack("<q", -5))
    with pytest.warns(CorruptCacheWarning):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "-5 keys" not in out and out == first  # the same statistic, recollected
    assert len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1
