"""Publish and fetch edits and key statistics on the Hugging Face Hub.

An edit repo holds ``edit.safetensors`` and ``edit_config.json`` (see :mod:`olam_edit.edit_io`),
``checksums.json`` (the sha256 of both, and the edit's content fingerprint), ``README.md`` (the model
card, :mod:`olam_edit.model_card`) and, when one was rendered, ``before_after.png``. Statistics live
in any repo as ``stats/<layer>-<fingerprint[:16]>.safetensors`` (the edit's repo or a dedicated one).

Everything goes through ``huggingface_hub``: ``create_repo`` / ``upload_folder`` / ``create_commit``
to publish, ``snapshot_download`` / ``hf_hub_download`` (the standard cache) to fetch. ``endpoint=``,
``token=`` and ``revision=`` are passed through; ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``
work as in every Hub library. Client errors become :class:`~olam_edit.errors.HubError` subclasses
whose messages say what failed and how to fix it.

Contracts: a push is one commit and writes nothing locally except a temporary staging folder that is
removed; :func:`fetch_edit` returns an edit only after its files matched ``checksums.json`` and its two
manifests agree; :func:`pull_edit` makes its output folder appear complete or not at all; a pulled
statistic always carries the fingerprint the caller expects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ._io import atomic_write_bytes
from .collect import _cache_path
from .edit import Edit
from .edit_io import CONFIG_NAME, METADATA_KEY, WEIGHTS_NAME
from .errors import (
    ChecksumMismatchError,
    EditFileError,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotFoundError,
    OlamEditError,
    OutputExistsError,
    RequestError,
    StaleStatisticsError,
    explain,
)
from .stats import SecondMoment

CHECKSUMS_NAME = "checksums.json"
CARD_NAME = "README.md"
PICTURE_NAME = "before_after.png"
STATS_FOLDER = "stats"
CHECKED_FILES = (WEIGHTS_NAME, CONFIG_NAME)
EDIT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CHECKSUMS_NAME)
PULLED_FILES = (*EDIT_FILES, CARD_NAME, PICTURE_NAME)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OID_RE = re.compile(r"[0-9a-f]{40}")


# ---------------------------------------------------------------------------------------- errors


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Translate ``huggingface_hub`` / network errors raised inside the block into HubError subclasses.

    ``action`` completes "cannot ... <repo_id>" in the message. Our own errors pass through unchanged.
    """
    try:
        yield
    except OlamEditError:
        raise
    except Exception as e:
        translated = translate_error(e, action, repo_id, revision)
        if translated is None:
            raise
        raise translated from e


def translate_error(e: Exception, action: str, repo_id: str, revision: str | None = None) -> HubError | None:
    """The HubError that explains ``e``, or None when ``e`` is not a Hub or network error."""
    from huggingface_hub import errors as hf

    where = f"{repo_id} at revision {revision!r}" if revision else repo_id
    head = f"cannot {action} {where}"
    if isinstance(e, hf.RevisionNotFoundError):
        return HubNotFoundError(explain(f"cannot {action} {repo_id}: revision {revision or 'main'!r} does not exist",
                                        fix="Use an existing branch, tag or commit id "
                                            "(HfApi().list_repo_refs(repo_id) lists them)."))
    if isinstance(e, hf.RepositoryNotFoundError):
        return HubNotFoundError(explain(f"{head}: the repo does not exist, or it is private and no valid token "
                                        "was given", got=_server_message(e),
                                        fix="Check the repo id; for a private repo set HF_TOKEN or pass token=."))
    if isinstance(e, hf.LocalEntryNotFoundError | hf.OfflineModeIsEnabled):
        return _offline_error(head, e)
    if isinstance(e, getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)):
        return HubNotFoundError(explain(f"{head}: a file is missing from the repo", got=_server_message(e)))
    if isinstance(e, hf.LocalTokenNotFoundError):
        return _no_token_error()
    if isinstance(e, hf.HfHubHTTPError):
        return _http_error(e, head)
    if _is_transport_error(e):
        return HubConnectionError(explain(f"{head}: the connection to the Hub failed", got=f"{type(e).__name__}: {e}",
                                          fix="Check the network and HF_ENDPOINT, then try again."))
    return None


def _server_message(e: Exception) -> str:
    message = getattr(e, "server_message", None) or str(e)
    return message.strip().splitlines()[0] if message.strip() else type(e).__name__


