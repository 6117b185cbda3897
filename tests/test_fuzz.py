"""Property-based fuzzing of every loader of untrusted input (hypothesis, bounded).

Each target gets inputs derived from a valid file (bit flips, truncations, JSON values swapped for
arbitrary ones) and from scratch. The only acceptable outcomes are a valid object or a project
error (:class:`~olam_edit.errors.OlamEditError`); anything else (KeyError, TypeError, MemoryError,
RecursionError, a hang) fails. Each target's peak Python allocation stays under MEMORY_CAP.

The example counts are set so the whole file runs in a couple of minutes on 2 cores; the case counts
each target tried are printed (pytest -s) and recorded in the closing notes.
"""

from __future__ import annotations

import io
import json
import pickle
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import olam_edit as oe
from olam_edit.errors import OlamEditError

MEMORY_CAP = 300 * 1024 * 1024  # bytes of peak Python allocation one case may take
FAST = settings(max_examples=500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=12)


def only_valid_or_project_error(load: Callable[[], Any]) -> None:
    """Run ``load``: it returns, or raises an OlamEditError; within the memory cap either way."""
    tracemalloc.start()
    try:
        load()
    except OlamEditError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_CAP, f"peak allocation {peak / 2**20:.0f} MB"


def _mutate_json(obj: Any, path: list[Any], value: Any) -> Any:
    """``obj`` with the entry reached by following ``path`` (indices modulo sizes) replaced by ``value``."""
    if not path or not isinstance(obj, dict | list) or not obj:
        return value
    keys = sorted(obj) if isinstance(obj, dict) else list(range(len(obj)))
    key = keys[path[0] % len(keys)]
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[key] = _mutate_json(obj[key], path[1:], value)
    return copy


# -------------------------------------------------------------------------------------------- edits
@pytest.fixture(scope="module")
def edit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    D = torch.linalg.qr(torch.randn(6, 2, generator=torch.Generator().manual_seed(3)))[0].T  # [2, 6] orthonormal
    edit = oe.Edit.create(model, {"0": oe.Delta(torch.randn(4, 2), D.contiguous(), "linear")}, base_model="a/b")
    return edit.save(tmp_path_factory.mktemp("edit") / "e")


@FAST
@given(flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4), cut=st.integers(min_value=0) | st.none())
def test_edit_loader_on_damaged_weights(edit_folder: Path, tmp_path: Path, flips: list[int], cut: int | None) -> None:
    data = bytearray((edit_folder / "edit.safetensors").read_bytes())
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    folder = tmp_path / "e"
    folder.mkdir(exist_ok=True)
    (folder / "edit.safetensors").write_bytes(bytes(data[: cut % len(data)] if cut is not None else data))
    (folder / "edit_config.json").write_bytes((edit_folder / "edit_config.json").read_bytes())
    only_valid_or_project_error(lambda: oe.Edit.load(folder))


@FAST
@given(path=st.lists(st.integers(min_value=0), max_size=5), value=json_values)
def test_edit_loader_on_altered_manifests(edit_folder: Path, tmp_path: Path, path: list[int], value: Any) -> None:
    from safetensors.torch import load_file, save_file

    config = json.loads((edit_folder / "edit_config.json").read_text())
    altered = _mutate_json(config, path, value)
    folder = tmp_path / "e"
    folder.mkdir(exist_ok=True)
    text = json.dumps(altered)
    save_file(load_file(edit_folder / "edit.safetensors"), folder / "edit.safetensors", metadata={"olam_edit": text})
    (folder / "edit_config.json").write_text(text)
    only_valid_or_project_error(lambda: oe.Edit.load(folder))


# --------------------------------------------------------------------------------------- statistics
@pytest.fixture(scope="module")
def stats_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sm = oe.SecondMoment(5)
    sm.add(torch.randn(40, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    return sm.save(tmp_path_factory.mktemp("stats") / "c.safetensors")


@FAST
@given(flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4), cut=st.integers(min_value=0) | st.none())
def test_stats_loader_on_damaged_files(stats_file: Path, tmp_path: Path, flips: list[int], cut: int | None) -> None:
    data = bytearray(stats_file.read_bytes())
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    target = tmp_path / "c.safetensors"
    target.write_bytes(bytes(data[: cut % len(data)] if cut is not None else data))

    def load() -> None:
        sm = oe.SecondMoment.load(target)
        C = sm.moment()  # [d, d]: whatever loads must be a usable, finite, symmetric statistic
        assert sm.count > 0 and bool(torch.isfinite(C).all()) and torch.allclose(C, C.T, atol=1e-9)

    only_valid_or_project_error(load)


# ----------------------------------------------------------------------------------------- requests
def _valid_request() -> dict[str, Any]:
    eyes = np.zeros((16, 16))
    eyes[4:8, 2:14] = 1
    sel = oe.Selection(4, eyes)
    return oe.EditRequest(layer="main.6", copy=sel, paste=oe.Selection(1, eyes), context=[sel]).to_json()


@FAST
@given(path=st.lists(st.integers(min_value=0), max_size=5), value=json_values)
def test_request_parser_on_altered_requests(path: list[int], value: Any) -> None:
    altered = _mutate_json(_valid_request(), path, value)
    only_valid_or_project_error(lambda: oe.EditRequest.from_json(altered))


@FAST
@given(value=json_values)
def test_request_parser_on_arbitrary_json(value: Any) -> None:
    only_valid_or_project_error(lambda: oe.EditRequest.from_json(value))


# ------------------------------------------------------------------------------------ safe unpickler
def _valid_pickle() -> bytes:
    state = {"mapping.w_avg": torch.zeros(4), "synthesis.b4.const": torch.ones(2, 4, 4)}
    return pickle.dumps({"G_ema": state, "training_set_kwargs": {"resolution": 4}}, protocol=4)


@FAST
@given(flips=st.lists(st.integers(min_value=0), min_size=1, max_size=6), cut=st.integers(min_value=0) | st.none())
def test_safe_unpickler_on_damaged_pickles(flips: list[int], cut: int | None) -> None:
    from olam_edit.adapters.stylegan2.unpickle import safe_unpickle

    data = bytearray(_valid_pickle())
    for f in flips:
        data[f % len(data)] = f % 256
    blob = bytes(data[: cut % len(data)] if cut is not None else data)
    only_valid_or_project_error(lambda: safe_unpickle(io.BytesIO(blob)))


@FAST
@given(blob=st.binary(max_size=512))
def test_safe_unpickler_on_random_bytes(blob: bytes) -> None:
    from olam_edit.adapters.stylegan2.unpickle import safe_unpickle

    only_valid_or_project_error(lambda: safe_unpickle(io.BytesIO(b"\x80\x04" + blob)))
