"""Edit folders: round trip, and every kind of bad file raises a specific error and changes nothing."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit.edit.files import CONFIG_NAME, WEIGHTS_NAME
from olam_edit.edit.schema import content_digest
from olam_edit.errors import DTypeMismatchError, EditFileError, NonFiniteError, SchemaVersionError, ShapeMismatchError


def _edit(model) -> oe.Edit:
    h = oe.get_handle(model, "6")
    D, _ = torch.linalg.qr(torch.randn(h.key_dim, 2))
    lam = torch.randn(h.lam_of(h.effective_weight().detach(), D.T).shape) * 0.1
    return oe.Edit.create(
        model, {"6": oe.Delta(lam, D.T.contiguous(), h.layout)}, base_model="tiny", recipe={"seeds": [1, 2]}
    )


def test_save_load_apply_equals_in_memory(tmp_path) -> None:
    model = tiny_dcgan()
    edit = _edit(model)
    folder = edit.save(tmp_path / "e")
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS_NAME, CONFIG_NAME]
    loaded = oe.Edit.load(folder)
    assert loaded.manifest == json.loads((folder / CONFIG_NAME).read_text())
    assert loaded.fingerprint == edit.fingerprint
    with oe.edited(model, edit):
        w_mem = model[6].weight.clone()
    with oe.edited(model, loaded):
        w_file = model[6].weight.clone()
    assert torch.equal(w_mem, w_file)
    meta_tensors = load_file(str(folder / WEIGHTS_NAME))
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in meta_tensors.values())


def _rewrite(folder, mutate_tensors=None, mutate_manifest=None) -> None:
    from safetensors import safe_open

    path = folder / WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    manifest = json.loads(meta["olam_edit"])
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_manifest:
        mutate_manifest(manifest)
    meta["olam_edit"] = json.dumps(manifest)
    meta["olam_edit_digest"] = json.dumps(content_digest(meta["olam_edit"], tensors))  # re-signed: a well-formed file
    save_file(tensors, str(path), metadata=meta)
    (folder / CONFIG_NAME).unlink()


BAD = {
    "missing tensor": (lambda t: t.pop("6.directions"), None, EditFileError, "missing"),
    "extra tensor": (lambda t: t.__setitem__("x.lambda", torch.zeros(1)), None, EditFileError, "unexpected"),
    "wrong dtype": (
        lambda t: t.__setitem__("6.lambda", t["6.lambda"].double()),
        None,
        DTypeMismatchError,
        "float32",
    ),
    "wrong shape": (
        lambda t: t.__setitem__("6.lambda", t["6.lambda"][:, :1].contiguous()),
        None,
        ShapeMismatchError,
        "lambda",
    ),
    "nan": (lambda t: t["6.lambda"].view(-1).__setitem__(0, float("nan")), None, NonFiniteError, r"NaN"),
    "newer schema": (None, lambda m: m.__setitem__("schema_version", 99), SchemaVersionError, "newer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_raise_specific_errors(tmp_path, case: str) -> None:
    mutate_t, mutate_m, err, words = BAD[case]
    folder = _edit(tiny_dcgan()).save(tmp_path / "e")
    _rewrite(folder, mutate_t, mutate_m)
    before = (folder / WEIGHTS_NAME).read_bytes()
    with pytest.raises(err, match=words):
        oe.Edit.load(folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == before


def test_truncated_and_foreign_files(tmp_path) -> None:
    folder = _edit(tiny_dcgan()).save(tmp_path / "e")
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) - 40])
    with pytest.raises(EditFileError, match="truncated"):
        oe.Edit.load(folder)
    save_file({"a": torch.zeros(2)}, str(folder / WEIGHTS_NAME))
    with pytest.raises(EditFileError, match="manifest"):
        oe.Edit.load(folder)
    with pytest.raises(EditFileError, match=r"no edit\.safetensors"):
        oe.Edit.load(tmp_path / "nowhere")


def test_mixed_folder_is_refused(tmp_path) -> None:
    a = _edit(tiny_dcgan()).save(tmp_path / "a")
    b = _edit(tiny_dcgan(seed=3)).save(tmp_path / "b")
    (a / CONFIG_NAME).write_bytes((b / CONFIG_NAME).read_bytes())
    with pytest.raises(EditFileError, match="different edits"):
        oe.Edit.load(a)


def test_unknown_manifest_keys_are_dropped_with_a_warning(tmp_path) -> None:
    folder = _edit(tiny_dcgan()).save(tmp_path / "e")
    _rewrite(folder, None, lambda m: m.__setitem__("from_the_future", 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit = oe.Edit.load(folder)
    assert "from_the_future" not in edit.manifest
    assert any("from_the_future" in str(w.message) for w in caught)


def test_failed_save_leaves_previous_files(tmp_path, monkeypatch) -> None:
    model = tiny_dcgan()
    folder = _edit(model).save(tmp_path / "e")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import olam_edit.files.atomic as io

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _edit(model).save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_scaled_edit_saves_as_scaled(tmp_path) -> None:
    model = tiny_dcgan()
    half = _edit(model).scaled(0.5)
    back = oe.Edit.load(half.save(tmp_path / "e"))
    assert back.deltas["6"].scale == 0.5
    with oe.edited(model, half):
        w_mem = model[6].weight.clone()
    with oe.edited(model, back):
        assert torch.equal(model[6].weight, w_mem)


def test_check_base_vets_without_applying() -> None:
    from olam_edit.errors import BaseMismatchError

    model, other = tiny_dcgan(), tiny_dcgan(seed=4)
    edit = _edit(model)
    oe.check_base(model, edit)
    before = other[6].weight.clone()
    with pytest.raises(BaseMismatchError):
        oe.check_base(other, edit)
    assert torch.equal(other[6].weight, before)