def _status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _http_error(e: Exception, head: str) -> HubError:
    status = _status(e)
    if status in (401, 403):
        return HubAuthError(explain(f"{head}: the Hub refused the token", got=f"HTTP {status}: {_server_message(e)}",
                                    fix="Set HF_TOKEN (or pass token=) to a valid token, with write access to "
                                        "the namespace for a push; `hf auth login` stores one."))
    return HubError(explain(f"{head}: the Hub answered HTTP {status}", got=_server_message(e),
                            fix="Try again later."))


def _offline_error(head: str, e: Exception) -> HubConnectionError:
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    cache = " and the files are not in the local cache" if isinstance(e, hf.LocalEntryNotFoundError) else ""
    if constants.HF_HUB_OFFLINE:
        why, fix = "offline mode is on (HF_HUB_OFFLINE=1)", "Unset HF_HUB_OFFLINE and try again with network access."
    else:
        why = "the Hub could not be asked (network error, or local_files_only=True)"
        fix = "Check the network and HF_ENDPOINT, then try again."
    return HubConnectionError(explain(f"{head}: {why}{cache}", fix=fix))


def _no_token_error() -> HubAuthError:
    return HubAuthError(explain("publishing needs a Hugging Face token with write access", got="no token",
                                fix="Set HF_TOKEN, pass token=..., or run `hf auth login`."))


def _is_transport_error(e: Exception) -> bool:
    """Network failures: builtin ConnectionError/TimeoutError or an httpx/httpx2/requests transport error."""
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    names = {"TransportError", "RequestError", "ConnectionError", "Timeout", "TimeoutException"}
    libraries = {"httpx", "httpx2", "requests", "urllib3"}
    return any(c.__name__ in names and c.__module__.split(".")[0] in libraries for c in type(e).__mro__)


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repo id (``name`` or ``namespace/name``), else RequestError."""
    if not isinstance(repo_id, str) or not looks_like_repo_id(repo_id):
        raise RequestError(explain("not a valid Hub repo id", got=repr(repo_id), expected="'namespace/name'",
                                   fix="Use letters, digits, '-', '_' and '.', e.g. 'your-name/smile-edit'."))
    return repo_id


def write_token(token: str | bool | None) -> str:
    """The token a write will use: ``token`` itself, else the standard one (``HF_TOKEN``, stored login)."""
    from huggingface_hub import get_token

    resolved = token if isinstance(token, str) else (None if token is False else get_token())
    if not resolved:
        raise _no_token_error()
    return resolved


# ------------------------------------------------------------------------------------- checksums


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path, edit: Edit) -> dict[str, str]:
    """Write ``checksums.json`` for the edit files in ``folder``; returns ``{file: sha256}``."""
    files = {name: sha256_file(folder / name) for name in CHECKED_FILES}
    record = {"algorithm": "sha256", "files": files, "edit_fingerprint": edit.fingerprint}
    atomic_write_bytes(folder / CHECKSUMS_NAME, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return files


def verify_checksums(folder: Path) -> dict[str, Any] | None:
    """Check every file ``checksums.json`` lists against its sha256; None when there is no such file.

    Raises ChecksumMismatchError naming the file and both digests, EditFileError when a listed file
    is missing or the record is malformed.
    """
    path = folder / CHECKSUMS_NAME
    if not path.is_file():
        return None
    record = _read_checksums(path)
    for name, expected in record["files"].items():
        target = folder / name
        if not target.is_file():
            raise EditFileError(explain(f"{name} is listed in {CHECKSUMS_NAME} but missing from {folder}"))
        got = sha256_file(target)
        if got != expected:
            raise ChecksumMismatchError(explain(f"{name} does not match its recorded checksum (corrupted or altered)",
                                                got=f"sha256 {got}", expected=f"sha256 {expected}",
                                                fix="Fetch it again (force_download=True for a Hub download); if "
                                                    "it persists, the published files are damaged: ask the author "
                                                    "to push again."))
    return record


def _read_checksums(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EditFileError(explain(f"{path} is not valid JSON", got=str(e)[:160])) from e
    files = record.get("files") if isinstance(record, dict) else None
    ok = record.get("algorithm") == "sha256" if isinstance(record, dict) else False
    if not ok or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise EditFileError(explain(f"{path} is not an olam-edit checksum record",
                                    expected='{"algorithm": "sha256", "files": {name: hex}}'))
    if WEIGHTS_NAME not in files:
        raise EditFileError(explain(f"{path} has no checksum for {WEIGHTS_NAME}", got=sorted(files)))
    bad = [name for name in files if "/" in name or "\\" in name or name.startswith(".")]
    if bad:
        raise EditFileError(explain(f"{path} lists files outside the edit folder", got=bad))
    return record


def _manifests_agree(folder: Path) -> None:
    """``edit_config.json`` must hold exactly the manifest stored in ``edit.safetensors``."""
    config = folder / CONFIG_NAME
    if not config.is_file():
        return
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
            stored = json.loads((f.metadata() or {})[METADATA_KEY])
        readable = json.loads(config.read_text())
    except Exception:  # unreadable files: Edit.load reports them precisely
        return
    if stored != readable:
        raise ChecksumMismatchError(explain(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {folder} carry different manifests",
                                            fix="The folder mixes files of two edits or was altered; fetch it "
                                                "again."))


def load_verified(folder: str | Path) -> Edit:
    """Load an edit folder after checking ``checksums.json`` (when present) and the manifests' agreement."""
    folder = Path(folder)
    record = verify_checksums(folder)
    _manifests_agree(folder)
    edit = Edit.load(folder)
    expected = (record or {}).get("edit_fingerprint")
    if expected is not None and expected != edit.fingerprint:
        raise ChecksumMismatchError(explain("the loaded edit is not the one that was published",
                                            got=edit.fingerprint[:16], expected=expected[:16]))
    return edit


