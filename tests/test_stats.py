"""SecondMoment: chunked == one shot == merged parts; files round-trip and refuse stale use."""

from __future__ import annotations

import pytest
import torch

from olam_edit import SecondMoment
from olam_edit.errors import (
    NonFiniteError,
    ShapeMismatchError,
    SingularStatisticError,
    StaleStatisticsError,
    StatsFileError,
)


def _keys(n: int = 1000, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.1, 3, d)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_chunked_equals_one_shot_equals_merge() -> None:
    X = _keys()
    ref = X.double().T @ X.double() / X.shape[0]
    one = SecondMoment(16).add(X, chunk=10**9)
    chunked = SecondMoment(16).add(X, chunk=37)
    parts = (
        SecondMoment(16)
        .add(X[:300])
        .merge(SecondMoment(16).add(X[300:650]))
        .merge(SecondMoment(16).add(X[650:]))
    )
    for sm in (one, chunked, parts):
        assert sm.count == 1000 and sm.sum.dtype == torch.float64
        assert _rel(sm.moment(), ref) < 1e-12


def test_moment_is_uncentred() -> None:
    X = torch.ones(10, 3) * 2
    assert torch.allclose(SecondMoment(3).add(X).moment(), torch.full((3, 3), 4.0, dtype=torch.float64))


def test_save_load_round_trip_and_fingerprint(tmp_path) -> None:
    sm = SecondMoment(16).add(_keys())
    path = sm.save(tmp_path / "c.safetensors", {"fingerprint": "abc", "layer": "main.6"})
    back = SecondMoment.load(path, expect_fingerprint="abc")
    assert torch.equal(back.sum, sm.sum) and back.count == sm.count and back.manifest["layer"] == "main.6"
    with pytest.raises(StaleStatisticsError, match="abc"):
        SecondMoment.load(path, expect_fingerprint="other")


def test_bad_inputs() -> None:
    sm = SecondMoment(4)
    with pytest.raises(SingularStatisticError):
        sm.moment()
    with pytest.raises(ShapeMismatchError, match=r"\[n, 4\]"):
        sm.add(torch.ones(3, 5))
    with pytest.raises(NonFiniteError):
        sm.add(torch.tensor([[1.0, float("nan"), 0, 0]]))
    assert sm.count == 0
    with pytest.raises(ShapeMismatchError):
        sm.merge(SecondMoment(5))


def test_corrupt_files_raise(tmp_path) -> None:
    path = SecondMoment(4).add(torch.ones(2, 4)).save(tmp_path / "c.safetensors", {"fingerprint": "x"})
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StatsFileError):
        SecondMoment.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(StatsFileError):
        SecondMoment.load(tmp_path / "junk.safetensors")
