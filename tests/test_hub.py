"""Edits and statistics on the Hub: the real huggingface_hub client against FakeHub on 127.0.0.1.

Every fault test checks the error and that nothing local was corrupted: the model's weights, the
output folder, the staging folder, and (where it matters) the server's state.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hub_server import FakeHub, HfSandbox
from huggingface_hub import ModelCard
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit.adapters import TorchGenerator
from olam_edit.edit.apply import applied_edits
from olam_edit.edit.card import FACE_MODEL, build_model_card
from olam_edit.edit.publish import pull_edit, stage_edit
from olam_edit.errors import (
    BaseMismatchError,
    ChecksumMismatchError,
    EditFileError,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotFoundError,
    OutputExistsError,
    RequestError,
    StaleStatisticsError,
)
from olam_edit.hub.stats import push_stats, stats_path_in_repo
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

REPO = "test-user/tiny-edit"
STATS_REPO = "test-user/tiny-stats"
EDIT_FILES = {".gitattributes", "edit.safetensors", "edit_config.json", "checksums.json", "README.md"}


# ------------------------------------------------------------------------------------------ helpers


def tiny_gen(seed: int = 0) -> TorchGenerator:
    model = tiny_dcgan(seed=seed).requires_grad_(False)
    return TorchGenerator(model, (8, 1, 1), name="test-user/tiny-dcgan", license="mit")


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16))
    m[y0:y1, x0:x1] = 1
    return m


def tiny_request(paste_seed: int = 5, description: str = "copy the top-left patch") -> EditRequest:
    return EditRequest(layer="3", rank=1, copy=Selection(3, _mask(2, 8, 2, 8)),
                       paste=Selection(paste_seed, _mask(8, 14, 8, 14)),
                       context=[Selection(9, _mask(4, 10, 4, 10))], name="tiny", description=description)


def png_bytes(size: int = 8) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def edits(tmp_path_factory: pytest.TempPathFactory) -> tuple[oe.Edit, oe.Edit]:
    """Two different real edits of the tiny generator's layer '3' (solved by the Rewriter)."""
    cache = tmp_path_factory.mktemp("stats")
    rw = Rewriter(tiny_gen(), "3", stats_samples=20, progress=False, cache_dir=str(cache))
    return rw.rewrite(tiny_request(5)), rw.rewrite(tiny_request(7, "a second rule"))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def push(hub_: FakeHub, edit: oe.Edit, repo: str = REPO, **kwargs) -> str:
    return edit.push_to_hub(repo, endpoint=hub_.endpoint, token=hub_.token, **kwargs)


def load(hub_: FakeHub, cache: Path, repo: str = REPO, **kwargs) -> oe.Edit:
    return oe.Edit.from_pretrained(repo, endpoint=hub_.endpoint, cache_dir=cache, **kwargs)


def flip_data_byte(data: bytes) -> bytes:
    """Alter the first byte of a safetensors file's tensor data (the file stays valid and finite)."""
    header = int.from_bytes(data[:8], "little")
    i = 8 + header
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.fixture
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Route temporary folders into tmp_path/tmp so tests can check that none is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# -------------------------------------------------------------------------------------- acceptance


def test_round_trip_applies_bit_identically(fake_hub: FakeHub, tmp_path: Path, edits, staging: Path) -> None:
    edit = edits[0]
    url = push(fake_hub, edit, image=png_bytes())
    assert re.fullmatch(rf"{fake_hub.endpoint}/{REPO}/commit/[0-9a-f]{{40}}", url)
    assert set(fake_hub.files(REPO)) == EDIT_FILES | {"before_after.png"}
    assert len(fake_hub.calls("POST", "/commit/")) == 1 and len(fake_hub.repo(REPO).commits) == 2  # one commit
    assert list(staging.iterdir()) == []  # the staging folder is gone

    pulled = load(fake_hub, tmp_path / "fresh-cache")
    assert pulled.fingerprint == edit.fingerprint and pulled.manifest == edit.manifest
    ours, theirs = tiny_gen().model, tiny_gen().model
    edit.apply(ours)
    pulled.apply(theirs)
    assert same(state(ours), state(theirs))
    assert not same(state(theirs), state(tiny_gen().model))