# ------------------------------------------------------------------------------------------ push


def read_picture(image: str | Path | bytes | None) -> bytes | None:
    """The before/after picture's PNG bytes (None for none); anything but a PNG is refused."""
    if image is None:
        return None
    if isinstance(image, bytes | bytearray):
        data = bytes(image)
    else:
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise RequestError(explain(f"cannot read the picture {image}", got=str(e))) from e
    if not data.startswith(PNG_MAGIC):
        raise RequestError(explain("the before/after picture must be a PNG", got=repr(data[:8]),
                                   fix="Pass the PNG that `olam-edit apply --grid` or `olam-edit example` writes."))
    return data


def stage_edit(edit: Edit, folder: Path, repo_id: str, picture: bytes | None = None) -> Path:
    """Write everything a Hub repo of ``edit`` holds into ``folder``: files, checksums, card, picture."""
    from .model_card import build_model_card

    edit.save(folder)
    sums = write_checksums(folder, edit)
    if picture is not None:
        atomic_write_bytes(folder / PICTURE_NAME, picture)
    card = build_model_card(edit, repo_id, picture=PICTURE_NAME if picture is not None else None, checksums=sums)
    atomic_write_bytes(folder / CARD_NAME, card.content.encode())
    return folder


def _prepare_repo(api: Any, repo_id: str, *, private: bool, revision: str | None, create_pr: bool) -> str:
    """Create the repo if needed, and the branch ``revision`` when a push targets a new one.

    Returns the full repo id (a bare ``name`` becomes ``user/name``, as the Hub creates it).
    """
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision and not create_pr and revision != "main" and not _OID_RE.fullmatch(revision):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def _commit_title(edit: Edit) -> str:
    from .model_card import rule_text

    title = f"olam-edit: {rule_text(edit)}"
    return title if len(title) <= 100 else title[:99] + "…"


def push_edit(edit: Edit, repo_id: str, *, private: bool = False, token: str | bool | None = None,
              revision: str | None = None, create_pr: bool = False, commit_message: str | None = None,
              endpoint: str | None = None, image: str | Path | bytes | None = None) -> str:
    """Publish ``edit`` as ``repo_id`` in one commit; returns the commit URL (a ``CommitInfo``, a str).

    Creates the repo (and the branch ``revision``) if needed. Uploads ``edit.safetensors``,
    ``edit_config.json``, ``checksums.json``, the ``README.md`` model card and, with ``image`` (a PNG
    path or bytes), ``before_after.png``; a stale picture of an earlier push is deleted in the same
    commit. Raises HubAuthError before any request when no token is available.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    token = write_token(token)
    picture = read_picture(image)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="olam-edit-push-") as tmp:
        with hub_errors("push the edit to", repo_id, revision):
            repo_id = _prepare_repo(api, repo_id, private=private, revision=revision, create_pr=create_pr)
        folder = stage_edit(edit, Path(tmp), repo_id, picture)  # the card names the full user/name id
        with hub_errors("push the edit to", repo_id, revision):
            return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                                     commit_message=commit_message or _commit_title(edit),
                                     delete_patterns=None if picture is not None else [PICTURE_NAME])


# ------------------------------------------------------------------------------------------ pull


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` is a syntactically valid Hub repo id (``name`` or ``namespace/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return not text.startswith((".", "/", "~"))


def _snapshot(repo_id: str, patterns: tuple[str, ...], *, revision: str | None, **hub: Any) -> Path:
    """Download the files matching ``patterns`` through the standard cache; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    with hub_errors("download", repo_id, revision):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns), **hub))
    if not (folder / WEIGHTS_NAME).is_file():
        raise HubNotFoundError(explain(f"{repo_id} has no {WEIGHTS_NAME}" + (f" at revision {revision!r}" if revision
                                                                            else ""),
                                       fix="Is it an olam-edit repo? Edits are published with Edit.push_to_hub."))
    if not (folder / CHECKSUMS_NAME).is_file():
        warnings.warn(f"olam-edit: {repo_id} has no {CHECKSUMS_NAME}; its files are validated but not checked "
                      "against recorded checksums", stacklevel=3)
    return folder


