"""How a spatial-rule edit was made, in words (the ``describe`` of the ``"spatial"`` rule kind)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _seed(selection: Any) -> Any:
    return selection.get("seed") if isinstance(selection, Mapping) else None


def describe_spatial(recipe: Mapping[str, Any]) -> str:
    """One paragraph from a request's JSON (:meth:`EditRequest.to_json`): layer, rank and the seeds of
    the copy, paste and context selections."""
    context = [_seed(s) for s in recipe.get("context") or [] if isinstance(s, Mapping)]
    return (f"Spatial rule (copy / paste / context) on layer `{recipe.get('layer')}`, rank {recipe.get('rank')}: "
            f"copy from sample seed {_seed(recipe.get('copy'))}, paste into sample seed {_seed(recipe.get('paste'))}, "
            f"context seeds {context or 'none'}. The painted masks are stored as PNG in `edit_config.json` "
            "(`recipe`), so anyone can re-derive the edit.")
