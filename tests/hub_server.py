"""An in-memory, Hugging Face Hub-compatible HTTP server for tests.

``FakeHub`` serves the subset of the Hub HTTP API that ``huggingface_hub`` (pinned 2.4.0) uses to
create repos, commit files and download them again, on ``127.0.0.1`` and two free ports (the Hub
and its storage host), from background threads. It uses only the standard library and keeps
everything in memory.

Typical use with the real client::

    def test_roundtrip(fake_hub, tmp_path):
        api = HfApi(endpoint=fake_hub.endpoint, token=fake_hub.token)
        api.create_repo("test-user/demo")
        api.upload_folder(folder_path=tmp_path / "out", repo_id="test-user/demo")
        path = hf_hub_download("test-user/demo", "delta.safetensors", endpoint=fake_hub.endpoint,
                               cache_dir=tmp_path / "cache")

What it models:

* repos of type model, dataset and space, each holding commits (full file snapshots), branches,
  tags and pull requests (``refs/pr/N``);
* the Hub's two upload paths. ``preupload`` answers ``"lfs"`` for a file that is larger than
  ``lfs_threshold`` (10 MiB, the Hub's limit for plain git files), that a ``filter=lfs`` rule of
  the revision's ``.gitattributes`` tracks (new repos start with ``*.safetensors``, ``*.bin`` and
  ``*.pt`` rules), or whose 512-byte sample looks binary (a NUL byte or invalid UTF-8), and
  ``"regular"`` otherwise. Regular files travel base64-inline in the NDJSON commit (binary or large
  ones are refused there, as the Hub refuses them). LFS files go through the git LFS batch API
  (``POST /{repo}.git/info/lfs/objects/batch``, "basic" transfer): each object is PUT to a signed
  URL on a second port (the storage host, like the Hub's S3 bucket), which checks its size and
  sha256, then verified (``.../objects/verify``), then committed as an ``lfsFile`` pointer; a commit
  naming an object that was not uploaded, or with another size, is refused. Downloads of LFS files
  answer ``resolve`` with a 302 to a signed storage URL carrying ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub redirects to its CDN;
* Xet is never advertised (no ``X-Xet-*`` header, no Xet token route). huggingface_hub 2.4.0 picks
  Xet on its own whenever ``hf_xet`` is installed, so ``hf_sandbox`` sets ``HF_HUB_DISABLE_XET``;
* a repeated ``create_repo`` answers 409 with the repo's ``url`` in the body (``exist_ok=True``
  reads it);
* Space settings: ``create_repo(repo_type="space")`` needs an ``sdk`` (gradio, streamlit, docker or
  static) and keeps ``hardware``, ``variables`` and ``secrets`` (never shown); the variables API
  (``GET|POST|DELETE /api/spaces/{id}/variables``), ``POST .../hardware`` and ``GET .../runtime``
  (stage ``BUILDING``: nothing is ever built or run here) work as on the Hub, for Space repos only;
* the error headers (``X-Error-Code``/``X-Error-Message``) that the client maps to
  ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``RemoteEntryNotFoundError``;
* bearer-token auth for every write; an invalid token is refused on every request;
* a request log (``FakeHub.requests``, storage requests included), a log of stored LFS objects
  (``FakeHub.lfs_uploads``) and fault injection (``FakeHub.fail_next``).

Not modelled: building or running Spaces (tests start a downloaded Space themselves), Xet storage,
the LFS "multipart" transfer and the batch "download" operation, Hub-side YAML validation, namespace
permissions, rate limits, gated repos, ``paths-info``, file copies between repos.

Importing this module has no side effects: the server starts only when asked to. Register the
fixtures with ``pytest_plugins = ["hub_server"]`` (tests/ must be on ``sys.path``, as with pytest's
default ``prepend`` import mode). The module holds no ``assert``, hence PYTEST_DONT_REWRITE: pytest
need not (and, once a test module imported it, cannot) rewrite it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import fnmatch
import hashlib
import hmac
import importlib
import json
import re
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest

DEFAULT_TOKEN = "hf_test_token"
DEFAULT_USER = "test-user"
HOST = "127.0.0.1"
MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_CHUNKS = 1 << 20  # chunks of one chunked body
MAX_TRAILERS = 64  # trailer lines after the last chunk
DEFAULT_TREE_PAGE_SIZE = 1000

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DROP_KINDS = ("drop", "drop_after")
BODY_KINDS = ("corrupt", "truncate")  # alter the received body before it is processed

LFS_THRESHOLD = 10 * 1024 * 1024  # larger files must go through LFS, as on the Hub
SAMPLE_SIZE = 512  # bytes of a file the client sends to preupload (and the server sniffs)
STORAGE_PREFIX = "lfs-storage"  # first path segment of every URL on the storage host
SIGNED_URL_SECONDS = 3600
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"
LFS_SPEC = "https://git-lfs.github.com/spec/v1"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_VARIABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # a Space variable's or secret's key
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
_OID_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PR_REF_RE = re.compile(r"refs/pr/(\d+)")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")

INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


# --------------------------------------------------------------------------------------------- helpers


class HubError(Exception):
    """An error answered to the client as a JSON body plus the Hub's ``X-Error-*`` headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        body: Mapping[str, Any] | None = None,
        **headers: str,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = dict(body or {})  # extra JSON fields next to "error"
        self.headers = dict(headers)


def git_blob_oid(data: bytes) -> str:
    """Return the git object id of ``data`` stored as a blob (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    """Return the current UTC time in the Hub's date format (``2024-01-31T12:00:00.000Z``)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _not_found(message: str, code: str, **headers: str) -> HubError:
    """Build a 404 carrying the ``X-Error-Code`` the client maps to an exception class."""
    return HubError(404, message, code, **headers)


def check_repo_path(path: Any, *, folder: bool = False) -> str:
    """Validate a path inside a repo: relative, ``/``-separated, no ``.``/``..``/empty parts, no ``.git``.

    A folder path may end with one ``/``, which is stripped. Raises a 400 ``HubError`` otherwise.
    """
    if not isinstance(path, str) or not path:
        raise HubError(400, f"Invalid path: {path!r}")
    if folder and path.endswith("/"):
        path = path[:-1]
    parts = path.split("/")
    bad_part = any(part in ("", ".", "..") for part in parts)
    if path.startswith("/") or "\\" in path or "\0" in path or bad_part or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _parent_dirs(path: str) -> Iterator[str]:
    """Yield ``a`` and ``a/b`` for ``a/b/c``."""
    parts = path.split("/")
    for index in range(1, len(parts)):
        yield "/".join(parts[:index])


def _is_true(value: str | None) -> bool:
    """Parse a boolean query parameter as the Hub does (``1``/``true``)."""
    return value is not None and value.lower() in ("1", "true")


# ------------------------------------------------------------------------------------------- git LFS


def lfs_pointer(data: bytes) -> bytes:
    """Return the git LFS pointer file that stands for ``data`` in git (what the Hub stores in the tree)."""
    return f"version {LFS_SPEC}\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


def looks_binary(sample: bytes) -> bool:
    """Whether a file's first bytes look binary: a NUL byte, or bytes that are not UTF-8.

    A multi-byte character cut at the end of the sample does not count (the sample is a prefix).
    """
    if b"\0" in sample:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


def lfs_rules(gitattributes: bytes | None) -> list[tuple[str, bool]]:
    """Return ``(pattern, tracked)`` for every ``.gitattributes`` line that sets or unsets ``filter``.

    ``filter=lfs`` tracks; ``-filter``, ``!filter`` or another filter untracks. Later lines win.
    """
    rules: list[tuple[str, bool]] = []
    for line in (gitattributes or b"").decode("utf-8", "replace").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        for attribute in words[1:]:
            if attribute == "filter=lfs":
                rules.append((words[0], True))
            elif attribute in ("-filter", "!filter") or attribute.startswith("filter="):
                rules.append((words[0], False))
    return rules


def tracked_by_lfs(path: str, rules: Iterable[tuple[str, bool]]) -> bool:
    """Whether the last rule matching ``path`` (gitignore-style patterns) tracks it with LFS."""
    tracked = False
    for pattern, value in rules:
        if _attribute_pattern_matches(pattern, path):
            tracked = value
    return tracked


