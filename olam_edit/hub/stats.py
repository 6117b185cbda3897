"""Publish and fetch key statistics: ``stats/<layer>-<fingerprint[:16]>.safetensors`` in any repo."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from olam_edit.errors import (
    HubNotFoundError,
    OlamEditError,
    RequestError,
    StaleStatisticsError,
    explain,
)
from olam_edit.hub.errors import hub_errors
from olam_edit.hub.repo import _prepare_repo, check_repo_id, write_token
from olam_edit.memory.collect import _cache_path
from olam_edit.memory.stats import SecondMoment

STATS_FOLDER = "stats"
CARD_NAME = "README.md"


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

    The file lands at :func:`stats_path_in_repo`, and the repo's ``README.md`` card is regenerated in
    the same commit (:mod:`olam_edit.hub.stats_card`: what ``C`` is, the model, layer, sampler and
    fingerprint of every statistics file in the repo, and how to use them). A README that push_stats
    did not write (a model's or an edit's own card) is left alone, as are all other files. Creates a
    model repo when there is none. Returns the commit URL.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from olam_edit.hub.stats_card import stats_entry  # the card module loads only when something is pushed

    layer, fp = _stats_identity(sm, layer)
    check_repo_id(repo_id)
    token = write_token(token)
    api = HfApi(endpoint=endpoint, token=token)
    path_in_repo = stats_path_in_repo(layer, fp)
    with tempfile.TemporaryDirectory(prefix="olam-edit-stats-") as tmp:
        local = sm.save(Path(tmp) / "stats.safetensors", {"layer": layer, "fingerprint": fp})
        with hub_errors("push statistics to", repo_id, revision):
            repo_id = _prepare_repo(api, repo_id, private=private, revision=revision, create_pr=create_pr)
            ops = [CommitOperationAdd(path_in_repo, str(local))]
            ops += _card_operation(api, repo_id, revision, stats_entry(sm.manifest, sm.count, path_in_repo), Path(tmp))
            return api.create_commit(repo_id, ops, revision=revision, create_pr=create_pr,
                                     commit_message=commit_message or f"olam-edit: key statistics of {layer}")


def _card_operation(api: Any, repo_id: str, revision: str | None, entry: dict[str, Any], tmp: Path) -> list[Any]:
    """The commit operation that writes the repo's regenerated stats card, or none when its README is not ours."""
    from huggingface_hub import CommitOperationAdd

    from olam_edit.hub.stats_card import build_stats_card, entries_of, merge_entries

    files = api.list_repo_files(repo_id, revision=revision)
    old = None
    if CARD_NAME in files:
        old = Path(api.hf_hub_download(repo_id, CARD_NAME, revision=revision, local_dir=tmp / "card")).read_text(
            encoding="utf-8")
    entries = entries_of(old)
    if entries is None:
        return []
    card = build_stats_card(repo_id, merge_entries(entries, entry, files, STATS_FOLDER))
    path = tmp / CARD_NAME
    path.write_text(card.content, encoding="utf-8")
    return [CommitOperationAdd(CARD_NAME, str(path))]


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
