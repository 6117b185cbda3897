"""What a visitor types, checked before any model runs: numbers (one clear line when out of range) and the
repository name to publish to."""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, TypeVar

from olam_edit.errors import RequestError, explain
from olam_edit.hub.repo import looks_like_repo_id

T = TypeVar("T")
_PARTS: weakref.WeakKeyDictionary[Any, dict[type, Any]] = weakref.WeakKeyDictionary()
_PARTS_LOCK = threading.Lock()


def whole(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as a whole number in [low, high], else RequestError naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and low <= number <= high):
        raise RequestError(explain(f"the {what} is out of range", got=str(value)[:40],
                                   expected=f"a whole number from {low} to {high}"))
    return int(number)


def positive(value: Any, what: str, example: str) -> float:
    """``value`` as a positive finite float, else RequestError naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise RequestError(explain(f"the {what} must be a positive number", got=str(value)[:40],
                                   expected=f"e.g. {example}"))
    return number


def part_of(owner: Any, cls: type[T]) -> T:
    """The one ``cls(owner)`` of ``owner`` (made on first use), so every panel shares its caches."""
    with _PARTS_LOCK:
        parts = _PARTS.setdefault(owner, {})
        if cls not in parts:
            parts[cls] = cls(owner)  # type: ignore[call-arg]
        return parts[cls]


def check_publish(token: str | None, repo_id: str, show_login: bool) -> str:
    """The repository name to publish to (either tab), once the visitor is signed in and the name is valid."""
    if not token:
        raise RequestError(explain("publishing needs your Hugging Face login", fix=(
            "Press 'Sign in with Hugging Face' first." if show_login else
            "Sign-in works when the app runs as a Space; here, download the zip and run "
            "`olam-edit push edit/ your-name/repo`.")))
    repo_id = (repo_id or "").strip()
    if not looks_like_repo_id(repo_id):
        raise RequestError(explain("the repository name is not valid", got=repr(repo_id),
                                   expected="'name' or 'user/name' (letters, digits, '-', '_', '.')"))
    return repo_id
