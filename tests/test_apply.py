"""apply / revert / edited / preview: exact revert, base check, stacking, no partial changes."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import latents, tiny_dcgan

import olam_edit as oe
from olam_edit.errors import BaseMismatchError, EditStateError, LayerNotFoundError, ShapeMismatchError


def _edit(model, layer: str = "3", rank: int = 1, seed: int = 0) -> oe.Edit:
    h = oe.get_handle(model, layer)
    g = torch.Generator().manual_seed(seed)
    D, _ = torch.linalg.qr(torch.randn(h.key_dim, rank, generator=g))
    lam = torch.randn(h.lam_of(h.effective_weight().detach(), D.T).shape, generator=g) * 0.1
    return oe.Edit.create(model, {layer: oe.Delta(lam, D.T.contiguous(), h.layout)}, base_model="tiny")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_apply_then_revert_is_bit_exact() -> None:
    model = tiny_dcgan()
    before = _state(model)
    edit = _edit(model, "6", rank=2)
    oe.apply_edit(model, edit)
    assert not _same(before, _state(model))
    w = model[6].weight.detach().double()
    assert torch.allclose(w, before["6.weight"].double() + edit.deltas["6"].dense(torch.float64), atol=1e-6)
    oe.revert_edit(model, edit)
    assert _same(before, _state(model))


def test_scale_zero_is_the_base_model_exactly() -> None:
    model = tiny_dcgan()
    before = _state(model)
    with oe.edited(model, _edit(model), scale=0.0):
        assert _same(before, _state(model))


def test_edited_restores_after_an_exception() -> None:
    model = tiny_dcgan()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), oe.edited(model, _edit(model)):
        raise RuntimeError("boom")
    assert _same(before, _state(model))


def test_refuses_twice_and_revert_of_unapplied() -> None:
    model = tiny_dcgan()
    edit = _edit(model)
    with pytest.raises(EditStateError, match="not applied"):
        oe.revert_edit(model, edit)
    oe.apply_edit(model, edit)
    with pytest.raises(EditStateError, match="already applied"):
        oe.apply_edit(model, edit)
    oe.revert_edit(model, edit)


def test_fingerprint_mismatch_is_refused_unless_forced() -> None:
    model, other = tiny_dcgan(seed=0), tiny_dcgan(seed=1)
    edit = _edit(model)
    before = _state(other)
    with pytest.raises(BaseMismatchError, match="fingerprint") as err:
        oe.apply_edit(other, edit)
    assert "force=True" in str(err.value)
    assert _same(before, _state(other))
    oe.apply_edit(other, edit, force=True)
    oe.revert_edit(other, edit)
    assert _same(before, _state(other))


def test_edits_compose_in_order_and_revert_in_reverse() -> None:
    model = tiny_dcgan()
    before = _state(model)
    a, b = _edit(model, "3", seed=1), _edit(model, "3", seed=2)
    oe.apply_edit(model, a)
    oe.apply_edit(model, b)  # same layer, checked against the base weight, not the edited one
    w = model[3].weight.detach().double()
    expect = (
        before["3.weight"].double() + a.deltas["3"].dense(torch.float64) + b.deltas["3"].dense(torch.float64)
    )
    assert torch.allclose(w, expect, atol=1e-6)
    with pytest.raises(EditStateError, match="reverse order"):
        oe.revert_edit(model, a)
    oe.revert_edit(model, b)
    oe.revert_edit(model, a)
    assert _same(before, _state(model))


def test_bad_edits_change_nothing() -> None:
    model = tiny_dcgan()
    before = _state(model)
    good = _edit(model, "3")
    wrong_layer = oe.Edit({"33": good.deltas["3"]}, {"layers": {}})
    with pytest.raises(LayerNotFoundError):
        oe.apply_edit(model, wrong_layer)
    mixed = oe.Edit({"3": good.deltas["3"], "6": good.deltas["3"]}, good.manifest)
    with pytest.raises(ShapeMismatchError):
        oe.apply_edit(model, mixed)
    assert _same(before, _state(model))


def test_preview_matches_apply_without_mutating() -> None:
    model = tiny_dcgan()
    edit = _edit(model, "6", rank=2)
    z = latents(3)
    before = _state(model)
    with torch.no_grad():
        got = oe.preview(model, edit, z, scale=0.5)
        assert _same(before, _state(model))
        with oe.edited(model, edit, scale=0.5):
            want = model(z)
    assert torch.equal(got, want)


def test_concurrent_previews_do_not_interfere() -> None:
    model = tiny_dcgan()
    edits = [_edit(model, "6", seed=s) for s in range(4)]
    z = latents(2)
    with torch.no_grad():
        want = [oe.preview(model, e, z) for e in edits]
    got = [None] * 4

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(20):
                got[i] = oe.preview(model, edits[i], z)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
