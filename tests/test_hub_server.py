"""Drive ``FakeHub`` with the real ``huggingface_hub`` client over 127.0.0.1."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from hub_server import DEFAULT_TOKEN, FakeHub, HfSandbox
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

pytest_plugins = ["hub_server"]

REPO = "test-user/demo"


def _write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    """Write ``{relative path: bytes}`` under ``folder`` and return it."""
    for relative, data in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def _api(hub: FakeHub, token: str | bool = DEFAULT_TOKEN) -> HfApi:
    """An ``HfApi`` client pointed at ``hub``."""
    return HfApi(endpoint=hub.endpoint, token=token)


def _post_raw(hub: FakeHub, path: str, body: bytes, content_type: str) -> tuple[int, dict]:
    """POST raw bytes with the default token, bypassing the client's own validation."""
    request = urllib.request.Request(
        hub.endpoint + path,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {hub.token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def uploaded(fake_hub: FakeHub, tmp_path: Path) -> tuple[FakeHub, str, str]:
    """A repo with two commits made by ``upload_folder``; returns (hub, first oid, second oid)."""
    api = _api(fake_hub)
    api.create_repo(REPO)
    folder = _write_tree(tmp_path / "v1", {"weights.bin": b"v1", "cfg/edit.json": b'{"v": 1}'})
    first = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="v1")
    (folder / "weights.bin").write_bytes(b"v2")
    second = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="v2")
    return fake_hub, first.oid, second.oid


# ---------------------------------------------------------------------------------------- happy path


def test_create_repo_with_and_without_namespace(fake_hub: FakeHub) -> None:
    api = _api(fake_hub)
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == fake_hub.endpoint
    assert api.create_repo("solo").repo_id == "test-user/solo"  # default namespace = token's user
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409
    assert excinfo.value.response.json()["url"] == f"{fake_hub.endpoint}/{REPO}"  # the Hub's 409 names the repo
    again = api.create_repo(REPO, exist_ok=True)  # the client builds its RepoUrl from that "url"
    assert (again.repo_id, again.endpoint, str(again)) == (REPO, fake_hub.endpoint, f"{fake_hub.endpoint}/{REPO}")
    api.create_repo(REPO, repo_type="dataset")
    assert str(api.create_repo(REPO, repo_type="dataset", exist_ok=True)) == f"{fake_hub.endpoint}/datasets/{REPO}"
    assert list(fake_hub.files(REPO)) == [".gitattributes"]  # like the Hub's initial commit


def test_upload_folder_second_commit_and_old_revision(uploaded: tuple[FakeHub, str, str], tmp_path: Path) -> None:
    hub, first, second = uploaded
    assert first != second and len(first) == len(second) == 40
    assert hub.head(REPO) == second
    old = hf_hub_download(REPO, "weights.bin", revision=first, endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    new = hf_hub_download(REPO, "weights.bin", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(old).read_bytes() == b"v1" and Path(new).read_bytes() == b"v2"
    # the unchanged file was skipped by the client (preupload answered its oid), only weights.bin was sent
    assert hub.files(REPO, first)["cfg/edit.json"] == hub.files(REPO, second)["cfg/edit.json"]


def test_list_repo_files_and_model_info(uploaded: tuple[FakeHub, str, str]) -> None:
    hub, first, second = uploaded
    api = _api(hub)
    expected = [".gitattributes", "cfg/edit.json", "weights.bin"]
    assert sorted(api.list_repo_files(REPO)) == expected
    assert sorted(api.list_repo_files(REPO, revision=first)) == expected
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == second and info.id == REPO
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings}
    assert sizes["weights.bin"] == 2
    assert api.model_info(REPO, revision=first).sha == first
    folders = [entry.path for entry in api.list_repo_tree(REPO) if not hasattr(entry, "size")]
    assert folders == ["cfg"]


def test_hf_hub_download_fills_the_cache(uploaded: tuple[FakeHub, str, str], tmp_path: Path) -> None:
    hub, _, second = uploaded
    cache = tmp_path / "cache"
    path = Path(hf_hub_download(REPO, "cfg/edit.json", endpoint=hub.endpoint, cache_dir=cache))
    repo_dir = cache / "models--test-user--demo"
    assert path == repo_dir / "snapshots" / second / "cfg" / "edit.json"
    assert (repo_dir / "refs" / "main").read_text() == second
    assert json.loads(path.read_bytes()) == {"v": 1}
    assert [r.method for r in hub.calls(path_contains="/resolve/")] == ["HEAD", "GET"]


def test_snapshot_download(uploaded: tuple[FakeHub, str, str], tmp_path: Path) -> None:
    hub, first, _ = uploaded
    folder = Path(snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "c"))
    assert (folder / "weights.bin").read_bytes() == b"v2"
    assert (folder / "cfg" / "edit.json").exists()
    old = Path(snapshot_download(REPO, revision=first, endpoint=hub.endpoint, cache_dir=tmp_path / "c"))
    assert old.name == first and (old / "weights.bin").read_bytes() == b"v1"
    only = Path(snapshot_download(REPO, allow_patterns=["*.json"], endpoint=hub.endpoint, cache_dir=tmp_path / "d"))
    assert sorted(p.name for p in only.rglob("*") if p.is_file()) == ["edit.json"]


