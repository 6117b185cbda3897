"""Publishing edits: checksums over every file of an edit folder, verified loading from a folder or a
Hub repo (bad cached downloads evicted), staging, ``push_edit`` and ``pull_edit``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from olam_edit.edit.files import CONFIG_NAME, METADATA_KEY, WEIGHTS_NAME, content_fingerprint, read_edit
from olam_edit.edit.schema import check_checksums
from olam_edit.errors import (
    ChecksumMismatchError,
    EditFileError,
    HubNotFoundError,
    OutputExistsError,
    RequestError,
    explain,
)
from olam_edit.files.atomic import atomic_copy, atomic_write_bytes, make_staging_dir
from olam_edit.files.validate import read_json, regular_file
from olam_edit.hub.errors import hub_errors
from olam_edit.hub.repo import _prepare_repo, check_repo_id, looks_like_repo_id, sha256_file, write_token
from olam_edit.memory.delta import Delta

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit

CHECKSUMS_NAME = "checksums.json"


CARD_NAME = "README.md"


PICTURE_NAME = "before_after.png"


CHECKED_FILES = (WEIGHTS_NAME, CONFIG_NAME)


EDIT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CHECKSUMS_NAME)


PULLED_FILES = (*EDIT_FILES, CARD_NAME, PICTURE_NAME)


COVERED_FILES = (*CHECKED_FILES, CARD_NAME, PICTURE_NAME)  # what checksums.json records


OPTIONAL_FILES = (CARD_NAME, PICTURE_NAME)  # may be absent from a folder (from_pretrained fetches neither)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_checksums(folder: Path, edit: Edit) -> dict[str, str]:
    """Write ``checksums.json`` covering every file of ``folder`` (the edit files, and the card and picture
    when present); returns ``{file: sha256}``."""
    files = {name: sha256_file(folder / name) for name in COVERED_FILES if (folder / name).is_file()}
    record = {"algorithm": "sha256", "files": files, "edit_fingerprint": edit.fingerprint}
    atomic_write_bytes(folder / CHECKSUMS_NAME, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return files


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def verify_checksums(folder: Path, names: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Check the files ``checksums.json`` lists (those among ``names``, when given) against their sha256;
    None when there is no such file.

    A listed edit file that is missing raises EditFileError; a missing card or picture (not downloaded,
    or removed) is skipped. Raises ChecksumMismatchError naming the file and both digests; its ``files``
    attribute lists the names that differ. Only regular files are opened.
    """
    path = folder / CHECKSUMS_NAME
    if not _present(path):
        return None
    record = check_checksums(read_json(path, EditFileError, max_bytes=1 << 20), str(path), WEIGHTS_NAME)
    wanted = set(record["files"]) if names is None else set(names) & set(record["files"])
    for name in sorted(wanted):
        target = folder / name
        if not _present(target):
            if name in OPTIONAL_FILES:
                continue
            raise EditFileError(explain(f"{name} is listed in {CHECKSUMS_NAME} but missing from {folder}"))
        got = sha256_file(regular_file(target, EditFileError))
        expected = record["files"][name]
        if got != expected:
            error = ChecksumMismatchError(explain(f"{name} does not match its recorded checksum (corrupted or "
                                                  "altered)", got=f"sha256 {got}", expected=f"sha256 {expected}",
                                                  fix="Fetch it again (--force-download, or force_download=True); "
                                                      "if it persists, the published files are damaged: ask the "
                                                      "author to push again."))
            error.files = [name]  # type: ignore[attr-defined]
            raise error
    return record


def _manifests_agree(folder: Path) -> None:
    """``edit_config.json`` must hold exactly the manifest stored in ``edit.safetensors``."""
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not _present(config):
        return
    regular_file(config, EditFileError, max_bytes=16 << 20)
    regular_file(weights, EditFileError)
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = json.loads((f.metadata() or {})[METADATA_KEY])
        readable = json.loads(config.read_bytes())
    except Exception:  # unreadable files: Edit.load reports them precisely
        return
    if stored != readable:
        raise ChecksumMismatchError(explain(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {folder} carry different manifests",
                                            fix="The folder mixes files of two edits or was altered; fetch it "
                                                "again."))


def verified_parts(folder: str | Path, names: Iterable[str] | None = None
                   ) -> tuple[dict[str, Delta], dict[str, Any]]:
    """The deltas and manifest of an edit folder after checking ``checksums.json`` (when present), the
    two manifests' agreement, every check of :func:`~olam_edit.edit.files.read_edit`, and the published
    content fingerprint. ``Edit.load_verified`` builds the edit from them."""
    folder = Path(folder)
    record = verify_checksums(folder, names)
    _manifests_agree(folder)
    deltas, manifest = read_edit(folder)
    expected = (record or {}).get("edit_fingerprint")
    got = content_fingerprint(deltas)
    if expected is not None and expected != got:
        raise ChecksumMismatchError(explain("the loaded edit is not the one that was published",
                                            got=got[:16], expected=expected[:16]))
    return deltas, manifest


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
    from olam_edit.edit.card import build_model_card

    edit.save(folder)
    sums = {name: sha256_file(folder / name) for name in CHECKED_FILES}  # the card shows the edit files' digests
    if picture is not None:
        atomic_write_bytes(folder / PICTURE_NAME, picture)
    card = build_model_card(edit, repo_id, picture=PICTURE_NAME if picture is not None else None, checksums=sums)
    atomic_write_bytes(folder / CARD_NAME, card.content.encode())
    write_checksums(folder, edit)  # last: it covers the card and the picture too
    return folder