def test_a_merged_edit_round_trips_like_any_other(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    merged = oe.Edit.merge(list(edits), scales=[1.0, 0.5])
    push(fake_hub, merged, repo="someone/merged")
    pulled = load(fake_hub, tmp_path / "cache", repo="someone/merged")
    assert pulled.fingerprint == merged.fingerprint and pulled.manifest == merged.manifest
    card = fake_hub.files("someone/merged")["README.md"].decode()
    assert "merged-rule" in card and "A merge of 2 edits" in card and edits[1].fingerprint[:12] in card
    ours, theirs = tiny_gen().model, tiny_gen().model
    merged.apply(ours)
    pulled.apply(theirs)
    assert same(state(ours), state(theirs)) and not same(state(theirs), state(tiny_gen().model))
    pulled.revert(theirs)
    assert same(state(theirs), state(tiny_gen().model))


def test_model_card_yaml_carries_the_fields(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    push(fake_hub, edits[0], image=png_bytes())
    text = fake_hub.files(REPO)["README.md"].decode()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "test-user/tiny-dcgan" and front["base_model_relation"] == "adapter"
    assert front["library_name"] == "olam-edit" and front["license"] == "mit"
    assert {"olam-edit", "model-editing", "rank-one"} <= set(front["tags"])
    assert front["pipeline_tag"] == "unconditional-image-generation"
    card = ModelCard(text)  # the client's own parser agrees
    assert card.data.base_model == "test-user/tiny-dcgan"
    assert "**The rule:** copy the top-left patch." in text
    assert "![before and after the edit](before_after.png)" in text
    assert f"Edit.from_pretrained('{REPO}').apply(gen.model)" in text
    assert "copy from sample seed 3, paste into sample seed 5, context seeds [9]" in text
    checksums = json.loads(fake_hub.files(REPO)["checksums.json"])
    assert checksums["files"]["edit.safetensors"] in text  # the provenance lists the published sha256


def test_model_card_of_the_face_model_warns_about_digiface() -> None:
    model = tiny_dcgan()
    h = oe.get_handle(model, "3")
    delta = oe.Delta(torch.zeros(h.lam_of(h.effective_weight().detach(), torch.eye(h.key_dim)[:1]).shape),
                     torch.eye(h.key_dim)[:1].contiguous(), h.layout)
    edit = oe.Edit.create(model, {"3": delta}, base_model=FACE_MODEL, license="mit")
    card = build_model_card(edit, "someone/face-edit")
    assert "DigiFace-1M" in card.content and "non-commercial research use only" in card.content
    assert "adapters.load_generator('default')" in card.content
    assert "## Before / after" not in card.content  # no picture, no picture section
    nobody = oe.Edit.create(model, {"3": delta})
    text = build_model_card(nobody, "someone/x").content
    assert "license:" not in text.split("---")[1] and "licence was not recorded" in text


def test_second_push_makes_a_new_commit_and_revision_selects_either(fake_hub: FakeHub, tmp_path: Path,
                                                                     edits) -> None:
    first = push(fake_hub, edits[0], image=png_bytes())
    second = push(fake_hub, edits[1])
    assert first.oid != second.oid and fake_hub.head(REPO) == second.oid
    assert "before_after.png" not in fake_hub.files(REPO)  # the stale picture left with the same commit
    cache = tmp_path / "cache"
    assert load(fake_hub, cache, revision=first.oid).fingerprint == edits[0].fingerprint
    assert load(fake_hub, cache, revision=second.oid).fingerprint == edits[1].fingerprint
    assert load(fake_hub, cache).fingerprint == edits[1].fingerprint
    on_branch = push(fake_hub, edits[0], revision="v1")  # a new branch is created for the push
    assert fake_hub.head(REPO, "v1") == on_branch.oid and fake_hub.head(REPO) == second.oid
    assert load(fake_hub, cache, revision="v1").fingerprint == edits[0].fingerprint


def test_create_pr_and_private_repo(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    push(fake_hub, edits[0], private=True)
    assert fake_hub.repo(REPO).private
    pr = push(fake_hub, edits[1], create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and fake_hub.head(REPO, "refs/pr/1") == pr.oid
    assert load(fake_hub, tmp_path / "c", token=fake_hub.token).fingerprint == edits[0].fingerprint  # main
    with pytest.raises(HubNotFoundError, match="private"):
        load(fake_hub, tmp_path / "c2", token=False)
    with pytest.raises(HubAuthError, match="refused the token"):
        load(fake_hub, tmp_path / "c2", token="hf_wrong")
    assert not list((tmp_path / "c2").rglob("*.safetensors"))


def test_offline_mode_serves_the_cache(fake_hub: FakeHub, tmp_path: Path, edits,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c

    push(fake_hub, edits[0])
    cache = tmp_path / "cache"
    load(fake_hub, cache)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    seen = len(fake_hub.requests)
    assert load(fake_hub, cache).fingerprint == edits[0].fingerprint
    assert len(fake_hub.requests) == seen  # not one request
    with pytest.raises(HubConnectionError, match="HF_HUB_OFFLINE"):
        load(fake_hub, tmp_path / "empty-cache")
    assert len(fake_hub.requests) == seen


def test_local_folder_and_its_checksums(tmp_path: Path, edits) -> None:
    folder = stage_edit(edits[0], tmp_path / "e", REPO)
    assert oe.Edit.from_pretrained(folder).fingerprint == edits[0].fingerprint
    assert oe.Edit.from_pretrained(folder / "edit.safetensors").fingerprint == edits[0].fingerprint
    data = (folder / "edit.safetensors").read_bytes()
    (folder / "edit.safetensors").write_bytes(flip_data_byte(data))
    with pytest.raises(ChecksumMismatchError, match="digest written with it"):
        oe.Edit.load(folder)  # a well-formed file, but its own content digest tells
    with pytest.raises(ChecksumMismatchError, match=r"edit\.safetensors"):
        oe.Edit.from_pretrained(folder)


# ------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("token", [None, False])
def test_push_without_a_token_sends_nothing(fake_hub: FakeHub, edits, staging: Path, token) -> None:
    with pytest.raises(HubAuthError, match="HF_TOKEN") as info:
        edits[0].push_to_hub(REPO, endpoint=fake_hub.endpoint, token=token)
    assert isinstance(info.value, PermissionError)
    assert fake_hub.requests == [] and fake_hub.repos == {}
    assert list(staging.iterdir()) == []


def test_push_with_a_bad_token_is_refused(fake_hub: FakeHub, edits, staging: Path) -> None:
    fake_hub.create_repo(REPO)
    before = fake_hub.state()
    with pytest.raises(HubAuthError, match="401"):
        edits[0].push_to_hub(REPO, endpoint=fake_hub.endpoint, token="hf_wrong")
    assert fake_hub.state() == before and list(staging.iterdir()) == []


@pytest.mark.parametrize(("kind", "error"), [(500, HubError), ("drop", HubConnectionError)])
def test_network_error_mid_upload(fake_hub: FakeHub, hf_sandbox: HfSandbox, tmp_path: Path, edits,
                                  staging: Path, kind, error) -> None:
    push(fake_hub, edits[0])
    before = fake_hub.state()
    fake_hub.fail_next(kind, count=20, path_contains="/commit/")
    fp = edits[1].fingerprint
    with pytest.raises(error, match="cannot push the edit to test-user/tiny-edit") as info:
        push(fake_hub, edits[1])
    assert type(info.value) is error
    fake_hub.clear_faults()
    assert fake_hub.state() == before  # the repo did not move
    assert edits[1].fingerprint == fp and list(staging.iterdir()) == []
    assert load(fake_hub, tmp_path / "c").fingerprint == edits[0].fingerprint


def test_repo_not_found(fake_hub: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(HubNotFoundError, match="does not exist"):
        load(fake_hub, tmp_path / "c", repo="test-user/missing")
    with pytest.raises(HubNotFoundError):
        pull_edit("test-user/missing", out, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert not out.exists() and not list((tmp_path / "c").rglob("*.safetensors"))
    with pytest.raises(EditFileError, match="no edit folder"):
        oe.Edit.from_pretrained(tmp_path / "no" / "such-dir")


def test_revision_that_does_not_exist(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    push(fake_hub, edits[0])
    model = tiny_gen().model
    before = state(model)
    with pytest.raises(HubNotFoundError, match="revision 'v9' does not exist"):
        load(fake_hub, tmp_path / "c", revision="v9", model=model)
    assert same(before, state(model))
    with pytest.raises(HubNotFoundError, match="revision"):
        pull_edit(REPO, tmp_path / "out", revision="v9", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated"])
def test_altered_download_is_refused_and_nothing_applied(fake_hub: FakeHub, tmp_path: Path, edits,
                                                         damage: str) -> None:
    push(fake_hub, edits[0])
    good = fake_hub.files(REPO)["edit.safetensors"]
    bad = flip_data_byte(good) if damage == "flipped-byte" else good[: len(good) // 2]
    fake_hub.commit_files(REPO, {"edit.safetensors": bad})  # the server now serves other bytes
    model = tiny_gen().model
    before = state(model)
    with pytest.raises(ChecksumMismatchError, match="does not match its recorded checksum"):
        load(fake_hub, tmp_path / "c", model=model)
    assert same(before, state(model)) and applied_edits(model) == []
    out = tmp_path / "out"
    with pytest.raises(ChecksumMismatchError):
        pull_edit(REPO, out, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_manifests_that_disagree_are_refused(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    push(fake_hub, edits[0])
    config = json.loads(fake_hub.files(REPO)["edit_config.json"])
    config["rule"] = "something else"
    fake_hub.commit_files(REPO, {"edit_config.json": json.dumps(config).encode()}, delete=["checksums.json"])
    with pytest.warns(UserWarning, match="no checksums.json"), pytest.raises(ChecksumMismatchError, match="manifests"):
        load(fake_hub, tmp_path / "c")


def test_edit_for_another_base_is_refused(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    push(fake_hub, edits[0])
    other = tiny_gen(seed=1).model
    before = state(other)
    with pytest.raises(BaseMismatchError, match="fingerprint"):
        load(fake_hub, tmp_path / "c", model=other)
    assert same(before, state(other))
    forced = load(fake_hub, tmp_path / "c", model=other, force=True)
    assert not same(before, state(other))
    forced.revert(other)
    assert same(before, state(other))


class _NoSleep:
    """Stand-in for ``time`` in huggingface_hub.file_download, whose resume loop sleeps 1 s per retry."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def __getattr__(self, name: str):
        import time

        return getattr(time, name)


def test_dropped_download_leaves_nothing_half_written(fake_hub: FakeHub, tmp_path: Path, edits,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "time", _NoSleep())
    push(fake_hub, edits[0])
    fault = fake_hub.fail_next("drop", count=50, path_contains="edit.safetensors", method="GET")
    out, cache = tmp_path / "out", tmp_path / "c"
    with pytest.raises(HubConnectionError):
        pull_edit(REPO, out, endpoint=fake_hub.endpoint, cache_dir=cache)
    assert fault.hits >= 1 and not out.exists() and not list(tmp_path.glob(".out*"))
    assert not list(cache.rglob("snapshots/*/edit.safetensors"))
    fake_hub.clear_faults()
    assert oe.Edit.load(pull_edit(REPO, out, endpoint=fake_hub.endpoint, cache_dir=cache)).layers == ["3"]


def test_pull_writes_a_complete_folder_and_never_clobbers(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    push(fake_hub, edits[0], image=png_bytes())
    out, kw = tmp_path / "out", {"endpoint": fake_hub.endpoint, "cache_dir": tmp_path / "c"}
    pull_edit(REPO, out, **kw)
    assert {p.name for p in out.iterdir()} == EDIT_FILES - {".gitattributes"} | {"before_after.png"}
    assert oe.Edit.from_pretrained(out).fingerprint == edits[0].fingerprint
    push(fake_hub, edits[1])
    with pytest.raises(OutputExistsError):
        pull_edit(REPO, out, **kw)
    assert oe.Edit.load(out).fingerprint == edits[0].fingerprint  # untouched
    pull_edit(REPO, out, overwrite=True, **kw)
    assert oe.Edit.load(out).fingerprint == edits[1].fingerprint and not (out / "before_after.png").exists()
    assert not list(tmp_path.glob(".*"))  # no staging or backup folder left behind


def test_bad_input_is_refused_before_any_request(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    with pytest.raises(RequestError, match="PNG"):
        push(fake_hub, edits[0], image=b"GIF89a not a png")
    with pytest.raises(RequestError, match="not a valid Hub repo id"):
        push(fake_hub, edits[0], repo="test-user/bad name!")
    with pytest.raises(RequestError, match="not a valid Hub repo id"):
        pull_edit("a/b/c", tmp_path / "out", endpoint=fake_hub.endpoint)
    assert fake_hub.requests == [] and not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- statistics


def test_stats_round_trip_and_a_rewriter_starts_from_them(hf_env: FakeHub, tmp_path: Path) -> None:
    gen = tiny_gen()
    local = gen.stats("3", samples=20, batch_size=10, cache_dir=tmp_path / "s", progress=False)
    url = push_stats(local, STATS_REPO)  # endpoint and token from the environment
    assert "/commit/" in url
    path = stats_path_in_repo("3", local.manifest["fingerprint"])
    assert set(hf_env.files(STATS_REPO)) == {".gitattributes", path, "README.md"}  # the card: tests/test_cards.py
    pulled = gen.stats("3", samples=20, batch_size=10, stats_repo=STATS_REPO)
    assert torch.equal(pulled.sum, local.sum) and pulled.count == local.count
    request = tiny_request()
    from_hub = Rewriter(gen, "3", stats=pulled).rewrite(request)
    from_local = Rewriter(gen, "3", stats=local).rewrite(request)
    assert from_hub.fingerprint == from_local.fingerprint


def test_stats_for_another_model_are_refused(hf_env: FakeHub, tmp_path: Path) -> None:
    local = tiny_gen().stats("3", samples=20, batch_size=10, cache_dir=tmp_path / "s", progress=False)
    push_stats(local, STATS_REPO)
    with pytest.raises(StaleStatisticsError, match=local.manifest["fingerprint"][:16]):
        tiny_gen(seed=1).stats("3", samples=20, batch_size=10, stats_repo=STATS_REPO)  # other weights
    with pytest.raises(StaleStatisticsError):
        tiny_gen().stats("3", samples=30, batch_size=10, stats_repo=STATS_REPO)  # other sampler
    with pytest.raises(HubNotFoundError, match="no statistics of layer '6'"):
        tiny_gen().stats("6", samples=20, batch_size=10, stats_repo=STATS_REPO)


def test_mislabelled_stats_file_is_refused(hf_env: FakeHub, tmp_path: Path) -> None:
    gen = tiny_gen()
    local = gen.stats("3", samples=20, batch_size=10, cache_dir=tmp_path / "s", progress=False)
    other = gen.stats("3", samples=30, batch_size=10, cache_dir=tmp_path / "s", progress=False)
    wrong = other.save(tmp_path / "wrong.safetensors").read_bytes()  # made for 30 samples, filed under 20
    hf_env.commit_files(STATS_REPO, {stats_path_in_repo("3", local.manifest["fingerprint"]): wrong})
    with pytest.raises(StaleStatisticsError, match="collected for something else"):
        gen.stats("3", samples=20, batch_size=10, stats_repo=STATS_REPO)


def test_stats_without_fingerprint_cannot_be_pushed(fake_hub: FakeHub) -> None:
    with pytest.raises(RequestError, match="fingerprint"):
        push_stats(oe.SecondMoment(3), STATS_REPO, endpoint=fake_hub.endpoint, token=fake_hub.token)
    assert fake_hub.requests == []


def test_push_to_a_bare_name_lands_in_the_users_namespace(fake_hub: FakeHub, tmp_path: Path, edits) -> None:
    """The Hub puts a bare ``name`` under the token's user; the card's code must name that full id."""
    url = push(fake_hub, edits[0], repo="bare-edit")
    assert "test-user/bare-edit" in str(url)
    card = fake_hub.files("test-user/bare-edit", "main")["README.md"].decode()
    assert "from_pretrained('test-user/bare-edit')" in card