def test_create_commit_add_delete_parent_commit_and_pr(uploaded: tuple[FakeHub, str, str]) -> None:
    hub, first, second = uploaded
    api = _api(hub)
    ops = [CommitOperationDelete("cfg/"), CommitOperationAdd("notes.txt", b"hi")]
    info = api.create_commit(REPO, ops, commit_message="tidy", parent_commit=second)
    assert sorted(hub.files(REPO)) == [".gitattributes", "notes.txt", "weights.bin"]
    with pytest.raises(HfHubHTTPError) as excinfo:  # main has moved on since `first`
        api.create_commit(REPO, [CommitOperationAdd("x", b"x")], commit_message="late", parent_commit=first)
    assert excinfo.value.response.status_code == 412
    pr = api.create_commit(REPO, [CommitOperationAdd("x", b"x")], commit_message="propose", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and hub.head(REPO) == info.oid
    assert "x" in api.list_repo_files(REPO, revision=pr.pr_revision)
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [ref.ref for ref in refs.pull_requests] == ["refs/pr/1"]


def test_branches_tags_and_upload_folder_pull_request(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = _api(fake_hub)
    api.create_repo(REPO)
    seed = fake_hub.commit_files(REPO, {"a.txt": b"a"})
    api.create_branch(REPO, branch="dev")
    api.create_tag(REPO, tag="v1")
    folder = _write_tree(tmp_path / "up", {"b.txt": b"b"})
    on_dev = api.upload_folder(folder_path=folder, repo_id=REPO, revision="dev")
    pr = api.upload_folder(folder_path=folder, repo_id=REPO, create_pr=True)  # POST .../discussions
    assert pr.pr_revision == "refs/pr/1" and fake_hub.head(REPO, "refs/pr/1") == pr.oid
    assert fake_hub.head(REPO) == fake_hub.head(REPO, "v1") == seed  # main and the tag did not move
    assert fake_hub.head(REPO, "dev") == on_dev.oid
    tagged = hf_hub_download(REPO, "a.txt", revision="v1", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(tagged).read_bytes() == b"a"
    api.delete_repo(REPO)
    assert fake_hub.repos == {}


def test_range_requests(fake_hub: FakeHub) -> None:
    fake_hub.commit_files(REPO, {"digits.txt": b"0123456789"})
    url = f"{fake_hub.endpoint}/{REPO}/resolve/main/digits.txt"
    part = httpx2.get(url, headers={"Range": "bytes=2-4"})
    assert (part.status_code, part.content, part.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    assert httpx2.get(url, headers={"Range": "bytes=-3"}).content == b"789"
    assert httpx2.get(url, headers={"Range": "bytes=20-"}).status_code == 416


def test_dataset_repos_use_the_datasets_prefix(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = _api(fake_hub)
    api.create_repo(REPO, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="data.csv", repo_id=REPO, repo_type="dataset")
    path = hf_hub_download(REPO, "data.csv", repo_type="dataset", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"a,b\n"
    assert fake_hub.calls("HEAD", "/datasets/test-user/demo/resolve/")
    assert list(fake_hub.repos) == [("dataset", REPO)]


def test_tree_listing_follows_pagination(fake_hub: FakeHub) -> None:
    fake_hub.tree_page_size = 2
    names = {f"f{index}.txt": b"x" for index in range(5)}
    fake_hub.commit_files(REPO, names)
    assert sorted(_api(fake_hub).list_repo_files(REPO)) == sorted([*names, ".gitattributes"])
    assert len(fake_hub.calls("GET", "/tree/")) == 3


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("token", ["hf_wrong_token", False], ids=["bad-token", "no-token"])
def test_writes_without_a_valid_token_get_401(fake_hub: FakeHub, token: str | bool) -> None:
    with pytest.raises(HfHubHTTPError) as excinfo:
        _api(fake_hub, token).create_repo(REPO)
    # over http:// the client does not remap 401 to RepositoryNotFoundError (its regex wants https://)
    assert type(excinfo.value) is HfHubHTTPError
    assert excinfo.value.response.status_code == 401
    assert fake_hub.repos == {}


def test_commit_with_bad_token_changes_nothing(uploaded: tuple[FakeHub, str, str]) -> None:
    hub, _, _ = uploaded
    before = hub.state()
    with pytest.raises(HfHubHTTPError) as excinfo:
        _api(hub, "hf_wrong_token").create_commit(REPO, [CommitOperationAdd("a", b"a")], commit_message="m")
    assert excinfo.value.response.status_code == 401
    assert hub.state() == before


def test_repo_not_found(fake_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        _api(fake_hub).model_info("test-user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/missing", "a.txt", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        _api(fake_hub).upload_file(path_or_fileobj=b"a", path_in_repo="a", repo_id="test-user/missing")


def test_private_repo_needs_a_token(fake_hub: FakeHub) -> None:
    _api(fake_hub).create_repo(REPO, private=True)
    assert _api(fake_hub).model_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError):
        _api(fake_hub, token=False).model_info(REPO)


def test_revision_and_entry_not_found(uploaded: tuple[FakeHub, str, str], tmp_path: Path) -> None:
    hub, _, _ = uploaded
    with pytest.raises(RevisionNotFoundError):
        _api(hub).model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "weights.bin", revision="v9", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        _api(hub).create_commit(REPO, [CommitOperationAdd("a", b"a")], commit_message="m", revision="nope")


@pytest.mark.parametrize("kind", [500, "drop"])
@pytest.mark.parametrize("how", ["create_commit", "upload_folder"])
def test_commit_fault_raises_and_leaves_store_unchanged(
    uploaded: tuple[FakeHub, str, str], hf_sandbox: HfSandbox, tmp_path: Path, kind: int | str, how: str
) -> None:
    hub, _, _ = uploaded
    before = hub.state()
    api = _api(hub)
    # more failures than the client could retry (create_commit does not retry the commit POST at all)
    fault = hub.fail_next(kind, count=20, path_contains="/commit/")
    expected = HfHubHTTPError if kind == 500 else httpx2.TransportError
    with pytest.raises(expected):
        if how == "create_commit":
            api.create_commit(REPO, [CommitOperationAdd("new.bin", b"n")], commit_message="m")
        else:
            folder = _write_tree(tmp_path / "v3", {"new.bin": b"n"})
            api.upload_folder(folder_path=folder, repo_id=REPO)
    hub.clear_faults()
    assert hub.state() == before, hub.request_log()
    assert fault.hits == 1 + len(hf_sandbox.retry_sleeps)  # every try failed; back-offs were not slept
    if kind == 500:
        assert all(r.status == 500 for r in hub.calls("POST", "/commit/")[-fault.hits :])


def test_transient_500s_are_retried_by_upload_folder(
    uploaded: tuple[FakeHub, str, str], hf_sandbox: HfSandbox, tmp_path: Path
) -> None:
    """Without Xet, upload_folder is one create_commit: preupload, the LFS batch call and the object PUT
    are retried with back-off; the commit POST itself is not (a 500 there fails the call)."""
    hub, _, second = uploaded
    faults = [hub.fail_next(500, path_contains=part) for part in ("/preupload/", "/objects/batch", "/lfs-storage/")]
    folder = _write_tree(tmp_path / "v3", {"new.bin": b"n"})
    info = _api(hub).upload_folder(folder_path=folder, repo_id=REPO)
    assert [fault.hits for fault in faults] == [1, 1, 1] and hf_sandbox.retry_sleeps == [1, 1, 1]
    assert hub.repo(REPO).commits[info.oid].parent == second and hub.files(REPO)["new.bin"] == b"n"
    hub.fail_next(500, path_contains="/commit/")
    with pytest.raises(HfHubHTTPError):
        _api(hub).upload_folder(folder_path=_write_tree(tmp_path / "v4", {"more.txt": b"m"}), repo_id=REPO)
    assert hub.head(REPO) == info.oid and len(hub.calls("POST", "/commit/")) == 4  # v1, v2, v3 and the failed one


def test_lost_commit_response_still_commits(uploaded: tuple[FakeHub, str, str]) -> None:
    hub, _, second = uploaded
    hub.fail_next("drop_after", path_contains="/commit/")
    with pytest.raises(httpx2.TransportError):
        _api(hub).create_commit(REPO, [CommitOperationAdd("a", b"a")], commit_message="m")
    assert hub.head(REPO) != second and "a" in hub.files(REPO)


def test_injected_fault_matches_method_and_path(uploaded: tuple[FakeHub, str, str]) -> None:
    hub, _, _ = uploaded
    fault = hub.fail_next(503, count=2, path_contains="/tree/", method="GET")
    _api(hub).model_info(REPO)  # not matched
    assert fault.hits == 0
    assert _api(hub).list_repo_files(REPO)  # 2 failures, then the client's third try succeeds
    assert fault.hits == 2
    with pytest.raises(ValueError):
        hub.fail_next("explode")
    with pytest.raises(ValueError):
        hub.fail_next(200)


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json\n", "not valid JSON"),
        (b'{"key": "file", "value": {}}\n', "first NDJSON line"),
        (b'{"key": "header", "value": {"summary": ""}}\n', "summary"),
        (
            b'{"key":"header","value":{"summary":"m"}}\n{"key":"file","value":{"path":"../x","content":"eA==",'
            b'"encoding":"base64"}}\n',
            "Invalid path",
        ),
        (
            b'{"key":"header","value":{"summary":"m"}}\n{"key":"file","value":{"path":"/abs","content":"eA==",'
            b'"encoding":"base64"}}\n',
            "Invalid path",
        ),
        (
            b'{"key":"header","value":{"summary":"m"}}\n{"key":"file","value":{"path":"a","content":"!!",'
            b'"encoding":"base64"}}\n',
            "base64",
        ),
        (
            b'{"key":"header","value":{"summary":"m"}}\n{"key":"deletedFile","value":{"path":"nope"}}\n',
            "doesn't exist",
        ),
        (b'{"key":"header","value":{"summary":"m"}}\n{"key":"lfsFile","value":{"path":"a"}}\n', "LFS"),
    ],
    ids=["not-json", "no-header", "empty-summary", "dotdot", "absolute", "bad-base64", "missing", "lfs"],
)
def test_malformed_commits_are_refused(uploaded: tuple[FakeHub, str, str], body: bytes, message: str) -> None:
    hub, _, _ = uploaded
    before = hub.state()
    status, payload = _post_raw(hub, f"/api/models/{REPO}/commit/main", body, "application/x-ndjson")
    assert status in (400, 404) and message in payload["error"]
    assert hub.state() == before


def test_client_maps_a_400_commit_to_bad_request(uploaded: tuple[FakeHub, str, str]) -> None:
    hub, _, _ = uploaded
    before = hub.state()
    with pytest.raises(BadRequestError):  # the client lets "a//b" through; the server refuses it
        _api(hub).create_commit(REPO, [CommitOperationAdd("a//b.txt", b"x")], commit_message="m")
    assert hub.state() == before


def test_request_log_records_method_path_and_status(fake_hub: FakeHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        _api(fake_hub).model_info("test-user/missing")
    assert [(r.method, r.path, r.status) for r in fake_hub.requests] == [("GET", "/api/models/test-user/missing", 404)]
    assert "GET /api/models/test-user/missing -> 404" in fake_hub.request_log()


# ---------------------------------------------------------------------------------------- lifecycle


def test_context_manager_binds_loopback_and_releases_the_port() -> None:
    with FakeHub(tokens=["tok"]) as hub:
        assert hub.endpoint.startswith("http://127.0.0.1:") and hub.token == "tok"
        port = hub.port
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    hub.stop()  # idempotent
