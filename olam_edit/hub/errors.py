"""Translate huggingface_hub client errors into HubError subclasses that say what failed and how to fix it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from olam_edit.errors import (
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotFoundError,
    OlamEditError,
    explain,
)


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


# huggingface_hub wraps a failed LFS object upload: RuntimeError("Error while uploading '<path>' to the Hub.")
# raised from the HTTP or network error; the batch API's per-object refusals come as one multi-line ValueError.
_UPLOAD_FAILED = re.compile(r"Error while uploading '(.+)' to the Hub")
_BATCH_REFUSED = "LFS batch API returned errors"


def translate_error(e: Exception, action: str, repo_id: str, revision: str | None = None) -> HubError | None:
    """The HubError that explains ``e``, or None when ``e`` is not a Hub or network error.

    A failed upload of a large (LFS) file is explained by its cause and names the file; a refusal
    by the LFS batch API (e.g. a file over the Hub's size limit) gets a one-line message.
    """
    where = f"{repo_id} at revision {revision!r}" if revision else repo_id
    head = f"cannot {action} {where}"
    match = _UPLOAD_FAILED.search(str(e)) if isinstance(e, RuntimeError) else None
    if match is not None and isinstance(e.__cause__, Exception):
        upload_head = f"{head}: uploading {match.group(1)} failed"
        cause = e.__cause__
        return _translate(cause, upload_head, action, repo_id, revision) or HubError(
            explain(upload_head, got=f"{type(cause).__name__}: {_server_message(cause)}", fix="Try again later."))
    if isinstance(e, ValueError) and str(e).startswith(_BATCH_REFUSED):
        details = "; ".join(line.replace("`", "").strip() for line in str(e).splitlines()[1:] if line.strip())
        return HubError(explain(f"{head}: the Hub refused to store a large file", got=details or None,
                                fix="Check the file against the Hub's storage limits, then try again."))
    return _translate(e, head, action, repo_id, revision)


def _translate(e: Exception, head: str, action: str, repo_id: str, revision: str | None) -> HubError | None:
    """The HubError for ``e`` under the message start ``head``, or None when it is not a Hub or network error."""
    from huggingface_hub import errors as hf

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