def _resolve_local(spec: str | Path) -> Path | None:
    """The local edit folder ``spec`` names (a folder, or its edit.safetensors), or None."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.name == WEIGHTS_NAME:
        return path.parent
    if path.exists():
        raise EditFileError(explain(f"{path} is not an edit folder", expected=f"a folder holding {WEIGHTS_NAME}"))
    return None


def fetch_edit(repo_id_or_dir: str | Path, revision: str | None = None, *, endpoint: str | None = None,
              token: str | bool | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
              force_download: bool = False) -> Edit:
    """An edit from a local folder (which takes precedence) or a Hub repo, verified before it is returned.

    A Hub repo is downloaded through the standard cache (``snapshot_download``; ``HF_HUB_OFFLINE``
    and ``local_files_only`` serve it from the cache). The files must match ``checksums.json``,
    ``edit_config.json`` must match the manifest inside ``edit.safetensors``, and the tensors must
    validate (:func:`olam_edit.edit_io.load_edit`). A corrupted download raises and returns nothing.
    """
    local = _resolve_local(repo_id_or_dir)
    if local is not None:
        return load_verified(local)
    spec = str(repo_id_or_dir)
    if not looks_like_repo_id(spec):
        raise EditFileError(explain(f"no edit folder {spec!r}", expected="an existing folder or a Hub repo id "
                                    "like 'user/my-edit'", fix="Check the path."))
    try:
        folder = _snapshot(spec, EDIT_FILES, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir,
                           local_files_only=local_files_only, force_download=force_download)
    except HubNotFoundError as e:
        raise HubNotFoundError(f"{e} (and there is no local folder {spec!r})") from e
    return load_verified(folder)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(explain(f"{out} already exists", fix="Choose another folder or pass overwrite=True "
                                        "(--overwrite)."))
    if out.is_file():
        raise OutputExistsError(explain(f"{out} is a file", expected="a folder to write the edit into"))


def _replace_dir(staged: Path, out: Path) -> None:
    """Move ``staged`` to ``out``; an existing ``out`` is swapped out and removed only after success."""
    if not out.exists():
        os.replace(staged, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(staged, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def pull_edit(repo_id: str, out_dir: str | Path, *, revision: str | None = None, endpoint: str | None = None,
              token: str | bool | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
              force_download: bool = False, overwrite: bool = False) -> Path:
    """Download the edit ``repo_id`` into the folder ``out_dir`` (its files, checksums, card and picture).

    The files are verified first (as in :func:`fetch_edit`), copied to a temporary sibling folder and
    renamed into place: ``out_dir`` appears complete or not at all. An existing non-empty ``out_dir``
    is refused unless ``overwrite``.
    """
    check_repo_id(repo_id)
    out = Path(out_dir).expanduser()
    _check_output(out, overwrite)
    folder = _snapshot(repo_id, PULLED_FILES, revision=revision, endpoint=endpoint, token=token,
                       cache_dir=cache_dir, local_files_only=local_files_only, force_download=force_download)
    load_verified(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name in PULLED_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, staged / name)
        _replace_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------ statistics


def stats_path_in_repo(layer: str, fingerprint: str) -> str:
    """Where the statistics of ``layer`` with ``fingerprint`` live in a repo."""
    return f"{STATS_FOLDER}/{_cache_path(Path(), layer, fingerprint).name}"


def _stats_identity(sm: SecondMoment, layer: str | None) -> tuple[str, str]:
    fp, recorded = sm.manifest.get("fingerprint"), sm.manifest.get("layer")
    layer = layer or recorded
    if not fp or not layer:
        raise RequestError(explain("only statistics with a fingerprint and a layer can be published",
                                   got=sorted(sm.manifest), expected="'fingerprint' and 'layer' in the manifest",
                                   fix="Collect them with Generator.stats() or collect_stats(..., sampler=...)."))
    if recorded and recorded != layer:
        raise RequestError(explain("the statistics belong to another layer", got=layer, expected=recorded))
    return layer, fp


def push_stats(sm: SecondMoment, repo_id: str, *, layer: str | None = None, private: bool = False,
               token: str | bool | None = None, revision: str | None = None, create_pr: bool = False,
               commit_message: str | None = None, endpoint: str | None = None) -> str:
    """Publish a layer's statistics (with their fingerprint manifest) to ``repo_id`` in one commit.

    The file lands at :func:`stats_path_in_repo`; other files of the repo are left alone. Returns the
    commit URL.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    layer, fp = _stats_identity(sm, layer)
    check_repo_id(repo_id)
    token = write_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    path_in_repo = stats_path_in_repo(layer, fp)
    with tempfile.TemporaryDirectory(prefix="olam-edit-stats-") as tmp:
        local = sm.save(Path(tmp) / "stats.safetensors", {"layer": layer, "fingerprint": fp})
        with hub_errors("push statistics to", repo_id, revision):
            _prepare_repo(api, repo_id, private=private, revision=revision, create_pr=create_pr)
            return api.create_commit(repo_id, [CommitOperationAdd(path_in_repo, str(local))], revision=revision,
                                     create_pr=create_pr,
                                     commit_message=commit_message or f"olam-edit: key statistics of {layer}")