def _commit_title(edit: Edit) -> str:
    from olam_edit.edit.card import rule_text

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


def fetch_verified(repo_id_or_dir: str | Path, revision: str | None = None, *, endpoint: str | None = None,
                   token: str | bool | None = None, cache_dir: str | Path | None = None,
                   local_files_only: bool = False, force_download: bool = False
                   ) -> tuple[dict[str, Delta], dict[str, Any]]:
    """An edit's parts from a local folder (which takes precedence) or a Hub repo, verified first.

    A Hub repo is downloaded through the standard cache (``snapshot_download``; ``HF_HUB_OFFLINE``
    and ``local_files_only`` serve it from the cache). The files must match ``checksums.json``,
    ``edit_config.json`` must match the manifest inside ``edit.safetensors``, and the tensors must
    validate (:func:`olam_edit.edit.files.read_edit`). A corrupted download raises and returns nothing.
    """
    local = _resolve_local(repo_id_or_dir)
    if local is not None:
        return verified_parts(local)
    spec = str(repo_id_or_dir)
    if not looks_like_repo_id(spec):
        raise EditFileError(explain(f"no edit folder {spec!r}", expected="an existing folder or a Hub repo id "
                                    "like 'user/my-edit'", fix="Check the path."))
    try:
        folder = _snapshot(spec, EDIT_FILES, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir,
                           local_files_only=local_files_only, force_download=force_download)
    except HubNotFoundError as e:
        raise HubNotFoundError(f"{e} (and there is no local folder {spec!r})") from e
    return _verified_download(folder, EDIT_FILES)


def _verified_download(folder: Path, names: tuple[str, ...]) -> tuple[dict[str, Delta], dict[str, Any]]:
    """:func:`verified_parts` of a Hub snapshot; on a checksum failure the bad cached copies are evicted
    (so the next try downloads them again) before the error is raised."""
    try:
        return verified_parts(folder, names)
    except ChecksumMismatchError as e:
        evict_cached(folder, getattr(e, "files", names))
        raise


def evict_cached(snapshot: Path, names: Iterable[str]) -> list[str]:
    """Delete ``names`` from a huggingface_hub cache ``snapshot`` folder: each snapshot link and the blob it
    points to (only a blob in that repo's own ``blobs`` folder). Returns the names removed."""
    blobs = (snapshot.parent.parent / "blobs").resolve()
    removed = []
    for name in names:
        link = snapshot / name
        if not _present(link):
            continue
        target = link.resolve() if link.is_symlink() else None
        link.unlink()
        if target is not None and target.parent == blobs:
            target.unlink(missing_ok=True)
        removed.append(name)
    if removed:
        warnings.warn(f"olam-edit: removed the damaged cached {', '.join(removed)}; the next try downloads "
                      "again", stacklevel=4)
    return removed


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


def _copyable(folder: Path) -> list[str]:
    """The pulled files to copy: with a checksum record only the files it covers (an unrecorded card or
    picture of an older push is skipped with a warning: it could not be checked), else every one."""
    present = [n for n in PULLED_FILES if (folder / n).is_file()]
    if CHECKSUMS_NAME not in present:
        return present
    listed = set(read_json(folder / CHECKSUMS_NAME, EditFileError)["files"]) | {CHECKSUMS_NAME}
    skipped = [n for n in present if n not in listed]
    if skipped:
        warnings.warn(f"olam-edit: not copying {skipped}: {CHECKSUMS_NAME} does not cover them", stacklevel=3)
    return [n for n in present if n in listed]


def pull_edit(repo_id: str, out_dir: str | Path, *, revision: str | None = None, endpoint: str | None = None,
              token: str | bool | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
              force_download: bool = False, overwrite: bool = False) -> Path:
    """Download the edit ``repo_id`` into the folder ``out_dir`` (its files, checksums, card and picture).

    The files are verified first (as in :func:`fetch_verified`), copied to a temporary sibling folder and
    renamed into place: ``out_dir`` appears complete or not at all. An existing non-empty ``out_dir``
    is refused unless ``overwrite``.
    """
    check_repo_id(repo_id)
    out = Path(out_dir).expanduser()
    _check_output(out, overwrite)
    folder = _snapshot(repo_id, PULLED_FILES, revision=revision, endpoint=endpoint, token=token,
                       cache_dir=cache_dir, local_files_only=local_files_only, force_download=force_download)
    _verified_download(folder, PULLED_FILES)
    staged = make_staging_dir(out.parent, out.name)  # the umask's folder mode, not mkdtemp's 0700
    try:
        for name in _copyable(folder):
            atomic_copy(folder / name, staged / name)
        _replace_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out
