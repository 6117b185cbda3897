"""The Hub's real upload path: preupload says "lfs", the client uses the git LFS batch API ("basic"
transfer: PUT to a signed storage URL, verify, then an ``lfsFile`` commit), and LFS files come back
through a redirect to the storage host. Faults on that path leave no commit and one clear error.

The real huggingface_hub client drives FakeHub on 127.0.0.1 (``hf_sandbox`` turns Xet off: the
2.4.0 client would otherwise upload through Xet whenever ``hf_xet`` is installed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import hub_server
import pytest
import torch
from hub_server import FakeHub, HfSandbox, lfs_pointer, lfs_rules, looks_binary, tracked_by_lfs
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.hf_api import RepoFile
from test_hub import png_bytes, tiny_gen

import olam_edit as oe
from olam_edit.cli import main
from olam_edit.errors import HubConnectionError, HubError
from olam_edit.hub.stats import push_stats

REPO = "test-user/lfs-edit"
BATCH = ".git/info/lfs/objects/batch"
VERIFY = ".git/info/lfs/objects/verify"
STORAGE = "/lfs-storage/"
SAFETENSORS_SAMPLE = b"\x98\x00\x00\x00\x00\x00\x00\x00{" + b" " * 40  # a safetensors header length, then JSON


@pytest.fixture(scope="module")
def edit() -> oe.Edit:
    """A small random rank-1 edit of the tiny generator's layer '3'."""
    gen = tiny_gen()
    h = gen.handle("3")
    g = torch.Generator().manual_seed(12)
    D = torch.linalg.qr(torch.randn(h.key_dim, 1, generator=g))[0].T.contiguous()  # [1, in]
    lam = torch.randn(h.lam_of(h.effective_weight().detach(), D).shape, generator=g) * 0.01
    return oe.Edit.create(gen.model, {"3": oe.Delta(lam, D, h.layout)}, base_model=gen.name, license="mit",
                          rule="a faint tint")


def _api(hub: FakeHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=hub.token)


def _request(hub: FakeHub, method: str, url: str, body: bytes | None = None, *, token: bool = True,
             content_type: str = "application/json") -> tuple[int, bytes]:
    """Send one raw request (no client-side validation); returns (status, body)."""
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {hub.token}"} if token else {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _batch(hub: FakeHub, repo: str, objects: list[dict]) -> dict:
    body = json.dumps({"operation": "upload", "transfers": ["basic"], "objects": objects}).encode()
    status, answer = _request(hub, "POST", f"{hub.endpoint}/{repo}{BATCH}", body)
    assert status == 200, answer
    return json.loads(answer)


def _one_line_push_error(error: BaseException, repo: str) -> str:
    text = str(error)
    assert "\n" not in text and text.startswith(f"cannot push the edit to {repo}"), text
    return text


# ----------------------------------------------------------------------------------- upload modes


@pytest.mark.parametrize(
    ("path", "size", "sample", "mode"),
    [
        ("edit.safetensors", 60, SAFETENSORS_SAMPLE, "lfs"),  # tracked by .gitattributes (and binary)
        ("weights.bin", 2, b"v1", "lfs"),  # tracked by .gitattributes although the bytes are text
        ("before_after.png", 80, png_bytes()[:80], "lfs"),  # not tracked, but binary (not UTF-8)
        ("notes.bin.txt", 4, b"a\x00bc", "lfs"),  # a NUL byte is binary
        ("README.md", 20, "# Café ✓ ünïcode".encode(), "regular"),  # UTF-8 text
        ("cut.txt", 3, "é".encode() + "✓".encode()[:1], "regular"),  # a character cut at the sample's end
        ("big.txt", 10 * 1024 * 1024 + 1, b"abc", "lfs"),  # over the 10 MiB limit of plain git files
        ("empty.bin", 0, b"", "regular"),  # empty files travel inline
    ],
)
def test_preupload_answers_like_the_hub(fake_hub: FakeHub, path: str, size: int, sample: bytes, mode: str) -> None:
    fake_hub.create_repo(REPO)
    files = [{"path": path, "size": size, "sample": base64.b64encode(sample).decode()}]
    status, body = _request(fake_hub, "POST", f"{fake_hub.endpoint}/api/models/{REPO}/preupload/main",
                            json.dumps({"files": files}).encode())
    assert status == 200, body
    answer = json.loads(body)["files"]
    assert answer == [{"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": None}]