def _attribute_pattern_matches(pattern: str, path: str) -> bool:
    """Match a ``.gitattributes`` pattern: without ``/`` it matches the file name at any depth,
    with one it matches the whole path from the repo root (``*`` stays within a folder, ``**``
    crosses folders; ``[...]`` classes are only supported in patterns without ``/``)."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    regex: list[str] = []
    index, pattern = 0, pattern.lstrip("/")
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            regex.append(".*")
            index += 2
        else:
            char = pattern[index]
            regex.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            index += 1
    return re.fullmatch("".join(regex), path) is not None


@dataclass(frozen=True)
class LfsUpload:
    """One LFS object the storage host accepted (its size and sha256 checked)."""

    repo_type: str
    repo_id: str
    oid: str
    size: int


# ----------------------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Commit:
    """One commit: metadata plus the full snapshot of the repo's files after it.

    ``files`` holds every file's content, LFS files included; ``lfs`` names the files that git
    stores as LFS pointers (their content lives in the repo's LFS object store too).
    """

    oid: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: Mapping[str, bytes]
    lfs: frozenset[str] = frozenset()

    def blob_oid(self, path: str) -> str:
        """The git blob id of ``path`` in the tree: of its LFS pointer for an LFS file."""
        data = self.files[path]
        return git_blob_oid(lfs_pointer(data) if path in self.lfs else data)

    def content_oid(self, path: str) -> str:
        """The id preupload reports for an existing file: the sha256 of an LFS file, else the blob id."""
        return hashlib.sha256(self.files[path]).hexdigest() if path in self.lfs else self.blob_oid(path)

    def lfs_info(self, path: str, sha_key: str = "oid") -> dict[str, Any] | None:
        """The ``lfs`` block of a tree entry (``sha_key="oid"``) or a sibling (``"sha256"``); None if regular."""
        if path not in self.lfs:
            return None
        data = self.files[path]
        return {sha_key: hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(lfs_pointer(data))}

    def tree_oid(self, folder: str) -> str:
        """A stable pseudo git tree id for ``folder`` (changes whenever a file below it changes)."""
        prefix = f"{folder}/"
        digest = hashlib.sha1(b"tree\0")
        for path in sorted(p for p in self.files if p.startswith(prefix)):
            digest.update(f"{path}\0{self.blob_oid(path)}\n".encode())
        return digest.hexdigest()


@dataclass
class Discussion:
    """A discussion or pull request. A pull request owns the ref ``refs/pr/<num>``."""

    num: int
    title: str
    description: str
    author: str
    is_pull_request: bool
    created_at: str
    base_ref: str = "refs/heads/main"
    status: str = "draft"


@dataclass
class Repo:
    """An in-memory repository."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pr_heads: dict[int, str] = field(default_factory=dict)
    discussions: dict[int, Discussion] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content, committed or not
    sdk: str | None = None  # Space repos: the SDK, and the settings the Space runs with
    hardware: str | None = None  # the requested hardware flavor (None: the free default)
    variables: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {value, description, updatedAt}
    secrets: dict[str, str] = field(default_factory=dict)  # key -> value (the API never shows them)

    @property
    def url_path(self) -> str:
        """The repo's path in web URLs, e.g. ``datasets/user/name``."""
        return URL_PREFIXES[self.repo_type] + self.repo_id

    def target_of(self, revision: str) -> str | None:
        """Return the commit oid a revision (oid, branch, tag, ``refs/...``) points to, or None."""
        if revision in self.commits:
            return revision
        branch = revision.removeprefix("refs/heads/")
        if branch in self.branches:
            return self.branches[branch]
        tag = revision.removeprefix("refs/tags/")
        if tag in self.tags:
            return self.tags[tag]
        match = _PR_REF_RE.fullmatch(revision)
        return self.pr_heads.get(int(match.group(1))) if match else None

    def resolve(self, revision: str) -> Commit:
        """Return the commit for ``revision`` or raise the Hub's RevisionNotFound error."""
        oid = self.target_of(revision)
        if oid is None:
            raise _not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def history(self, revision: str) -> list[Commit]:
        """Return the commits reachable from ``revision``, newest first."""
        commits = [self.resolve(revision)]
        while commits[-1].parent is not None:
            commits.append(self.commits[commits[-1].parent])
        return commits

    def state(self) -> dict[str, Any]:
        """Return a plain, comparable summary of every ref and commit."""
        return {
            "private": self.private,
            "branches": dict(self.branches),
            "tags": dict(self.tags),
            "pull_requests": dict(self.pr_heads),
            "discussions": sorted(self.discussions),
            "commits": sorted(self.commits),
        }


@dataclass
class RequestRecord:
    """One request the server received. ``status`` is None when the connection was dropped."""

    method: str
    path: str
    query: str
    status: int | None
    fault: str | None = None

    def __str__(self) -> str:
        query = f"?{self.query}" if self.query else ""
        fault = f" [fault: {self.fault}]" if self.fault else ""
        return f"{self.method} {self.path}{query} -> {self.status}{fault}"


@dataclass
class Fault:
    """A pending injected failure. ``hits`` counts the requests it has already failed."""

    kind: int | str
    count: int
    path_contains: str | None = None
    method: str | None = None
    hits: int = 0

    @property
    def remaining(self) -> int:
        """How many more matching requests this fault will fail."""
        return self.count - self.hits

    def matches(self, method: str, path: str, raw_path: str) -> bool:
        """Whether a request with this method and path is one this fault targets."""
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_contains is None or self.path_contains in path or self.path_contains in raw_path


@dataclass
class _Request:
    """A parsed incoming request."""

    method: str
    raw_path: str
    segments: list[str]
    query: dict[str, list[str]]
    query_string: str
    headers: Message
    body: bytes
    host: str = "hub"  # which of the two servers received it: "hub" or "storage"

    @property
    def path(self) -> str:
        """The percent-decoded path, for logs and fault matching."""
        return unquote(self.raw_path)

    def param(self, name: str) -> str | None:
        """Return the first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> dict[str, Any]:
        """Decode the body as a JSON object or raise a 400."""
        try:
            payload = json.loads(self.body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise HubError(400, f"Body is not valid JSON: {error}") from error
        if not isinstance(payload, dict):
            raise HubError(400, "Body must be a JSON object")
        return payload


@dataclass
class _Response:
    """A response to send: status, headers and body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(payload: Any, status: int = 200, **headers: str) -> _Response:
    """Serialize ``payload`` as a JSON response."""
    body = json.dumps(payload).encode()
    return _Response(status, body, {"Content-Type": "application/json", **headers})


def _error_response(error: HubError) -> _Response:
    """Render a ``HubError`` the way the Hub does: JSON ``{"error": ...}`` plus ``X-Error-*`` headers."""
    headers = {"X-Error-Message": error.message, **error.headers}
    if error.code is not None:
        headers["X-Error-Code"] = error.code
    return _json_response({"error": error.message, **error.body}, error.status, **headers)


# ----------------------------------------------------------------------------------- commit payloads


@dataclass(frozen=True)
class _Operation:
    """One operation from an NDJSON commit body: ``file``, ``lfsFile``, ``deletedFile`` or ``deletedFolder``.

    An ``lfsFile`` carries the object's ``oid`` (sha256) and ``size``; it becomes a ``file`` with
    ``lfs=True`` and the object's content once the server has found the uploaded object.
    """

    key: str
    path: str
    content: bytes = b""
    lfs: bool = False
    oid: str | None = None
    size: int | None = None


def parse_commit_payload(body: bytes) -> tuple[dict[str, Any], list[_Operation]]:
    """Parse and validate an NDJSON commit body into its header and operations (400 if malformed)."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise HubError(400, "Empty commit payload")
    items = [_parse_ndjson_line(number, line) for number, line in enumerate(lines, start=1)]
    if items[0]["key"] != "header":
        raise HubError(400, "The first NDJSON line must be the commit header")
    header = items[0]["value"]
    summary = header.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise HubError(400, "Commit header needs a non-empty 'summary'")
    if not isinstance(header.get("description", ""), str):
        raise HubError(400, "Commit 'description' must be a string")
    parent = header.get("parentCommit")
    if parent is not None and (not isinstance(parent, str) or not _OID_RE.fullmatch(parent)):
        raise HubError(400, f"Invalid parentCommit: {parent!r}")
    return header, [_parse_operation(item) for item in items[1:]]


def _parse_ndjson_line(number: int, line: bytes) -> dict[str, Any]:
    """Decode one NDJSON line into ``{"key": str, "value": dict}``."""
    try:
        item = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HubError(400, f"NDJSON line {number} is not valid JSON: {error}") from error
    if not isinstance(item, dict) or set(item) != {"key", "value"} or not isinstance(item["value"], dict):
        raise HubError(400, f"NDJSON line {number} must be an object with exactly 'key' and 'value'")
    return item


def _parse_operation(item: dict[str, Any]) -> _Operation:
    """Validate one non-header NDJSON item and convert it to an ``_Operation``."""
    key, value = item["key"], item["value"]
    if key == "header":
        raise HubError(400, "Only one commit header is allowed")
    if key == "file":
        if value.get("encoding") != "base64" or not isinstance(value.get("content"), str):
            raise HubError(400, "A 'file' operation needs base64 'content' and encoding 'base64'")
        try:
            content = base64.b64decode(value["content"], validate=True)
        except (binascii.Error, ValueError) as error:
            raise HubError(400, f"Invalid base64 content for {value.get('path')!r}") from error
        return _Operation("file", check_repo_path(value.get("path")), content)
    if key in ("deletedFile", "deletedFolder"):
        return _Operation(key, check_repo_path(value.get("path"), folder=key == "deletedFolder"))
    if key == "lfsFile":
        return _parse_lfs_operation(value)
    raise HubError(400, f"Unknown commit operation key: {key!r}")


def _parse_lfs_operation(value: dict[str, Any]) -> _Operation:
    """Validate an ``lfsFile`` value: ``path``, ``algo: sha256``, a sha256 ``oid`` and a ``size``.

    ``size`` may be absent (the client leaves it out for server-side copies); it is checked when given.
    """
    oid, size = value.get("oid"), value.get("size")
    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid):
        raise HubError(400, "An LFS file ('lfsFile') needs algo 'sha256' and a 64-hex 'oid'")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise HubError(400, f"An LFS file ('lfsFile') needs a non-negative integer 'size', not {size!r}")
    return _Operation("lfsFile", check_repo_path(value.get("path")), oid=oid, size=size)


def apply_operations(
    files: Mapping[str, bytes], operations: Iterable[_Operation], lfs: Iterable[str] = ()
) -> tuple[dict[str, bytes], frozenset[str]]:
    """Return a new snapshot and its set of LFS paths with ``operations`` applied; inputs are left untouched.

    ``lfsFile`` operations must have been turned into ``file`` operations with ``lfs=True`` first.
    """
    snapshot, lfs_paths = dict(files), set(lfs)
    for operation in operations:
        if operation.key == "file":
            _check_no_file_folder_clash(snapshot, operation.path)
            snapshot[operation.path] = operation.content
            (lfs_paths.add if operation.lfs else lfs_paths.discard)(operation.path)
        elif operation.key == "deletedFile":
            if operation.path not in snapshot:
                raise _not_found(f"A file with this name doesn't exist: {operation.path}", "EntryNotFound")
            del snapshot[operation.path]
        elif operation.key == "deletedFolder":
            prefix = f"{operation.path}/"
            doomed = [path for path in snapshot if path.startswith(prefix)]
            if not doomed:
                raise _not_found(f"A folder with this name doesn't exist: {operation.path}", "EntryNotFound")
            for path in doomed:
                del snapshot[path]
        else:
            raise ValueError(f"unresolved {operation.key} operation for {operation.path!r}")
    return snapshot, frozenset(path for path in lfs_paths if path in snapshot)


def _check_no_file_folder_clash(files: Mapping[str, bytes], path: str) -> None:
    """Refuse to add ``a/b`` when ``a`` is a file, or ``a`` when ``a/...`` files exist."""
    clash = next((parent for parent in _parent_dirs(path) if parent in files), None)
    if clash is None and any(existing.startswith(f"{path}/") for existing in files):
        clash = path
    if clash is not None:
        raise HubError(409, f"Cannot add {path!r}: {clash!r} is both a file and a folder")


# -------------------------------------------------------------------------------------- HTTP plumbing


class _HubHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its ``FakeHub`` and can close its open connections.

    ``role`` is ``"hub"`` (the Hub's API and ``resolve``) or ``"storage"`` (the LFS object host).
    """

    daemon_threads = True

    def __init__(self, hub: FakeHub, role: str) -> None:
        super().__init__((HOST, 0), _HubRequestHandler)
        self.hub = hub
        self.role = role
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and remember it so that ``close_connections`` can end it."""
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # avoid 40 ms Nagle/delayed-ACK stalls
        with self._open_lock:
            self._open.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        """Forget a finished connection, then close it."""
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open (e.g. keep-alive) connection so handler threads exit."""
        with self._open_lock:
            sockets = list(self._open)
        for conn in sockets:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Turns HTTP requests into ``_Request`` objects for the ``FakeHub`` and writes the answers."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection may hold a thread
    server: _HubHTTPServer

    def do_GET(self) -> None:
        """Serve GET."""
        self._handle()

    def do_HEAD(self) -> None:
        """Serve HEAD."""
        self._handle()

    def do_POST(self) -> None:
        """Serve POST."""
        self._handle()

    def do_PUT(self) -> None:
        """Serve PUT."""
        self._handle()

    def do_DELETE(self) -> None:
        """Serve DELETE."""
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: ``FakeHub.requests`` is the log."""

    def _handle(self) -> None:
        """Read, record, maybe fail, dispatch and answer one request."""
        hub = self.server.hub
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except HubError as error:
            self.close_connection = True
            hub._record(self.command, unquote(split.path), split.query, error.status, None)
            self._send(_error_response(error))
            return
        request = _Request(
            method=self.command,
            raw_path=split.path,
            segments=[unquote(part) for part in split.path.strip("/").split("/")],
            query=parse_qs(split.query, keep_blank_values=True),
            query_string=split.query,
            headers=self.headers,
            body=body,
            host=self.server.role,
        )
        response, fault = hub._respond(request)
        if response is None or fault == "drop_after":
            self.close_connection = True  # close without answering
            return
        self._send(response)

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError as error:
            raise HubError(400, f"Invalid Content-Length: {length!r}") from error
        if size < 0 or size > MAX_BODY_BYTES:
            raise HubError(413, "Request body too large")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        """Read a ``Transfer-Encoding: chunked`` body (at most MAX_CHUNKS chunks and MAX_BODY_BYTES bytes)."""
        chunks: list[bytes] = []
        total = 0
        for _ in range(MAX_CHUNKS):
            line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(line, 16)
            except ValueError as error:
                raise HubError(400, "Malformed chunked body") from error
            if size < 0:
                raise HubError(400, "Malformed chunked body: negative chunk size")
            if size == 0:
                for _ in range(MAX_TRAILERS):
                    if not self.rfile.readline(1024).strip():
                        return b"".join(chunks)
                raise HubError(400, "Too many trailer lines in a chunked body")
            total += size
            if total > MAX_BODY_BYTES:
                raise HubError(413, "Request body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        raise HubError(413, "Too many chunks in a chunked body")

    def _send(self, response: _Response) -> None:
        """Write status, headers and (except for HEAD) the body."""
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


# ------------------------------------------------------------------------------------------- FakeHub

_Route = Callable[[_Request, str, str, list[str]], _Response]


class FakeHub:
    """An in-memory Hub served over HTTP on 127.0.0.1, driven by the real ``huggingface_hub`` client.

    Args:
        tokens: accepted bearer tokens, either ``{token: username}`` or an iterable of tokens (all
            mapped to ``user``). Defaults to ``{"hf_test_token": "test-user"}``.
        user: default username (the namespace of ``create_repo("name")`` without a namespace).
        tree_page_size: entries per page of ``/tree`` listings (the client follows ``Link`` headers).
        initial_gitattributes: start new repos with a ``.gitattributes`` commit, as the Hub does.
        lfs_threshold: files larger than this many bytes must go through LFS (the Hub: 10 MiB).
        max_lfs_size: the largest LFS object the batch API accepts (larger ones get an object error).

    Use ``start()``/``stop()`` or ``with FakeHub() as hub:``. ``endpoint`` is the base URL to give the
    client, ``token`` a valid token; ``storage_endpoint`` is the LFS storage host the server hands out
    signed URLs for.
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | Iterable[str] | None = None,
        *,
        user: str = DEFAULT_USER,
        tree_page_size: int = DEFAULT_TREE_PAGE_SIZE,
        initial_gitattributes: bool = True,
        lfs_threshold: int = LFS_THRESHOLD,
        max_lfs_size: int = MAX_BODY_BYTES,
    ) -> None:
        if tokens is None:
            tokens = {DEFAULT_TOKEN: user}
        self.tokens: dict[str, str] = dict(tokens) if isinstance(tokens, Mapping) else dict.fromkeys(tokens, user)
        self.user = user
        self.tree_page_size = tree_page_size
        self.initial_gitattributes = initial_gitattributes
        self.lfs_threshold = lfs_threshold
        self.max_lfs_size = max_lfs_size
        self.requests: list[RequestRecord] = []
        self.lfs_uploads: list[LfsUpload] = []  # every object the storage host accepted, in order
        self.server_errors: list[str] = []  # tracebacks of FakeHub bugs (answered as HTTP 500)
        self.repos: dict[tuple[str, str], Repo] = {}
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._sequence = 0
        self._secret = secrets.token_bytes(32)  # signs the storage URLs
        self._servers: dict[str, _HubHTTPServer] = {}
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeHub:
        """Bind two free ports on 127.0.0.1 (Hub, storage) and serve each from a daemon thread. Returns ``self``."""
        if self._servers:
            raise RuntimeError("FakeHub is already running")
        for role in ("hub", "storage"):
            server = _HubHTTPServer(self, role)
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-hub-{role}", daemon=True
            )
            thread.start()
            self._servers[role], self._threads = server, [*self._threads, thread]
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the ports. Safe to call twice."""
        servers, threads = list(self._servers.values()), self._threads
        self._servers, self._threads = {}, []
        for server in servers:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _port_of(self, role: str) -> int:
        """The TCP port of the ``role`` server."""
        if role not in self._servers:
            raise RuntimeError("FakeHub is not running")
        return self._servers[role].server_address[1]

    @property
    def port(self) -> int:
        """The TCP port the Hub listens on."""
        return self._port_of("hub")

    @property
    def storage_port(self) -> int:
        """The TCP port of the LFS storage host (another origin, as the Hub's S3 bucket and CDN are)."""
        return self._port_of("storage")

    @property
    def endpoint(self) -> str:
        """Base URL for ``HfApi(endpoint=...)`` / ``hf_hub_download(endpoint=...)``."""
        return f"http://{HOST}:{self.port}"

    @property
    def storage_endpoint(self) -> str:
        """Base URL of the LFS storage host."""
        return f"http://{HOST}:{self.storage_port}"

    @property
    def token(self) -> str:
        """A token the server accepts (the first configured one)."""
        return next(iter(self.tokens))

    # ------------------------------------------------------------ test helpers

    def fail_next(
        self, kind: int | str, count: int = 1, path_contains: str | None = None, method: str | None = None
    ) -> Fault:
        """Fail the next ``count`` requests whose path contains ``path_contains`` (and method matches).

        ``kind`` is an HTTP status (e.g. 500, 503, 401: answered with a JSON error body), ``"drop"``
        (close the connection without answering; nothing is processed), ``"drop_after"`` (process
        the request, then close without answering: a lost response), ``"corrupt"`` (flip the last
        byte of the received body, then process it: bytes damaged in transit) or ``"truncate"``
        (drop the body's last byte, then process it). Faults are checked in the order they were
        added; storage-host requests (``/lfs-storage/...``) are matched like any other. The client
        retries some requests (5xx, dropped connections), so pass a ``count`` larger than its
        retries to make a failure permanent. Returns the ``Fault``, whose ``hits`` tells how many
        requests it failed.
        """
        if not (isinstance(kind, int) and 400 <= kind <= 599) and kind not in DROP_KINDS + BODY_KINDS:
            raise ValueError(f"kind must be an HTTP error status or one of {DROP_KINDS + BODY_KINDS}, not {kind!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        fault = Fault(kind, count, path_contains, method)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._faults.clear()

    def calls(self, method: str | None = None, path_contains: str | None = None) -> list[RequestRecord]:
        """Return the recorded requests, optionally filtered by method and path substring."""
        with self._lock:
            records = list(self.requests)
        return [
            record
            for record in records
            if (method is None or record.method == method.upper())
            and (path_contains is None or path_contains in record.path)
        ]

    def request_log(self) -> str:
        """The request log, one request per line (handy in assertion messages)."""
        return "\n".join(str(record) for record in self.calls())

    def state(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Return a plain snapshot of every repo's refs and commits, to compare before/after."""
        with self._lock:
            return {key: repo.state() for key, repo in self.repos.items()}

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """Return the stored ``Repo`` (KeyError if missing). Treat it as read-only."""
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Return ``{path: bytes}`` of the repo at ``revision``."""
        with self._lock:
            return dict(self.repo(repo_id, repo_type).resolve(revision).files)

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Return the commit oid that ``revision`` points to."""
        with self._lock:
            return self.repo(repo_id, repo_type).resolve(revision).oid

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, str]:
        """Return ``{path: sha256}`` of the files stored as LFS pointers at ``revision``."""
        with self._lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            return {path: hashlib.sha256(commit.files[path]).hexdigest() for path in sorted(commit.lfs)}

    def wants_lfs(self, path: str, size: int, sample: bytes, gitattributes: bytes | None) -> bool:
        """Whether the Hub would have a file uploaded through LFS: it is not empty and it is larger than
        ``lfs_threshold``, tracked by a ``filter=lfs`` rule of ``gitattributes``, or binary-looking."""
        if size == 0:
            return False  # the client sends empty files inline whatever the answer
        return size > self.lfs_threshold or tracked_by_lfs(path, lfs_rules(gitattributes)) or looks_binary(sample)

    def create_repo(self, repo_id: str, repo_type: str = "model", *, private: bool = False) -> Repo:
        """Create a repo directly (no HTTP); it gets the initial commit like one made by the client."""
        with self._lock:
            return self._create_repo(repo_type, repo_id, private, self.user)

    def commit_files(
        self,
        repo_id: str,
        add: Mapping[str, bytes] | None = None,
        delete: Iterable[str] = (),
        *,
        message: str = "Seed files",
        branch: str = "main",
        repo_type: str = "model",
    ) -> str:
        """Commit files directly (no HTTP), creating the repo if needed. Returns the new commit oid.

        Each added file is stored as LFS exactly when an upload through the client would be
        (:meth:`wants_lfs` with the branch's ``.gitattributes``), so downloads take the same path.
        """
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self._create_repo(repo_type, repo_id, False, self.user)
            parent = repo.resolve(branch)
            attributes = parent.files.get(".gitattributes")
            operations = []
            for name, data in (add or {}).items():
                path = check_repo_path(name)
                lfs = self.wants_lfs(path, len(data), data[:SAMPLE_SIZE], attributes)
                if lfs:
                    repo.lfs_objects[hashlib.sha256(data).hexdigest()] = data
                operations.append(_Operation("file", path, data, lfs=lfs))
            operations += [_Operation("deletedFile", check_repo_path(path)) for path in delete]
            files, lfs_paths = apply_operations(parent.files, operations, parent.lfs)
            commit = self._new_commit(repo, parent, files, message, lfs=lfs_paths)
            repo.branches[branch] = commit.oid
            return commit.oid

    # ------------------------------------------------------------ request flow

    def _record(self, method: str, path: str, query: str, status: int | None, fault: str | None) -> None:
        """Append a request to the log."""
        with self._lock:
            self.requests.append(RequestRecord(method, path, query, status, fault))

    def _take_fault(self, request: _Request) -> Fault | None:
        """Return (and consume one use of) the first pending fault matching ``request``."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(request.method, request.path, request.raw_path):
                    fault.hits += 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _respond(self, request: _Request) -> tuple[_Response | None, str | None]:
        """Answer a request, honouring injected faults. A ``None`` response means: drop the connection."""
        fault = self._take_fault(request)
        fault_name = None if fault is None else str(fault.kind)
        if fault is not None and fault.kind == "drop":
            self._record(request.method, request.path, request.query_string, None, fault_name)
            return None, fault_name
        if fault is not None and isinstance(fault.kind, int):
            error = HubError(fault.kind, f"Injected fault: HTTP {fault.kind}")
            response = _error_response(error)
        else:
            if fault is not None and fault.kind in BODY_KINDS and request.body:
                damaged = request.body[:-1] + bytes([request.body[-1] ^ 0xFF])
                request = replace(request, body=request.body[:-1] if fault.kind == "truncate" else damaged)
            response = self._dispatch_safely(request)
        status = None if fault_name == "drop_after" else response.status
        self._record(request.method, request.path, request.query_string, status, fault_name)
        return response, fault_name

    def _dispatch_safely(self, request: _Request) -> _Response:
        """Dispatch under the store lock, turning ``HubError`` (and bugs) into error responses."""
        try:
            with self._lock:
                return self._dispatch(request)
        except HubError as error:
            return _error_response(error)
        except Exception as error:  # a FakeHub bug: answer 500 rather than hang the client
            self.server_errors.append(traceback.format_exc())
            return _error_response(HubError(500, f"FakeHub internal error: {error!r}"))

    def _dispatch(self, request: _Request) -> _Response:
        """Route a request to its handler: the storage host, the API, the git LFS endpoints or ``resolve``."""
        segments = request.segments
        if request.host == "storage":
            return self._dispatch_storage(request)
        if segments[:1] == ["api"]:
            return self._dispatch_api(request, segments[1:])
        lfs_route = _lfs_route(segments)
        if lfs_route is not None and request.method == "POST":
            repo_type, repo_id, action = lfs_route
            handler = self._lfs_batch if action == "batch" else self._lfs_verify
            return handler(request, repo_type, repo_id)
        return self._resolve_file(request, segments)

    def _dispatch_api(self, request: _Request, segments: list[str]) -> _Response:
        """Route ``/api/...`` requests."""
        global_routes: dict[tuple[str, str], Callable[[_Request], _Response]] = {
            ("POST", "repos/create"): self._api_create_repo,
            ("DELETE", "repos/delete"): self._api_delete_repo,
            ("POST", "validate-yaml"): self._api_validate_yaml,
            ("GET", "whoami-v2"): self._api_whoami,
        }
        route = global_routes.get((request.method, "/".join(segments)))
        if route is not None:
            return route(request)
        if len(segments) >= 3 and segments[0] in REPO_TYPES:
            repo_id = f"{segments[1]}/{segments[2]}"
            return self._dispatch_repo(request, REPO_TYPES[segments[0]], repo_id, segments[3:])
        raise HubError(404, f"Not found: {request.method} {request.path}")

    def _dispatch_repo(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """Route ``/api/{type}s/{namespace}/{name}/...`` requests."""
        routes: dict[tuple[str, str], _Route] = {
            ("GET", ""): self._api_repo_info,
            ("GET", "revision"): self._api_repo_info,
            ("GET", "tree"): self._api_tree,
            ("GET", "refs"): self._api_refs,
            ("GET", "commits"): self._api_commits,
            ("POST", "preupload"): self._api_preupload,
            ("POST", "commit"): self._api_commit,
            ("POST", "branch"): self._api_create_branch,
            ("DELETE", "branch"): self._api_delete_branch,
            ("POST", "tag"): self._api_create_tag,
            ("POST", "discussions"): self._api_create_discussion,
            ("GET", "discussions"): self._api_discussion,
            ("GET", "xet-write-token"): self._api_no_xet,
            ("GET", "xet-read-token"): self._api_no_xet,
            ("GET", "variables"): self._api_space_variables,
            ("POST", "variables"): self._api_space_variables,
            ("DELETE", "variables"): self._api_space_variables,
            ("POST", "hardware"): self._api_space_hardware,
            ("GET", "runtime"): self._api_space_runtime,
        }
        route = routes.get((request.method, rest[0] if rest else ""))
        if route is None:
            raise HubError(404, f"Not found: {request.method} {request.path}")
        return route(request, repo_type, repo_id, rest[1:])

    # ------------------------------------------------------------------ auth

    def _user(self, request: _Request) -> str | None:
        """Return the user behind the bearer token, None without one; 401 for an invalid token."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token.strip()]

    def _require_user(self, request: _Request) -> str:
        """Return the authenticated user or raise 401 (writes need a token)."""
        user = self._user(request)
        if user is None:
            raise HubError(401, "You must be authenticated to perform this action (no Authorization header)")
        return user

    def _find_repo(self, request: _Request, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        """Look a repo up; missing or private-without-token answers RepoNotFound like the Hub."""
        user = self._require_user(request) if write else self._user(request)
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    # ----------------------------------------------------------- repo lifecycle

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> Repo:
        """Create and store a repo, with its initial commit on ``main``."""
        repo = Repo(repo_type, repo_id, private, _now_iso())
        if (repo_type, repo_id) in self.repos:  # create_repo(exist_ok=True) reads "url" from the 409 body
            url = f"{self.endpoint}/{repo.url_path}"
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        files = {".gitattributes": INITIAL_GITATTRIBUTES} if self.initial_gitattributes else {}
        repo.branches["main"] = self._new_commit(repo, None, files, "initial commit", author=author).oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _new_commit(
        self,
        repo: Repo,
        parent: Commit | None,
        files: Mapping[str, bytes],
        title: str,
        description: str = "",
        author: str | None = None,
        lfs: Iterable[str] = (),
    ) -> Commit:
        """Store a new commit with a fresh 40-hex oid (refs are updated by the caller).

        ``lfs`` names the paths of ``files`` stored as LFS pointers.
        """
        self._sequence += 1
        digest = hashlib.sha1(f"commit {self._sequence}\0{repo.repo_id}\0{title}\0{description}\0".encode())
        digest.update((parent.oid if parent else "").encode())
        for path in sorted(files):
            digest.update(f"\0{path}\0{git_blob_oid(files[path])}".encode())
        commit = Commit(
            oid=digest.hexdigest(),
            parent=parent.oid if parent else None,
            title=title,
            description=description,
            author=author or self.user,
            date=_now_iso(),
            files=dict(files),
            lfs=frozenset(path for path in lfs if path in files),
        )
        repo.commits[commit.oid] = commit
        return commit

    def _api_create_repo(self, request: _Request) -> _Response:
        """``POST /api/repos/create``: ``{"name", "organization", "type", "visibility"|"private"}``."""
        user = self._require_user(request)
        payload = request.json()
        name, namespace = payload.get("name"), payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith((".git", ".")):
            raise HubError(400, f"Invalid repo name: {name!r}")
        if not isinstance(namespace, str) or not _NAME_RE.fullmatch(namespace):
            raise HubError(400, f"Invalid namespace: {namespace!r}")
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        private = payload.get("visibility") == "private" or payload.get("private") is True
        settings = _space_settings(payload) if repo_type == "space" else {}
        repo = self._create_repo(repo_type, f"{namespace}/{name}", private, user)
        for key, value in settings.items():
            setattr(repo, key, value)
        url = f"{self.endpoint}/{repo.url_path}"
        return _json_response({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    def _api_delete_repo(self, request: _Request) -> _Response:
        """``DELETE /api/repos/delete``: ``{"name", "organization", "type"}``."""
        user = self._require_user(request)
        payload = request.json()
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        repo_type = payload.get("type") or "model"
        if (repo_type, repo_id) not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        del self.repos[(repo_type, repo_id)]
        return _json_response({})

    def _api_validate_yaml(self, request: _Request) -> _Response:
        """``POST /api/validate-yaml``: accepts any README content (no YAML validation)."""
        payload = request.json()
        if not isinstance(payload.get("content"), str):
            raise HubError(400, "'content' must be a string")
        return _json_response({"errors": [], "warnings": []})

    def _api_whoami(self, request: _Request) -> _Response:
        """``GET /api/whoami-v2``."""
        user = self._require_user(request)
        token = {"displayName": "fake-hub-token", "role": "write"}
        return _json_response(
            {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"accessToken": token}}
        )

    # -------------------------------------------------------------- repo reads

    def _api_repo_info(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET /api/{type}s/{id}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``."""
        repo = self._find_repo(request, repo_type, repo_id)
        commit = repo.resolve("/".join(rest) if rest else "main")
        blobs = _is_true(request.param("blobs"))
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        for sibling in siblings if blobs else []:
            path = sibling["rfilename"]
            sibling.update(size=len(commit.files[path]), blobId=commit.blob_oid(path))
            lfs = commit.lfs_info(path, sha_key="sha256")
            if lfs is not None:
                sibling["lfs"] = lfs
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.url_path.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        if repo_type == "space":
            info.update(sdk=repo.sdk, runtime=_runtime(repo))
        return _json_response(info)

    def _api_tree(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET /api/{type}s/{id}/tree/{rev}[/{path}]``: paginated listing, ``Link: rel="next"``."""
        repo = self._find_repo(request, repo_type, repo_id)
        if not rest:
            raise HubError(400, "Missing revision")
        commit = repo.resolve(rest[0])
        base = "/".join(rest[1:]).strip("/")
        entries = _tree_entries(commit, base, _is_true(request.param("recursive")))
        cursor = request.param("cursor") or "0"
        if not cursor.isdigit():
            raise HubError(400, f"Invalid cursor: {cursor!r}")
        start = int(cursor)
        page = entries[start : start + self.tree_page_size]
        headers: dict[str, str] = {}
        if start + self.tree_page_size < len(entries):
            query = {key: values[0] for key, values in request.query.items() if key != "cursor"}
            query["cursor"] = str(start + self.tree_page_size)
            headers["Link"] = f'<{self.endpoint}{request.raw_path}?{urlencode(query)}>; rel="next"'
        return _json_response(page, **headers)

    def _api_refs(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET /api/{type}s/{id}/refs[?include_prs=1]``."""
        repo = self._find_repo(request, repo_type, repo_id)

        def refs(prefix: str, targets: Mapping[str, str]) -> list[dict[str, str]]:
            return [
                {"name": name, "ref": f"{prefix}{name}", "targetCommit": oid} for name, oid in sorted(targets.items())
            ]

        payload: dict[str, Any] = {
            "branches": refs("refs/heads/", repo.branches),
            "tags": refs("refs/tags/", repo.tags),
            "converts": [],
        }
        if _is_true(request.param("include_prs")):
            prs = {f"refs/pr/{num}": oid for num, oid in repo.pr_heads.items()}
            payload["pullRequests"] = refs("", prs)
        return _json_response(payload)

    def _api_commits(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET /api/{type}s/{id}/commits/{rev}``: first-parent history, newest first, one page."""
        repo = self._find_repo(request, repo_type, repo_id)
        history = repo.history("/".join(rest) if rest else "main")
        return _json_response(
            [
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.description,
                    "authors": [{"user": commit.author, "avatar": ""}],
                    "date": commit.date,
                }
                for commit in history
            ]
        )

    def _resolve_file(self, request: _Request, segments: list[str]) -> _Response:
        """``HEAD|GET /[datasets/|spaces/]{id}/resolve/{rev}/{path}``: raw file with Hub headers.

        An LFS file is answered with a 302 to the storage host instead (see ``_lfs_redirect``).
        """
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type, segments = REPO_TYPES[segments[0]], segments[1:]
        if request.method not in ("GET", "HEAD") or len(segments) < 5 or segments[2] != "resolve":
            raise HubError(404, f"Not found: {request.method} {request.path}")
        repo = self._find_repo(request, repo_type, f"{segments[0]}/{segments[1]}")
        commit = repo.resolve(segments[3])
        path = "/".join(segments[4:])
        if path not in commit.files:
            raise _not_found(f"Entry not found: {path}", "EntryNotFound", **{"X-Repo-Commit": commit.oid})
        if path in commit.lfs:
            return self._lfs_redirect(repo, commit, path)
        data = commit.files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_oid(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
            "Content-Length": str(len(data)),
        }
        range_header = request.headers.get("Range")
        if range_header is None:
            return _Response(200, b"" if request.method == "HEAD" else data, headers)
        return _range_response(request, data, range_header, headers)

    # ------------------------------------------------------------- repo writes

    def _api_preupload(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``POST .../preupload/{rev}``: "lfs" or "regular" per file (:meth:`wants_lfs`, with the revision's
        ``.gitattributes``); ``oid`` (the sha256 of an LFS file, else its blob id) lets the client skip no-ops."""
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        commit = repo.resolve("/".join(rest) if rest else "main")
        files = request.json().get("files")
        if not isinstance(files, list):
            raise HubError(400, "'files' must be a list")
        attributes = commit.files.get(".gitattributes")
        answer = []
        for item in files:
            if not isinstance(item, dict) or not isinstance(item.get("size"), int) or item["size"] < 0:
                raise HubError(400, "Each file needs 'path', 'sample' and a non-negative integer 'size'")
            sample = _decode_sample(item.get("sample"))
            path = check_repo_path(item.get("path"))
            mode = "lfs" if self.wants_lfs(path, item["size"], sample, attributes) else "regular"
            oid = commit.content_oid(path) if path in commit.files else None
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _json_response({"files": answer, "commitOid": commit.oid})

    def _api_commit(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``POST .../commit/{rev}[?create_pr=1]``: NDJSON header + file/lfsFile/deletedFile/deletedFolder lines."""
        user = self._require_user(request)
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        if request.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-ndjson":
            raise HubError(400, "Commit body must be sent as application/x-ndjson")
        revision = "/".join(rest) if rest else "main"
        create_pr = _is_true(request.param("create_pr"))
        target, parent = self._commit_target(repo, revision, create_pr)
        header, operations = parse_commit_payload(request.body)
        expected_parent = header.get("parentCommit")
        if expected_parent is not None and expected_parent != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files, lfs = apply_operations(parent.files, self._resolve_operations(repo, operations), parent.lfs)
        commit = self._new_commit(repo, parent, files, header["summary"], header.get("description") or "", user, lfs)
        pr_url = None
        if create_pr:
            discussion = self._open_discussion(repo, header["summary"], "", user, True, revision)
            target = f"refs/pr/{discussion.num}"
            pr_url = f"{self.endpoint}/{repo.url_path}/discussions/{discussion.num}"
        self._move_ref(repo, target, commit.oid)
        return _json_response(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.endpoint}/{repo.url_path}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def _commit_target(self, repo: Repo, revision: str, create_pr: bool) -> tuple[str, Commit]:
        """Return the ref a commit will move and its current head; only branches and PR refs are writable."""
        branch = revision.removeprefix("refs/heads/")
        if branch in repo.branches:
            return branch, repo.resolve(branch)
        match = _PR_REF_RE.fullmatch(revision)
        if match and int(match.group(1)) in repo.pr_heads and not create_pr:
            return revision, repo.resolve(revision)
        if repo.target_of(revision) is not None:
            raise HubError(400, f"Cannot commit to {revision!r}: not a branch")
        raise _not_found(f"Invalid rev id: {revision}", "RevisionNotFound")

    def _move_ref(self, repo: Repo, ref: str, oid: str) -> None:
        """Point a branch name or ``refs/pr/N`` at ``oid``."""
        match = _PR_REF_RE.fullmatch(ref)
        if match:
            repo.pr_heads[int(match.group(1))] = oid
        else:
            repo.branches[ref] = oid

    def _api_create_branch(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``POST .../branch/{name}`` with optional ``{"startingPoint": rev}``."""
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        name = "/".join(rest)
        if not name or name.startswith("refs/") or any(part in ("", ".", "..") for part in name.split("/")):
            raise HubError(400, f"Invalid branch name: {name!r}")
        if name in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{name}")
        starting_point = request.json().get("startingPoint") or "main"
        if not isinstance(starting_point, str):
            raise HubError(400, "'startingPoint' must be a revision string")
        repo.branches[name] = repo.resolve(starting_point).oid
        return _json_response({})

    def _api_delete_branch(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``DELETE .../branch/{name}``."""
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        name = "/".join(rest)
        if name not in repo.branches:
            raise _not_found(f"Invalid rev id: {name}", "RevisionNotFound")
        if name == "main":
            raise HubError(403, "Cannot delete the default branch")
        del repo.branches[name]
        return _json_response({})

    def _api_create_tag(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``POST .../tag/{rev}`` with ``{"tag": name, "message"?}``."""
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        commit = repo.resolve("/".join(rest) if rest else "main")
        tag = request.json().get("tag")
        if not isinstance(tag, str) or not tag or tag.startswith("refs/"):
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag already exists: {tag}")
        repo.tags[tag] = commit.oid
        return _json_response({})

    def _api_create_discussion(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``POST .../discussions`` with ``{"title", "description", "pullRequest"}``."""
        user = self._require_user(request)
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        payload = request.json()
        title = payload.get("title")
        if not isinstance(title, str) or len(title.strip()) < 3:
            raise HubError(400, "Title must be at least 3 characters long")
        description = str(payload.get("description") or "")
        discussion = self._open_discussion(repo, title, description, user, payload.get("pullRequest") is True)
        url = f"{self.endpoint}/{repo.url_path}/discussions/{discussion.num}"
        return _json_response({"num": discussion.num, "url": url, "pullRequest": discussion.is_pull_request})

    def _open_discussion(
        self, repo: Repo, title: str, description: str, author: str, is_pr: bool, base: str = "main"
    ) -> Discussion:
        """Store a discussion; a pull request gets ``refs/pr/N`` at the head of ``base``."""
        num = max(repo.discussions, default=0) + 1
        base_branch = base.removeprefix("refs/heads/")
        discussion = Discussion(num, title, description, author, is_pr, _now_iso(), f"refs/heads/{base_branch}")
        if is_pr:
            repo.pr_heads[num] = repo.resolve(base_branch).oid
        repo.discussions[num] = discussion
        return discussion

    def _api_discussion(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET .../discussions/{num}``: the details ``get_discussion_details`` parses."""
        repo = self._find_repo(request, repo_type, repo_id)
        if len(rest) != 1 or not rest[0].isdigit() or int(rest[0]) not in repo.discussions:
            raise HubError(404, "Discussion not found")
        discussion = repo.discussions[int(rest[0])]
        details: dict[str, Any] = {
            "num": discussion.num,
            "title": discussion.title,
            "status": discussion.status,
            "author": {"name": discussion.author},
            "createdAt": discussion.created_at,
            "isPullRequest": discussion.is_pull_request,
            "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "events": [],
        }
        if discussion.is_pull_request:
            details["changes"] = {"base": discussion.base_ref}
            details["filesWithConflicts"] = []
        return _json_response(details)

    def _api_no_xet(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET .../xet-{write,read}-token/{rev}``: there is no Xet storage here (none is advertised)."""
        self._find_repo(request, repo_type, repo_id)
        raise HubError(501, "FakeHub has no Xet storage: set HF_HUB_DISABLE_XET=1 so that the client uploads "
                            "through the LFS batch API (the hf_sandbox fixture does)")

    # ------------------------------------------------------------- git LFS

    # ------------------------------------------------------------ Space settings

    def _space(self, request: _Request, repo_type: str, repo_id: str, *, write: bool) -> Repo:
        """The Space repo ``repo_id``; other repo types have no Space settings (404, as on the Hub)."""
        if repo_type != "space":
            raise HubError(404, f"Not found: {request.method} {request.path}")
        return self._find_repo(request, repo_type, repo_id, write=write)

    def _api_space_variables(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET|POST|DELETE /api/spaces/{id}/variables``: list, add (``{key, value, description?}``) or
        delete (``{key}``) a variable; every answer is the variables by key."""
        repo = self._space(request, repo_type, repo_id, write=request.method != "GET")
        if request.method != "GET":
            payload = request.json()
            key = _variable_key(payload.get("key"))
            if request.method == "DELETE":
                repo.variables.pop(key, None)
            else:
                repo.variables[key] = _variable(payload)
        return _json_response({k: dict(v) for k, v in repo.variables.items()})

    def _api_space_hardware(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``POST /api/spaces/{id}/hardware`` ``{flavor, sleepTimeSeconds?}``: request a hardware flavor."""
        repo = self._space(request, repo_type, repo_id, write=True)
        flavor = request.json().get("flavor")
        if not isinstance(flavor, str) or not _NAME_RE.fullmatch(flavor):
            raise HubError(400, f"Invalid hardware flavor: {flavor!r}")
        repo.hardware = flavor
        return _json_response(_runtime(repo))

    def _api_space_runtime(self, request: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        """``GET /api/spaces/{id}/runtime``: the stage and the hardware asked for."""
        return _json_response(_runtime(self._space(request, repo_type, repo_id, write=False)))

    def _resolve_operations(self, repo: Repo, operations: list[_Operation]) -> list[_Operation]:
        """Turn each ``lfsFile`` into a ``file`` holding the uploaded object; refuse what the Hub refuses.

        An ``lfsFile`` must name an object uploaded to this repo, with the same size (and the stored
        bytes must still hash to its oid); a regular ``file`` must be neither binary nor larger than
        ``lfs_threshold``, since those must travel through LFS.
        """
        resolved = []
        for operation in operations:
            if operation.key == "file":
                content = operation.content
                if len(content) > self.lfs_threshold or looks_binary(content[:SAMPLE_SIZE]):
                    what = "binary" if looks_binary(content[:SAMPLE_SIZE]) else f"over {self.lfs_threshold} bytes"
                    raise HubError(400, f"Your push was rejected: {operation.path!r} is {what}; upload it "
                                        "through LFS (preupload answers 'lfs' for it)")
            if operation.key != "lfsFile":
                resolved.append(operation)
                continue
            data = repo.lfs_objects.get(operation.oid or "")
            if data is None:
                raise HubError(400, f"LFS file {operation.path!r} points to object {operation.oid}, which was "
                                    "never uploaded to this repo (upload it through the LFS batch API first)")
            if operation.size is not None and operation.size != len(data):
                raise HubError(400, f"LFS file {operation.path!r} says {operation.size} bytes, but object "
                                    f"{operation.oid} holds {len(data)}")
            if hashlib.sha256(data).hexdigest() != operation.oid:
                raise HubError(400, f"LFS object {operation.oid} is damaged: its bytes do not hash to its oid")
            resolved.append(_Operation("file", operation.path, data, lfs=True))
        return resolved

    def _lfs_batch(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        """``POST /{repo}.git/info/lfs/objects/batch``: upload instructions per object ("basic" transfer).

        An object already stored (same oid and size) gets no actions, so the client skips it; a
        new one gets a signed ``upload`` URL on the storage host and a ``verify`` URL on the Hub.
        """
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        payload = request.json()
        if payload.get("operation") != "upload":
            operation = payload.get("operation")
            raise HubError(422, f"FakeHub's LFS batch API serves operation 'upload' only, not {operation!r}")
        transfers = payload.get("transfers") or ["basic"]
        if not isinstance(transfers, list) or "basic" not in transfers:
            raise HubError(422, f"None of the transfers {transfers!r} is supported (this server offers 'basic')")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(409, f"Unsupported hash algorithm {payload.get('hash_algo')!r} (this server uses sha256)")
        objects = payload.get("objects")
        if not isinstance(objects, list) or not objects:
            raise HubError(422, "'objects' must be a non-empty list")
        answer = {"transfer": "basic", "objects": [self._batch_object(repo, item) for item in objects],
                  "hash_algo": "sha256"}
        return _json_response(answer, **{"Content-Type": LFS_MEDIA_TYPE})

    def _batch_object(self, repo: Repo, item: Any) -> dict[str, Any]:
        """One object of a batch answer: actions, nothing (already stored) or an object error."""
        oid = item.get("oid") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return _object_error(oid, 0, 422, f"Invalid object size {size!r}")
        if not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid):
            return _object_error(oid, size, 422, f"Invalid object id {oid!r}: expected a sha256 in hex")
        if size > self.max_lfs_size:
            return _object_error(oid, size, 422, f"Object of {size} bytes is over the maximum file size of "
                                                 f"{self.max_lfs_size} bytes")
        stored = repo.lfs_objects.get(oid)
        if stored is not None and len(stored) != size:
            return _object_error(oid, size, 422, f"Object {oid} is stored with {len(stored)} bytes, not {size}")
        if stored is not None:
            return {"oid": oid, "size": size, "authenticated": True}
        upload = self._signed_url("upload", self._storage_path(repo, oid), size)
        verify = f"{self.endpoint}/{repo.url_path}.git/info/lfs/objects/verify"
        actions = {"upload": {"href": upload, "expires_in": SIGNED_URL_SECONDS}, "verify": {"href": verify}}
        return {"oid": oid, "size": size, "authenticated": True, "actions": actions}

    def _lfs_verify(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        """``POST /{repo}.git/info/lfs/objects/verify`` with ``{"oid", "size"}``: is the object stored, that size?"""
        repo = self._find_repo(request, repo_type, repo_id, write=True)
        payload = request.json()
        oid, size = payload.get("oid"), payload.get("size")
        stored = repo.lfs_objects.get(oid) if isinstance(oid, str) else None
        if stored is None:
            raise HubError(404, f"LFS object {oid} was not uploaded")
        if size != len(stored):
            raise HubError(422, f"LFS object {oid} holds {len(stored)} bytes, not {size}")
        return _json_response({"success": True}, **{"Content-Type": LFS_MEDIA_TYPE})

    def _lfs_redirect(self, repo: Repo, commit: Commit, path: str) -> _Response:
        """``resolve`` of an LFS file: a 302 to a signed storage URL, the file's metadata on the redirect."""
        data = commit.files[path]
        oid = hashlib.sha256(data).hexdigest()
        location = self._signed_url("download", self._storage_path(repo, oid, path.rsplit("/", 1)[-1]), len(data))
        headers = {
            "Location": location,
            "ETag": f'"{commit.blob_oid(path)}"',
            "X-Linked-Etag": f'"{oid}"',
            "X-Linked-Size": str(len(data)),
            "X-Repo-Commit": commit.oid,
        }
        return _Response(302, b"", headers)

    # ------------------------------------------------------------- storage host

    def _storage_path(self, repo: Repo, oid: str, filename: str | None = None) -> str:
        """``/lfs-storage/{type}s/{ns}/{name}/{oid}`` (upload) or ``.../{oid}/{filename}`` (download)."""
        type_segment = next(segment for segment, kind in REPO_TYPES.items() if kind == repo.repo_type)
        return "/".join(["", STORAGE_PREFIX, type_segment, repo.repo_id, oid, *([filename] if filename else [])])

    def _signature(self, verb: str, path: str, size: int, expires: str) -> str:
        """The HMAC that makes a storage URL valid for one verb, path, size and expiry."""
        return hmac.new(self._secret, f"{verb}\n{path}\n{size}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _signed_url(self, verb: str, path: str, size: int) -> str:
        """A storage-host URL for ``verb`` ("upload" or "download") of ``path``, valid SIGNED_URL_SECONDS."""
        expires = str(int(time.time()) + SIGNED_URL_SECONDS)
        query = urlencode({"size": size, "expires": expires, "signature": self._signature(verb, path, size, expires)})
        return f"{self.storage_endpoint}{quote(path)}?{query}"

    def _dispatch_storage(self, request: _Request) -> _Response:
        """The storage host: ``PUT .../{oid}`` stores an object, ``GET|HEAD .../{oid}/{filename}`` serves one.

        No token is needed (the client sends none there): every URL must carry a valid, unexpired
        signature from a batch answer or a ``resolve`` redirect.
        """
        segments = request.segments
        if segments[:1] != [STORAGE_PREFIX] or len(segments) not in (5, 6) or segments[1] not in REPO_TYPES:
            raise HubError(404, f"No such key: {request.path}")
        verb = "upload" if len(segments) == 5 else "download"
        if request.method not in (("PUT",) if verb == "upload" else ("GET", "HEAD")):
            raise HubError(405, f"{request.method} is not allowed on a storage {verb} URL")
        size = self._check_signature(request, verb)
        repo = self.repos.get((REPO_TYPES[segments[1]], f"{segments[2]}/{segments[3]}"))
        if repo is None:
            raise HubError(404, f"No such key: {request.path} (the repo is gone)")
        if verb == "upload":
            return self._store_object(repo, segments[4], size, request.body)
        return self._serve_object(request, repo, segments[4], segments[5])

    def _check_signature(self, request: _Request, verb: str) -> int:
        """Check a storage URL's signature and expiry (403 otherwise); returns the size it was signed for."""
        size, expires, signature = (request.param(name) or "" for name in ("size", "expires", "signature"))
        if not size.isdigit() or not expires.isdigit() or not signature:
            raise HubError(403, "Missing or malformed URL signature")
        expected = self._signature(verb, request.path, int(size), expires)
        if not hmac.compare_digest(expected, signature):
            raise HubError(403, "The request signature we calculated does not match the signature you provided")
        if int(expires) < time.time():
            raise HubError(403, "Request has expired")
        return int(size)

    def _store_object(self, repo: Repo, oid: str, size: int, body: bytes) -> _Response:
        """Store an uploaded LFS object after checking its size and sha256 against the signed URL."""
        if len(body) != size:
            raise HubError(400, f"Received {len(body)} bytes for LFS object {oid}, but its upload was announced "
                                f"with {size}")
        digest = hashlib.sha256(body).hexdigest()
        if digest != oid:
            raise HubError(400, f"The uploaded bytes have sha256 {digest}, not the object id {oid}")
        repo.lfs_objects[oid] = body
        self.lfs_uploads.append(LfsUpload(repo.repo_type, repo.repo_id, oid, size))
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'})

    def _serve_object(self, request: _Request, repo: Repo, oid: str, filename: str) -> _Response:
        """Serve a stored LFS object (with ``Range`` support), as the Hub's CDN does."""
        data = repo.lfs_objects.get(oid)
        if data is None:
            raise HubError(404, f"No such key: {oid}")
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(len(data)),
        }
        range_header = request.headers.get("Range")
        if range_header is None:
            return _Response(200, b"" if request.method == "HEAD" else data, headers)
        return _range_response(request, data, range_header, headers)


def _space_settings(payload: dict[str, Any]) -> dict[str, Any]:
    """The Repo fields of a new Space from the create payload: ``sdk`` is required (400 otherwise), as are
    well-formed ``hardware``, ``variables`` and ``secrets`` when given."""
    sdk = payload.get("sdk")
    if sdk not in SPACE_SDKS:
        raise HubError(400, f"Invalid or missing sdk for a Space: {sdk!r} (expected one of {', '.join(SPACE_SDKS)})")
    hardware = payload.get("hardware")
    if hardware is not None and (not isinstance(hardware, str) or not _NAME_RE.fullmatch(hardware)):
        raise HubError(400, f"Invalid hardware flavor: {hardware!r}")
    lists = {name: payload.get(name) or [] for name in ("variables", "secrets")}
    if not all(isinstance(v, list) and all(isinstance(i, dict) for i in v) for v in lists.values()):
        raise HubError(400, "variables and secrets must be lists of {key, value} objects")
    variables = {_variable_key(v.get("key")): _variable(v) for v in lists["variables"]}
    secrets = {_variable_key(v.get("key")): _variable(v)["value"] for v in lists["secrets"]}
    return {"sdk": sdk, "hardware": hardware, "variables": variables, "secrets": secrets}


def _variable_key(key: Any) -> str:
    if not isinstance(key, str) or not _VARIABLE_RE.fullmatch(key):
        raise HubError(400, f"Invalid variable key: {key!r}")
    return key


def _variable(payload: dict[str, Any]) -> dict[str, str]:
    """A stored variable ``{value, updatedAt[, description]}`` from ``{key, value, description?}``."""
    value, description = payload.get("value"), payload.get("description")
    if not isinstance(value, str) or (description is not None and not isinstance(description, str)):
        raise HubError(400, "a variable's value (and description) must be strings")
    return {"value": value, "updatedAt": _now_iso(), **({"description": description} if description else {})}


def _runtime(repo: Repo) -> dict[str, Any]:
    """A Space's runtime as ``GET /api/spaces/{id}/runtime`` answers it (never built here)."""
    return {"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware}, "storage": None,
            "gcTimeout": None, "replicas": {"current": 0, "requested": 1}, "devMode": False}


def _object_error(oid: Any, size: int, code: int, message: str) -> dict[str, Any]:
    """An object-level error of an LFS batch answer."""
    return {"oid": str(oid), "size": size, "error": {"code": code, "message": message}}


def _lfs_route(segments: list[str]) -> tuple[str, str, str] | None:
    """``(repo_type, repo_id, "batch"|"verify")`` for ``[datasets/|spaces/]{ns}/{name}.git/info/lfs/objects/...``."""
    repo_type = "model"
    if segments[:1] in (["datasets"], ["spaces"]):
        repo_type, segments = REPO_TYPES[segments[0]], segments[1:]
    if len(segments) != 6 or not segments[1].endswith(".git") or segments[2:5] != ["info", "lfs", "objects"]:
        return None
    if segments[5] not in ("batch", "verify"):
        return None
    return repo_type, f"{segments[0]}/{segments[1].removesuffix('.git')}", segments[5]


def _decode_sample(sample: Any) -> bytes:
    """Decode the base64 ``sample`` of a preupload file (at most SAMPLE_SIZE bytes), or raise a 400."""
    if not isinstance(sample, str):
        raise HubError(400, "Each file needs a base64 'sample'")
    try:
        data = base64.b64decode(sample, validate=True)
    except (binascii.Error, ValueError) as error:
        raise HubError(400, "A file's 'sample' is not valid base64") from error
    if len(data) > SAMPLE_SIZE:
        raise HubError(400, f"A file's 'sample' holds more than {SAMPLE_SIZE} bytes")
    return data


def _tree_entries(commit: Commit, base: str, recursive: bool) -> list[dict[str, Any]]:
    """List the folders and files under ``base`` (direct children, or all descendants if recursive).

    A file's ``oid`` is its git blob id (of the pointer, for an LFS file, which also gets an ``lfs``
    block with the sha256, size and pointer size) and ``size`` the size of its content, as on the Hub.
    """
    files = commit.files
    prefix = f"{base}/" if base else ""
    below = [path for path in files if path.startswith(prefix)]
    if base and not below:
        raise _not_found(f"Entry not found: {base}", "EntryNotFound")
    folders: set[str] = set()
    listed: list[str] = []
    for path in below:
        relative = path[len(prefix) :]
        if recursive:
            folders.update(prefix + folder for folder in _parent_dirs(relative))
            listed.append(path)
        elif "/" in relative:
            folders.add(prefix + relative.split("/", 1)[0])
        else:
            listed.append(path)
    folder_entries = [
        {"type": "directory", "oid": commit.tree_oid(folder), "size": 0, "path": folder} for folder in sorted(folders)
    ]
    file_entries = []
    for path in sorted(listed):
        entry = {"type": "file", "oid": commit.blob_oid(path), "size": len(files[path]), "path": path}
        lfs = commit.lfs_info(path)
        file_entries.append(entry if lfs is None else {**entry, "lfs": lfs})
    return folder_entries + file_entries


def _range_response(request: _Request, data: bytes, range_header: str, headers: dict[str, str]) -> _Response:
    """Answer a single ``Range: bytes=a-b`` request with 206, or 416 if it cannot be satisfied."""
    match = _RANGE_RE.fullmatch(range_header.strip())
    size = len(data)
    if match is None or match.groups() == ("", ""):
        raise HubError(416, f"Unsupported range: {range_header}", **{"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(416, f"Unsatisfiable range: {range_header}", **{"Content-Range": f"bytes */{size}"})
    part = data[start : end + 1]
    headers = {**headers, "Content-Length": str(len(part)), "Content-Range": f"bytes {start}-{end}/{size}"}
    return _Response(206, b"" if request.method == "HEAD" else part, headers)


# ------------------------------------------------------------------------------------ pytest fixtures


class _InstantSleep:
    """Stand-in for the ``time`` module inside ``huggingface_hub.utils._http``: records retry sleeps."""

    def __init__(self, sleeps: list[float]) -> None:
        self.sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        """Record the back-off delay instead of waiting."""
        self.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@dataclass
class HfSandbox:
    """Where the client's files go during a test, and the retry back-offs it asked for."""

    home: Path
    cache_dir: Path
    retry_sleeps: list[float]


@pytest.fixture
def hf_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HfSandbox]:
    """Isolate ``huggingface_hub`` for one test.

    HF_HOME and every cache/token path point into ``tmp_path`` (the constants were frozen at
    import, so they are patched too); no token is picked up implicitly; telemetry (which would
    fetch ``{ENDPOINT}/api/agent-harnesses`` from huggingface.co) and progress bars are off; and
    retry back-off sleeps are recorded instead of slept, so retried requests cost no time.

    Xet is off (``HF_HUB_DISABLE_XET``, also for subprocesses): huggingface_hub 2.4.0 uploads
    through Xet whenever ``hf_xet`` is installed, whatever the server says, and FakeHub speaks
    git LFS only. With it off the client takes the LFS batch API, as it does without ``hf_xet``.
    """
    import huggingface_hub.utils._http as hf_http

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the package re-exports a class as "tqdm"

    home = tmp_path / "hf_home"
    sandbox = HfSandbox(home=home, cache_dir=home / "hub", retry_sleeps=[])
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    _point_caches_at(home, monkeypatch)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    _switch_client_settings(monkeypatch)
    monkeypatch.setattr(hf_http, "time", _InstantSleep(sandbox.retry_sleeps))
    monkeypatch.setattr(hf_tqdm, "progress_bar_states", {"_global": False})
    yield sandbox
    hf_http.close_session()  # drop pooled keep-alive connections to this test's server


def _point_caches_at(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every cache and token path of the client (its frozen constants, and the variables that
    hf_xet and subprocesses read) into ``home``."""
    import huggingface_hub.constants as hf_constants

    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
        "AGENT_HARNESSES_PATH": home / ".agent_harnesses.json",
    }
    for name, path in paths.items():
        if hasattr(hf_constants, name):
            monkeypatch.setattr(hf_constants, name, str(path))
    for name in ("HF_HOME", "HF_HUB_CACHE", "HF_XET_CACHE"):  # read at call time by hf_xet and subprocesses
        monkeypatch.setenv(name, str(paths[name]))


def _switch_client_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, no telemetry, no implicit token, no Xet: the client's settings frozen at import."""
    import huggingface_hub.constants as hf_constants

    for name, value in {
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_DISABLE_XET": True,
    }.items():
        monkeypatch.setattr(hf_constants, name, value)


@pytest.fixture
def fake_hub(hf_sandbox: HfSandbox) -> Iterator[FakeHub]:
    """A started ``FakeHub`` (token ``hf_test_token`` for user ``test-user``), stopped after the test.

    Depends on ``hf_sandbox``, so the client's caches live in ``tmp_path`` and retries are instant.
    Fails the test if the server hit an internal error (see ``FakeHub.server_errors``).
    """
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()
    if hub.server_errors:
        pytest.fail("FakeHub raised internally:\n" + "\n".join(hub.server_errors))


@pytest.fixture
def hf_env(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """What HF_ENDPOINT (read when huggingface_hub is imported) and HF_TOKEN do, for in-process calls."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", fake_hub.endpoint)
    template = fake_hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    return fake_hub
