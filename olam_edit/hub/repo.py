"""The one place for repo-id checks, write tokens and repo preparation (create_repo, branches)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from olam_edit.errors import (
    RequestError,
    explain,
)
from olam_edit.hub.errors import _no_token_error

_OID_RE = re.compile(r"[0-9a-f]{40}")


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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_repo(api: Any, repo_id: str, *, private: bool, revision: str | None, create_pr: bool) -> str:
    """Create the repo if needed, and the branch ``revision`` when a push targets a new one.

    Returns the full repo id (a bare ``name`` becomes ``user/name``, as the Hub creates it).
    """
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision and not create_pr and revision != "main" and not _OID_RE.fullmatch(revision):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` is a syntactically valid Hub repo id (``name`` or ``namespace/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return not text.startswith((".", "/", "~"))