def test_gitattributes_rules_follow_git() -> None:
    rules = lfs_rules(b"# comment\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                      b"saved_model/**/* filter=lfs\n/top.ckpt filter=lfs\nkeep/*.safetensors -filter\n")
    assert tracked_by_lfs("a/b/c.safetensors", rules) and tracked_by_lfs("edit.safetensors", rules)
    assert not tracked_by_lfs("keep/x.safetensors", rules) and tracked_by_lfs("keep/deeper/x.safetensors", rules)
    assert tracked_by_lfs("saved_model/v1/variables.data", rules) and tracked_by_lfs("saved_model/x.pb", rules)
    assert not tracked_by_lfs("other/saved_model/x.pb", rules)
    assert tracked_by_lfs("top.ckpt", rules) and not tracked_by_lfs("sub/top.ckpt", rules)
    assert not tracked_by_lfs("notes.txt", rules) and not tracked_by_lfs("x.safetensors.txt", rules)
    assert looks_binary(b"\xff\xfe") and not looks_binary("ok ✓".encode())
    assert lfs_pointer(b"abc").decode().splitlines() == [
        "version https://git-lfs.github.com/spec/v1",
        f"oid sha256:{hashlib.sha256(b'abc').hexdigest()}",
        "size 3",
    ]


def test_the_repos_own_gitattributes_decide(fake_hub: FakeHub) -> None:
    fake_hub.commit_files(REPO, {".gitattributes": b"*.txt filter=lfs\n"})
    api = _api(fake_hub)
    api.upload_file(path_or_fileobj=b"tracked text", path_in_repo="notes.txt", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"\x00\x01binary", path_in_repo="raw.dat", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="a.safetensors", repo_id=REPO)  # no rule for it now
    assert set(fake_hub.lfs_files(REPO)) == {"notes.txt", "raw.dat"}
    fake_hub.lfs_threshold = 64  # "large" files: larger than the threshold
    api.upload_file(path_or_fileobj=b"x" * 65, path_in_repo="long.json", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"x" * 64, path_in_repo="short.json", repo_id=REPO)
    assert set(fake_hub.lfs_files(REPO)) == {"notes.txt", "raw.dat", "long.json"}


# --------------------------------------------------------------------------------- the LFS round trip


def test_a_pushed_edit_goes_through_the_lfs_batch_api(fake_hub: FakeHub, tmp_path: Path, edit: oe.Edit) -> None:
    url = edit.push_to_hub(REPO, endpoint=fake_hub.endpoint, token=fake_hub.token, image=png_bytes())
    files = fake_hub.files(REPO)
    weights = hashlib.sha256(files["edit.safetensors"]).hexdigest()
    picture = hashlib.sha256(files["before_after.png"]).hexdigest()
    assert fake_hub.lfs_files(REPO) == {"before_after.png": picture, "edit.safetensors": weights}
    uploaded = {(u.repo_id, u.oid, u.size) for u in fake_hub.lfs_uploads}
    sizes = {name: len(files[name]) for name in ("edit.safetensors", "before_after.png")}
    assert uploaded == {(REPO, weights, sizes["edit.safetensors"]), (REPO, picture, sizes["before_after.png"])}
    flow = [(r.method, r.path.split("/")[-1] if STORAGE in r.path else r.path) for r in fake_hub.requests]
    batch, verify = ("POST", f"/{REPO}{BATCH}"), ("POST", f"/{REPO}{VERIFY}")
    puts = [flow.index(("PUT", oid)) for oid in (weights, picture)]
    verifies = [index for index, step in enumerate(flow) if step == verify]
    assert flow.index(batch) < min(puts) and max(puts) < max(verifies) and len(verifies) == 2  # basic, then verify
    assert [step[0] for step in flow].count("PUT") == 2 and flow[-1] == ("POST", f"/api/models/{REPO}/commit/main")
    assert url.oid == fake_hub.head(REPO) and not [r for r in fake_hub.requests if "xet" in r.path.lower()]

    pulled = oe.Edit.from_pretrained(REPO, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "cache")
    assert pulled.fingerprint == edit.fingerprint
    resolved = [(r.method, r.status) for r in fake_hub.calls(path_contains="/resolve/")
                if r.path.endswith("/edit.safetensors")]
    assert resolved == [("HEAD", 302)]  # the Hub redirects; the bytes come from the storage host
    assert [r.status for r in fake_hub.calls("GET", f"{weights}/edit.safetensors")] == [200]
    blob = tmp_path / "cache" / "models--test-user--lfs-edit" / "blobs" / weights  # the cache names it by sha256
    assert blob.read_bytes() == files["edit.safetensors"]


def test_lfs_files_are_described_like_on_the_hub(fake_hub: FakeHub, tmp_path: Path) -> None:
    data = b"\x00" * 300 + b"payload"
    sha = hashlib.sha256(data).hexdigest()
    fake_hub.commit_files(REPO, {"w.bin": data, "cfg.json": b"{}"})
    api = _api(fake_hub)
    entries = {entry.path: entry for entry in api.list_repo_tree(REPO) if isinstance(entry, RepoFile)}
    assert entries["w.bin"].lfs.sha256 == sha and entries["w.bin"].size == len(data)
    assert entries["w.bin"].lfs.pointer_size == len(lfs_pointer(data)) and entries["cfg.json"].lfs is None
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    assert siblings["w.bin"].lfs.sha256 == sha and siblings["w.bin"].size == len(data)
    head = httpx2.head(f"{fake_hub.endpoint}/{REPO}/resolve/main/w.bin")
    assert head.status_code == 302 and head.headers["X-Linked-Etag"] == f'"{sha}"'
    assert head.headers["X-Linked-Size"] == str(len(data)) and head.headers["X-Repo-Commit"] == fake_hub.head(REPO)
    assert head.headers["Location"].startswith(fake_hub.storage_endpoint + "/")  # another origin, like a CDN
    assert not any(name.lower().startswith("x-xet") for name in head.headers)
    ranged = httpx2.get(head.headers["Location"], headers={"Range": "bytes=300-"})
    assert (ranged.status_code, ranged.content) == (206, b"payload")
    path = hf_hub_download(REPO, "w.bin", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == data


def test_an_object_already_stored_is_not_uploaded_again(fake_hub: FakeHub) -> None:
    api = _api(fake_hub)
    api.create_repo(REPO)
    first = api.upload_file(path_or_fileobj=b"\x00same", path_in_repo="a.bin", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"\x00same", path_in_repo="b.bin", repo_id=REPO)  # same object, other path
    assert len(fake_hub.lfs_uploads) == 1 and len(fake_hub.calls("PUT", STORAGE)) == 1
    assert fake_hub.files(REPO)["b.bin"] == b"\x00same"
    again = api.upload_file(path_or_fileobj=b"\x00same", path_in_repo="a.bin", repo_id=REPO)  # unchanged: no commit
    assert len(fake_hub.repo(REPO).commits) == 3 and again.oid == fake_hub.head(REPO) != first.oid


# ----------------------------------------------------------------------- the server checks the objects


def _announce(hub: FakeHub, data: bytes) -> dict:
    """Create the repo and ask the batch API where to upload ``data``; returns the object's answer."""
    hub.create_repo(REPO)
    answer = _batch(hub, REPO, [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}])
    assert answer["transfer"] == "basic"
    return answer["objects"][0]


def test_the_storage_host_checks_signature_size_and_sha256(fake_hub: FakeHub) -> None:
    data = b"\x00object bytes"
    upload = _announce(fake_hub, data)["actions"]["upload"]["href"]
    query = parse_qs(urlsplit(upload).query)
    tampered = upload.replace(f"size={query['size'][0]}", f"size={len(data) + 1}")
    later = upload.replace(f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 3600}")
    unsigned = upload.split("?")[0]
    for url in (tampered, later, unsigned):
        assert _request(fake_hub, "PUT", url, data, token=False)[0] == 403
    status, body = _request(fake_hub, "PUT", upload, data[:-1], token=False)
    assert status == 400 and b"announced" in body
    status, body = _request(fake_hub, "PUT", upload, data[:-1] + b"?", token=False)
    assert status == 400 and b"sha256" in body
    assert fake_hub.lfs_uploads == [] and fake_hub.repo(REPO).lfs_objects == {}
    assert _request(fake_hub, "PUT", upload, data, token=False)[0] == 200  # no token needed: the URL is signed
    assert [u.oid for u in fake_hub.lfs_uploads] == [hashlib.sha256(data).hexdigest()]
    assert "actions" not in _batch(fake_hub, REPO, [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}])[
        "objects"][0]  # stored now: nothing to do


def test_verify_and_the_commit_refuse_missing_or_mismatched_objects(fake_hub: FakeHub) -> None:
    data = b"\x00stored object"
    oid = hashlib.sha256(data).hexdigest()
    _request(fake_hub, "PUT", _announce(fake_hub, data)["actions"]["upload"]["href"], data, token=False)
    verify = f"{fake_hub.endpoint}/{REPO}{VERIFY}"
    assert _request(fake_hub, "POST", verify, json.dumps({"oid": oid, "size": len(data)}).encode())[0] == 200
    assert _request(fake_hub, "POST", verify, json.dumps({"oid": oid, "size": 3}).encode())[0] == 422
    assert _request(fake_hub, "POST", verify, json.dumps({"oid": "0" * 64, "size": 3}).encode())[0] == 404
    before = fake_hub.state()
    header = b'{"key":"header","value":{"summary":"m"}}\n'

    def commit(oid_: str, size: int) -> tuple[int, str]:
        line = json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid_, "size": size}})
        status, body = _request(fake_hub, "POST", f"{fake_hub.endpoint}/api/models/{REPO}/commit/main",
                                header + line.encode() + b"\n", content_type="application/x-ndjson")
        return status, json.loads(body).get("error", "")

    status, message = commit("1" * 64, len(data))
    assert status == 400 and "never uploaded" in message
    status, message = commit(oid, len(data) + 1)
    assert status == 400 and f"holds {len(data)}" in message
    inline = json.dumps({"key": "file", "value": {"path": "w.bin", "encoding": "base64",
                                                  "content": base64.b64encode(data).decode()}})
    status, body = _request(fake_hub, "POST", f"{fake_hub.endpoint}/api/models/{REPO}/commit/main",
                            header + inline.encode() + b"\n", content_type="application/x-ndjson")
    assert status == 400 and b"binary" in body  # binary bytes cannot be committed inline
    assert fake_hub.state() == before
    assert commit(oid, len(data))[0] == 200 and fake_hub.lfs_files(REPO) == {"w.bin": oid}


def test_batch_refuses_what_it_cannot_serve(fake_hub: FakeHub) -> None:
    fake_hub.create_repo(REPO)
    url = f"{fake_hub.endpoint}/{REPO}{BATCH}"
    objects = [{"oid": "a" * 64, "size": 1}]
    multipart_only = {"operation": "upload", "transfers": ["multipart"], "objects": objects}
    download = {"operation": "download", "objects": objects}
    for payload in (multipart_only, download):
        assert _request(fake_hub, "POST", url, json.dumps(payload).encode())[0] == 422
    assert _request(fake_hub, "POST", url, json.dumps({"operation": "upload", "objects": objects}).encode(),
                    token=False)[0] == 401
    answer = _batch(fake_hub, REPO, [{"oid": "nothex", "size": 1}, {"oid": "b" * 64, "size": -1}])
    assert [item["error"]["code"] for item in answer["objects"]] == [422, 422]


# --------------------------------------------------------------------------- faults on the LFS path


@pytest.mark.parametrize(
    ("kind", "error", "says"),
    [
        (500, HubError, "the Hub answered HTTP 500"),  # the storage host keeps failing
        ("drop", HubConnectionError, "the connection to the Hub failed"),  # the connection keeps dropping
        ("corrupt", HubError, "sha256"),  # bytes damaged in transit: the storage host sees another sha256
        ("truncate", HubError, "announced"),  # fewer bytes than announced: the storage host sees another size
    ],
)
def test_a_failed_object_upload_leaves_no_commit(fake_hub: FakeHub, hf_sandbox: HfSandbox, edit: oe.Edit,
                                                 kind: int | str, error: type, says: str) -> None:
    fake_hub.commit_files(REPO, {"notes.txt": b"before"})
    before, head = fake_hub.state(), fake_hub.head(REPO)
    commits_before = len(fake_hub.calls("POST", "/commit/"))
    fault = fake_hub.fail_next(kind, count=20, path_contains=STORAGE, method="PUT")
    with pytest.raises(error) as info:
        edit.push_to_hub(REPO, endpoint=fake_hub.endpoint, token=fake_hub.token)
    assert type(info.value) is error
    text = _one_line_push_error(info.value, REPO)
    assert "uploading edit.safetensors failed" in text and says in text
    fake_hub.clear_faults()
    assert fake_hub.state() == before and fake_hub.head(REPO) == head  # main did not move
    assert len(fake_hub.calls("POST", "/commit/")) == commits_before and fake_hub.lfs_uploads == []
    assert fault.hits == (1 if kind in ("corrupt", "truncate") else 1 + len(hf_sandbox.retry_sleeps))


def test_olam_edit_push_reports_a_failed_upload_in_one_line(hf_env: FakeHub, tmp_path: Path, edit: oe.Edit,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = edit.save(tmp_path / "edit")
    hf_env.create_repo(REPO)
    before = hf_env.state()
    hf_env.fail_next(503, count=20, path_contains=STORAGE, method="PUT")
    assert main(["push", str(folder), REPO]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    assert lines[0].startswith(f"olam-edit push: error: cannot push the edit to {REPO}")
    assert "uploading edit.safetensors failed" in lines[0] and "HTTP 503" in lines[0]
    assert hf_env.state() == before


def test_a_file_over_the_size_limit_is_refused_before_any_upload(fake_hub: FakeHub, edit: oe.Edit) -> None:
    fake_hub.max_lfs_size = 100  # smaller than the edit file
    with pytest.raises(HubError) as info:
        edit.push_to_hub(REPO, endpoint=fake_hub.endpoint, token=fake_hub.token)
    text = _one_line_push_error(info.value, REPO)
    assert "refused to store a large file" in text and "maximum file size of 100 bytes" in text
    assert fake_hub.calls("PUT", STORAGE) == [] and fake_hub.calls("POST", "/commit/") == []
    assert fake_hub.files(REPO) == {".gitattributes": fake_hub.files(REPO)[".gitattributes"]}


def test_a_failed_statistics_upload_leaves_no_commit(hf_env: FakeHub, tmp_path: Path) -> None:
    sm = tiny_gen().stats("3", samples=20, batch_size=10, cache_dir=tmp_path / "s", progress=False)
    hf_env.create_repo("test-user/stats")
    before = hf_env.state()
    hf_env.fail_next("truncate", path_contains=STORAGE, method="PUT")
    with pytest.raises(HubError) as info:
        push_stats(sm, "test-user/stats")
    text = str(info.value)
    assert "\n" not in text and text.startswith("cannot push statistics to test-user/stats: uploading stats/")
    assert hf_env.state() == before
    push_stats(sm, "test-user/stats")  # the fault is spent: the same push now lands, through LFS
    assert [path for path in hf_env.lfs_files("test-user/stats") if path.startswith("stats/")]


def test_the_storage_urls_expire_and_the_ports_are_released(fake_hub: FakeHub,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\x00abc"
    monkeypatch.setattr(hub_server, "SIGNED_URL_SECONDS", -1)  # URLs that expired a second before they were made
    upload = _announce(fake_hub, data)["actions"]["upload"]["href"]
    assert urlsplit(upload).netloc == f"127.0.0.1:{fake_hub.storage_port}" != urlsplit(fake_hub.endpoint).netloc
    status, body = _request(fake_hub, "PUT", upload, data, token=False)
    assert status == 403 and b"expired" in body and fake_hub.lfs_uploads == []
    query = {key: values[0] for key, values in parse_qs(urlsplit(upload).query).items()}
    forged = upload.split("?")[0] + "?" + urlencode({**query, "signature": "0" * 64})
    assert _request(fake_hub, "PUT", forged, data, token=False)[0] == 403
    with FakeHub() as hub:
        ports = (hub.port, hub.storage_port)
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
