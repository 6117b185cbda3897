"""Hostile edit folders (issue 13): every reproduction is refused with one specific error, nothing hangs on
a FIFO, and nothing non-finite is ever written into a model (Hub cases: test_hostile_edits_hub.py)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_hub import REPO, png_bytes, same, state
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit.cli import main
from olam_edit.edit.apply import applied_edits
from olam_edit.edit.files import CONFIG_NAME, DIGEST_KEY, METADATA_KEY, WEIGHTS_NAME
from olam_edit.edit.publish import CARD_NAME, CHECKSUMS_NAME, PICTURE_NAME, stage_edit
from olam_edit.edit.schema import MAX_SCALE, ORTHONORMAL_TOL, content_digest
from olam_edit.errors import (
    BaseMismatchError,
    ChecksumMismatchError,
    EditFileError,
    NonFiniteError,
    OlamEditError,
    ShapeMismatchError,
)

# ------------------------------------------------------------------------------------------ helpers


def _edit(model: torch.nn.Module, rank: int = 2, seed: int = 11) -> oe.Edit:
    """A random rank-``rank`` edit of the tiny model's layer '6' with orthonormal directions."""
    h = oe.get_handle(model, "6")
    g = torch.Generator().manual_seed(seed)
    D = torch.linalg.qr(torch.randn(h.key_dim, rank, generator=g))[0].T.contiguous()  # [r, in]
    lam = torch.randn(h.lam_of(h.effective_weight().detach(), D).shape, generator=g) * 0.1
    return oe.Edit.create(model, {"6": oe.Delta(lam, D, h.layout)}, base_model="tiny")


def _parts(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        manifest = json.loads(f.metadata()[METADATA_KEY])
    return manifest, load_file(str(folder / WEIGHTS_NAME))


def _resave(folder: Path, manifest: object = None, tensors: dict | None = None, *, text: str | None = None,
            sign: bool = True, config: bool = True) -> None:
    """Write ``folder`` with another manifest (or raw manifest ``text``) and tensors, re-signed by default
    (a well-formed file whose content is hostile), edit_config.json holding the same manifest."""
    old_manifest, old_tensors = _parts(folder)
    tensors = old_tensors if tensors is None else tensors
    text = json.dumps(old_manifest if manifest is None else manifest) if text is None else text
    meta = {METADATA_KEY: text, "format": "pt"}
    if sign:
        meta[DIGEST_KEY] = json.dumps(content_digest(text, tensors))
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata=meta)
    if config:
        (folder / CONFIG_NAME).write_text(text)


def _saved(tmp_path: Path, name: str = "e") -> tuple[Path, torch.nn.Module]:
    model = tiny_dcgan()
    return _edit(model).save(tmp_path / name), model


def _one_line(error: OlamEditError) -> None:
    """What the CLI prints: one line that says what was expected."""
    assert "\n" not in str(error) and "Traceback" not in str(error)
    assert error.expected is not None


def _layer(m: dict) -> dict:
    return m["layers"]["6"]


# ------------------------------------------------------------------------- 1. the manifest schema

MANIFESTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "scale abc": (lambda m: _layer(m).__setitem__("scale", "abc"), r"scale"),
    "scale list": (lambda m: _layer(m).__setitem__("scale", [1]), r"scale"),
    "scale null": (lambda m: _layer(m).__setitem__("scale", None), r"scale"),
    "scale nan": (lambda m: _layer(m).__setitem__("scale", float("nan")), r"scale"),
    "shape of floats": (lambda m: _layer(m).__setitem__("shape", [8.0, 8, 3, 3]), r"shape"),
    "shape of strings": (lambda m: _layer(m).__setitem__("shape", ["8", "8", "3", "3"]), r"shape"),
    "empty shape": (lambda m: _layer(m).__setitem__("shape", []), r"shape"),
    "shape of 100 dims": (lambda m: _layer(m).__setitem__("shape", [1] * 100), r"shape"),
    "shape too short for its layout": (lambda m: _layer(m).__setitem__("shape", [8]), r"shape"),
    "rank above key dim": (lambda m: _layer(m).__setitem__("rank", 9), r"rank"),
    "rank a string": (lambda m: _layer(m).__setitem__("rank", "2"), r"rank"),
    "unknown layout": (lambda m: _layer(m).__setitem__("layout", "conv3d"), r"layout"),
    "layer null": (lambda m: m["layers"].__setitem__("6", None), r"layers"),
    "fingerprint 5": (lambda m: _layer(m).__setitem__("fingerprint", 5), r"fingerprint"),
    "fingerprint null": (lambda m: _layer(m).__setitem__("fingerprint", None), r"no base fingerprint"),
    "fingerprint deleted": (lambda m: _layer(m).pop("fingerprint"), r"no base fingerprint"),
    "base_model 5": (lambda m: m.__setitem__("base_model", 5), r"base_model"),
    "base_model id 5": (lambda m: m.__setitem__("base_model", {"id": 5}), r"base_model\.id"),
    "layers a list": (lambda m: m.__setitem__("layers", [1]), r"layers"),
    "no layers": (lambda m: m.pop("layers"), r"layers"),
    "schema_version a string": (lambda m: m.__setitem__("schema_version", "1"), r"schema_version"),
    "tags a string": (lambda m: m.__setitem__("tags", "abc"), r"tags"),
    "rule a number": (lambda m: m.__setitem__("rule", 5), r"rule"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_hostile_manifest_is_one_specific_error(tmp_path: Path, case: str) -> None:
    folder, _ = _saved(tmp_path)
    manifest, _tensors = _parts(folder)
    mutate, words = MANIFESTS[case]
    mutate(manifest)
    _resave(folder, manifest)
    before = (folder / WEIGHTS_NAME).read_bytes()
    with pytest.raises(EditFileError, match=words) as info:
        oe.Edit.load(folder)
    _one_line(info.value)
    with pytest.raises(EditFileError, match=words):
        oe.Edit.from_pretrained(folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == before


@pytest.mark.parametrize(("case", "text", "words"), [
    ("a JSON list", "[1, 2, 3]", "JSON object"),
    ("5000-deep JSON", "[" * 5000 + "]" * 5000, "nests too deeply"),
    ("not JSON", "{'layers':", "not valid JSON"),
])
def test_manifest_text_that_is_not_a_manifest(tmp_path: Path, case: str, text: str, words: str) -> None:
    folder, _ = _saved(tmp_path)
    _resave(folder, text=text, config=False)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(EditFileError, match=words):
        oe.Edit.load(folder)


@pytest.mark.parametrize(("case", "data", "words"), [
    ("invalid UTF-8", b'{"layers": "\xff\xfe"}', "not UTF-8"),
    ("a JSON list", b"[1]", "edit manifest"),
    ("5000-deep JSON", b"[" * 5000 + b"]" * 5000, "nests too deeply"),
])
def test_config_that_is_not_a_manifest(tmp_path: Path, case: str, data: bytes, words: str) -> None:
    folder, _ = _saved(tmp_path)
    (folder / CONFIG_NAME).write_bytes(data)
    with pytest.raises(EditFileError, match=words) as info:
        oe.Edit.load(folder)
    _one_line(info.value)


def test_a_100_dimensional_tensor_is_refused_before_it_is_read(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    _manifest, tensors = _parts(folder)
    tensors["6.lambda"] = torch.zeros([1] * 100)
    _resave(folder, tensors=tensors, sign=False)  # the shape check comes first: no digest needed
    with pytest.raises(ShapeMismatchError, match="do not fit its layer"):
        oe.Edit.load(folder)


def test_base_model_5_never_reaches_push(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    manifest, _tensors = _parts(folder)
    manifest["base_model"] = 5
    _resave(folder, manifest)
    with pytest.raises(EditFileError, match="base_model"):
        oe.Edit.load_verified(folder)  # what `olam-edit push` loads first
    assert main(["push", str(folder), "test-user/x", "--token", "hf_x"]) == 2


CHECKSUMS: dict[str, tuple[Callable[[dict], object], str]] = {
    "edit_fingerprint 5": (lambda r: r.__setitem__("edit_fingerprint", 5), "edit_fingerprint"),
    "digest not hex": (lambda r: r["files"].__setitem__(WEIGHTS_NAME, "xyz"), "sha256 hex"),
    "digest a number": (lambda r: r["files"].__setitem__(CONFIG_NAME, 5), "sha256 hex"),
    "a path outside": (lambda r: r["files"].__setitem__("../x", "0" * 64), "outside"),
    "no weights entry": (lambda r: r["files"].pop(WEIGHTS_NAME), "no checksum"),
    "files a list": (lambda r: r.__setitem__("files", [1]), "files"),
    "other algorithm": (lambda r: r.__setitem__("algorithm", "md5"), "checksum record"),
}


@pytest.mark.parametrize("case", sorted(CHECKSUMS))
def test_hostile_checksums_are_one_specific_error(tmp_path: Path, case: str) -> None:
    model = tiny_dcgan()
    folder = stage_edit(_edit(model), tmp_path / "e", REPO)
    record = json.loads((folder / CHECKSUMS_NAME).read_text())
    mutate, words = CHECKSUMS[case]
    mutate(record)
    (folder / CHECKSUMS_NAME).write_text(json.dumps(record))
    with pytest.raises(EditFileError, match=words) as info:
        oe.Edit.from_pretrained(folder)
    _one_line(info.value)


@pytest.mark.parametrize("data", [b"[1]", b"\xff\xfe", b"[" * 5000 + b"]" * 5000])
def test_checksums_that_are_not_json_objects(tmp_path: Path, data: bytes) -> None:
    folder = stage_edit(_edit(tiny_dcgan()), tmp_path / "e", REPO)
    (folder / CHECKSUMS_NAME).write_bytes(data)
    with pytest.raises(EditFileError):
        oe.Edit.from_pretrained(folder)


# ---------------------------------------------------------------------------- 2. content integrity


def test_every_single_bit_flip_in_tensor_data_is_refused(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    good = (folder / WEIGHTS_NAME).read_bytes()
    start = 8 + int.from_bytes(good[:8], "little")
    positions = torch.randint(start, len(good), (24,), generator=torch.Generator().manual_seed(3)).tolist()
    for i, pos in enumerate(positions):
        bad = bytearray(good)
        bad[pos] ^= 1 << (i % 8)
        (folder / WEIGHTS_NAME).write_bytes(bytes(bad))
        with pytest.raises(ChecksumMismatchError, match=r"different tensor '6\.(lambda|directions)'"):
            oe.Edit.load(folder)


def test_an_altered_manifest_in_the_weights_file_is_refused(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    manifest, _tensors = _parts(folder)
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        digest = f.metadata()[DIGEST_KEY]
    manifest["rule"] = "something else"
    _resave(folder, manifest, sign=False)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    save_file(tensors, str(folder / WEIGHTS_NAME),
              metadata={METADATA_KEY: json.dumps(manifest), DIGEST_KEY: digest, "format": "pt"})
    with pytest.raises(ChecksumMismatchError, match="different the manifest"):
        oe.Edit.load(folder)


def test_an_older_file_without_a_digest_loads_with_a_warning(tmp_path: Path) -> None:
    folder, model = _saved(tmp_path)
    expected = oe.Edit.load(folder).fingerprint
    _resave(folder, sign=False)
    with pytest.warns(UserWarning, match="no content digest"):
        assert oe.Edit.load(folder).fingerprint == expected


@pytest.mark.parametrize("damage", ["random", "scaled x10", "duplicated rows"])
def test_directions_must_be_orthonormal(tmp_path: Path, damage: str) -> None:
    folder, _ = _saved(tmp_path)
    _manifest, tensors = _parts(folder)
    D = tensors["6.directions"]  # [2, 8]
    g = torch.Generator().manual_seed(4)
    tensors["6.directions"] = {"random": torch.randn(D.shape, generator=g), "scaled x10": D * 10,
                               "duplicated rows": torch.stack([D[0], D[0]])}[damage].contiguous()
    _resave(folder, tensors=tensors)
    with pytest.raises(EditFileError, match="not orthonormal") as info:
        oe.Edit.load(folder)
    assert f"{ORTHONORMAL_TOL:g}" in str(info.value)


def test_checksums_cover_every_file_of_the_folder(tmp_path: Path) -> None:
    folder = stage_edit(_edit(tiny_dcgan()), tmp_path / "e", REPO, png_bytes())
    record = json.loads((folder / CHECKSUMS_NAME).read_text())
    assert set(record["files"]) == {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, PICTURE_NAME}
    for name in (CARD_NAME, PICTURE_NAME):
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(original[: len(original) // 2])
        with pytest.raises(ChecksumMismatchError, match=name.replace(".", r"\.")):
            oe.Edit.from_pretrained(folder)
        (folder / name).write_bytes(original)
    oe.Edit.from_pretrained(folder)


# ------------------------------------------------------------------------ 3. finite weights or nothing


@pytest.mark.parametrize("scale", [1e300, 1e39, -1e39, 1e7])
def test_a_huge_manifest_scale_is_refused_at_load(tmp_path: Path, scale: float) -> None:
    folder, _ = _saved(tmp_path)
    manifest, _tensors = _parts(folder)
    _layer(manifest)["scale"] = scale
    _resave(folder, manifest)
    with pytest.raises(EditFileError, match=r"scale") as info:
        oe.Edit.load(folder)
    assert f"{MAX_SCALE}" in str(info.value)


def test_a_lambda_of_3e38_never_writes_infinite_weights(tmp_path: Path) -> None:
    folder, model = _saved(tmp_path)
    manifest, tensors = _parts(folder)
    tensors["6.lambda"] = torch.full_like(tensors["6.lambda"], 3e38)  # finite in float32; the product is not
    _layer(manifest)["scale"] = 10.0  # a valid strength
    _resave(folder, manifest, tensors)
    edit = oe.Edit.load(folder)
    before = state(model)
    with pytest.raises(NonFiniteError, match="non-finite in float32"):
        edit.apply(model)
    with pytest.raises(NonFiniteError):
        oe.edited_parameters(model, edit)
    assert same(before, state(model)) and applied_edits(model) == []


@pytest.mark.parametrize("strength", [1e300, 1e40, -1e40, float("inf"), float("nan")])
def test_a_huge_strength_never_writes_infinite_weights(strength: float) -> None:
    model = tiny_dcgan()
    good = _edit(model)
    before = state(model)
    with pytest.raises(NonFiniteError):
        oe.apply_edit(model, good, scale=strength)
    with pytest.raises(NonFiniteError):
        oe.apply_edit(model, good.scaled(strength))
    assert same(before, state(model)) and applied_edits(model) == []
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_fingerprint_is_required_and_only_force_skips_it() -> None:
    model = tiny_dcgan()
    edit = _edit(model)
    for drop in ("delete", "null"):
        manifest = json.loads(json.dumps(edit.manifest))
        if drop == "delete":
            del manifest["layers"]["6"]["fingerprint"]
        else:
            manifest["layers"]["6"]["fingerprint"] = None
        unchecked = oe.Edit(edit.deltas, manifest)
        other = tiny_dcgan(seed=4)
        before = state(other)
        with pytest.raises(BaseMismatchError, match="no base fingerprint"):
            oe.apply_edit(other, unchecked)
        with pytest.raises(BaseMismatchError):
            oe.check_base(other, unchecked)
        assert same(before, state(other))
        with oe.edited(other, unchecked, force=True):
            assert not same(before, state(other))
        assert same(before, state(other))


def test_a_fingerprint_deleted_in_the_config_only_is_refused(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["layers"]["6"]["fingerprint"]
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(EditFileError, match="fingerprint"):
        oe.Edit.load(folder)


# --------------------------------------------------------------------------- 4. only regular files


def _without_hanging(fn: Callable[[], object], fifo: Path, seconds: float = 60) -> BaseException | object:
    """``fn()``'s result or exception; fails (and unblocks a reader) if it is still running after ``seconds``."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed back to the test
            box["result"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # lets a blocked open() return
        os.close(fd)
        t.join(5)
        pytest.fail(f"opened the FIFO {fifo.name} and blocked")
    return box["result"]


@pytest.mark.parametrize("name", [WEIGHTS_NAME, CONFIG_NAME, CHECKSUMS_NAME])
def test_a_fifo_in_an_edit_folder_is_refused_without_opening_it(tmp_path: Path, name: str) -> None:
    folder = stage_edit(_edit(tiny_dcgan()), tmp_path / "e", REPO)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    readers = [oe.Edit.from_pretrained] if name == CHECKSUMS_NAME else [oe.Edit.load, oe.Edit.from_pretrained]
    for reader in readers:  # Edit.load never reads checksums.json
        outcome = _without_hanging(lambda reader=reader: reader(folder), folder / name)
        assert isinstance(outcome, EditFileError), outcome
        assert "not a regular file" in str(outcome)


def test_cli_apply_next_to_a_fifo_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, _ = _saved(tmp_path)
    (folder / WEIGHTS_NAME).unlink()
    os.mkfifo(folder / WEIGHTS_NAME)
    code = _without_hanging(lambda: main(["apply", str(folder), "--grid", str(tmp_path / "g.png")]),
                            folder / WEIGHTS_NAME)
    assert code == 2 and "not a regular file" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()
