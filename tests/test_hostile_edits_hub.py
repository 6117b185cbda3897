"""Hostile edit folders on the Hub (issue 13): an altered card or picture is never pulled, a damaged cached
download is evicted from the huggingface_hub cache and downloaded again, and ``--force-download`` works."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import FakeHub
from test_hub import REPO, load, png_bytes, push, tiny_gen, tiny_request

import olam_edit as oe
from olam_edit.cli import build_parser, main
from olam_edit.edit.files import WEIGHTS_NAME
from olam_edit.edit.publish import CARD_NAME, PICTURE_NAME, pull_edit
from olam_edit.errors import ChecksumMismatchError
from olam_edit.rules.spatial.rewriter import Rewriter


@pytest.fixture(scope="module")
def solved(tmp_path_factory: pytest.TempPathFactory) -> oe.Edit:
    rw = Rewriter(tiny_gen(), "3", stats_samples=20, progress=False, cache_dir=str(tmp_path_factory.mktemp("s")))
    return rw.rewrite(tiny_request(5))


@pytest.mark.parametrize("name", [CARD_NAME, PICTURE_NAME])
def test_pull_never_writes_an_altered_card_or_picture(fake_hub: FakeHub, tmp_path: Path, solved: oe.Edit,
                                                      name: str) -> None:
    push(fake_hub, solved, image=png_bytes())
    fake_hub.commit_files(REPO, {name: fake_hub.files(REPO)[name][:-7] + b"altered"})
    out = tmp_path / "out"
    with pytest.raises(ChecksumMismatchError, match=name.replace(".", r"\.")):
        pull_edit(REPO, out, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# ------------------------------------------------------------------- 5. a damaged cached download


def _cached(cache: Path, name: str) -> Path:
    (link,) = cache.rglob(f"snapshots/*/{name}")
    return link


def test_a_damaged_cached_blob_is_evicted_and_downloaded_again(fake_hub: FakeHub, tmp_path: Path,
                                                               solved: oe.Edit) -> None:
    push(fake_hub, solved)
    cache = tmp_path / "c"
    load(fake_hub, cache)
    link = _cached(cache, WEIGHTS_NAME)
    blob = link.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))  # what a bad disk or a damaged earlier download leaves behind
    gets = len(fake_hub.calls("GET", WEIGHTS_NAME))
    with pytest.warns(UserWarning, match="removed the damaged cached"), pytest.raises(ChecksumMismatchError):
        load(fake_hub, cache)
    assert not link.exists() and not link.is_symlink() and not blob.exists()
    assert load(fake_hub, cache).fingerprint == solved.fingerprint  # the next try downloads it again
    assert len(fake_hub.calls("GET", WEIGHTS_NAME)) > gets


def test_force_download_fetches_again(fake_hub: FakeHub, tmp_path: Path, solved: oe.Edit) -> None:
    push(fake_hub, solved)
    cache = tmp_path / "c"
    load(fake_hub, cache)
    gets = len(fake_hub.calls("GET", WEIGHTS_NAME))
    load(fake_hub, cache)
    assert len(fake_hub.calls("GET", WEIGHTS_NAME)) == gets  # served from the cache
    load(fake_hub, cache, force_download=True)
    assert len(fake_hub.calls("GET", WEIGHTS_NAME)) > gets


def test_cli_pull_and_apply_take_force_download(hf_env: FakeHub, tmp_path: Path, solved: oe.Edit,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import olam_edit.edit.publish as publish

    seen: list[bool] = []
    real = publish._snapshot

    def spy(*args, **kwargs):
        seen.append(kwargs.get("force_download"))
        return real(*args, **kwargs)

    monkeypatch.setattr(publish, "_snapshot", spy)
    push(hf_env, solved)
    assert main(["pull", REPO, "--out", str(tmp_path / "p"), "--force-download"]) == 0
    assert oe.Edit.load(tmp_path / "p").fingerprint == solved.fingerprint
    args = build_parser().parse_args(["apply", REPO, "--grid", "g.png", "--force-download"])
    assert args.force_download is True and seen == [True]