def pull_stats(repo_id: str, layer: str, *, expect_fingerprint: str, revision: str | None = None,
               endpoint: str | None = None, token: str | bool | None = None, cache_dir: str | Path | None = None,
               local_files_only: bool = False, force_download: bool = False) -> SecondMoment:
    """Download the statistics of ``layer`` whose fingerprint is ``expect_fingerprint`` (the local model's).

    Raises StaleStatisticsError when the repo only has statistics of ``layer`` made for something else
    (another model, sampler or sample count), or when the file's own manifest disagrees;
    HubNotFoundError when it has none for ``layer``.
    """
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    check_repo_id(repo_id)
    remote_missing = getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)  # named so since hub 1.0
    path_in_repo = stats_path_in_repo(layer, expect_fingerprint)
    with hub_errors("download statistics from", repo_id, revision):
        try:
            local = hf_hub_download(repo_id, path_in_repo, revision=revision, endpoint=endpoint, token=token,
                                    cache_dir=cache_dir, local_files_only=local_files_only,
                                    force_download=force_download)
        except remote_missing as e:
            if isinstance(e, hf.LocalEntryNotFoundError):
                raise
            raise _missing_stats(repo_id, layer, expect_fingerprint, revision, endpoint, token) from None
    sm = SecondMoment.load(local, expect_fingerprint=expect_fingerprint)
    if sm.manifest.get("layer") not in (None, layer):
        raise StaleStatisticsError(explain("the published statistics are of another layer",
                                           got=sm.manifest.get("layer"), expected=layer))
    return sm


def _stats_fingerprints(files: list[str], layer: str) -> list[str]:
    """The (16-hex) fingerprints of the statistics of ``layer`` among a repo's ``files``."""
    probe = stats_path_in_repo(layer, "0" * 16)
    prefix, suffix = probe[: -len("0" * 16 + ".safetensors")], ".safetensors"
    found = [f[len(prefix) : -len(suffix)] for f in files if f.startswith(prefix) and f.endswith(suffix)]
    return [fp for fp in found if re.fullmatch(r"[0-9a-f]{16}", fp)]


def _missing_stats(repo_id: str, layer: str, fp: str, revision: str | None, endpoint: str | None,
                   token: str | bool | None) -> OlamEditError:
    """The error for a repo without statistics of ``layer`` for ``fp``: stale ones, or none at all."""
    from huggingface_hub import HfApi

    files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision)
    others = sorted(_stats_fingerprints(files, layer))
    if others:
        return StaleStatisticsError(explain(
            f"{repo_id} has statistics of layer {layer!r} for another model or sampler, not for this one",
            got=others, expected=fp[:16],
            fix="Load the model they were made for, or collect them locally (olam-edit stats) and push them."))
    return HubNotFoundError(explain(f"{repo_id} has no statistics of layer {layer!r}",
                                    expected=stats_path_in_repo(layer, fp),
                                    fix="Collect them locally (olam-edit stats), or push them with push_stats."))
