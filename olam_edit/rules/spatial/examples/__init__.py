"""The curated example requests that ship with the package (the ``*.json`` files beside this module)."""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

from olam_edit.errors import RequestError, explain
from olam_edit.rules.spatial.request import EditRequest


def _folder():
    return importlib.resources.files(__package__)


def list_examples() -> list[str]:
    """Names of the shipped examples, sorted."""
    return sorted(p.name[: -len(".json")] for p in _folder().iterdir()
                  if p.name.endswith(".json") and not p.name.endswith(".eval.json"))


def load_example(name: str) -> tuple[EditRequest, dict[str, Any]]:
    """The request of example ``name`` and its settings (smoothness, evaluation region, held-out seeds)."""
    names = list_examples()
    if name not in names:
        raise RequestError(explain(f"no example named {name!r}", expected=f"one of {names}"))
    request = EditRequest.from_json(json.loads((_folder() / f"{name}.json").read_text()))
    settings_file = _folder() / f"{name}.eval.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return request, settings
