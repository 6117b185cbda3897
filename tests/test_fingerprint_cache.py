"""cached_fingerprint: an unchanged weight is hashed once, a changed one is always hashed again."""

from __future__ import annotations

import gc

import pytest
import torch

import olam_edit as oe
from olam_edit.errors import BaseMismatchError
from olam_edit.files import fingerprint as fp
from olam_edit.memory.delta import Delta


@pytest.fixture
def hashes(monkeypatch) -> list[int]:
    """Counts the full hashes cached_fingerprint asks for."""
    calls: list[int] = []
    real = fp.tensor_fingerprint

    def counting(t: torch.Tensor) -> str:
        calls.append(1)
        return real(t)
    monkeypatch.setattr(fp, "tensor_fingerprint", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cached_equals_the_full_hash_and_is_computed_once(hashes, dtype) -> None:
    t = torch.randn(6, 9, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = fp.tensor_fingerprint(t)
    assert fp.cached_fingerprint(t) == want and fp.cached_fingerprint(t) == want
    assert len(hashes) == 2  # the direct call and the first cached one; the second was a hit


def test_every_kind_of_change_is_hashed_again(hashes) -> None:
    layer = torch.nn.Linear(8, 5)
    first = fp.cached_fingerprint(layer.weight)
    with torch.no_grad():
        layer.weight.add_(1.0)  # in place: bumps the version counter
    second = fp.cached_fingerprint(layer.weight)
    layer.weight.data.copy_(torch.randn(5, 8))  # bypasses the version counter: caught by the value sample
    third = fp.cached_fingerprint(layer.weight)
    layer.weight = torch.nn.Parameter(torch.randn(5, 8))  # a new object
    fourth = fp.cached_fingerprint(layer.weight)
    view = layer.weight.detach()[:, :4]  # same storage, other layout
    fifth = fp.cached_fingerprint(view)
    assert len({first, second, third, fourth, fifth}) == 5 and len(hashes) == 5
    assert fourth == fp.tensor_fingerprint(layer.weight) and fifth == fp.tensor_fingerprint(view)


def test_entries_go_with_their_tensor() -> None:
    t = torch.randn(3, 3)
    fp.cached_fingerprint(t)
    key = id(t)
    assert key in fp._CACHE
    del t
    gc.collect()
    assert key not in fp._CACHE


def test_edits_record_the_weight_they_were_made_for(hashes) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    delta = Delta(torch.ones(4, 1), torch.tensor([[1.0, 0, 0, 0, 0, 0]]), "linear")
    a = oe.Edit.create(model, {"0": delta})
    b = oe.Edit.create(model, {"0": delta})
    assert len(hashes) == 1 and a.manifest["layers"]["0"]["fingerprint"] == b.manifest["layers"]["0"]["fingerprint"]
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    c = oe.Edit.create(model, {"0": delta})
    assert len(hashes) == 2 and c.manifest["layers"]["0"]["fingerprint"] == fp.tensor_fingerprint(model[0].weight)
    with pytest.raises(BaseMismatchError):  # the old edit's base is gone, and apply checks with a full hash
        a.apply(model)
    c.apply(model)
    c.revert(model)


def test_a_write_through_data_that_misses_the_sampled_values_is_seen() -> None:
    """The version counter does not see ``.data`` writes; the checksum of every element does."""
    p = torch.nn.Parameter(torch.zeros(320, 768))
    before = fp.cached_fingerprint(p)
    p.data[7] = 1.0  # row 7 holds none of the sampled elements
    assert p._version == 0  # the version counter did not see it
    assert fp.cached_fingerprint(p) == fp.tensor_fingerprint(p) != before
