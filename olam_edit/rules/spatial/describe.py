"""How a spatial-rule edit was made, in words (the ``describe`` of the ``"spatial"`` rule kind)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _seed(selection: Any) -> Any:
    return selection.get("seed") if isinstance(selection, Mapping) else None


def describe_spatial(recipe: Mapping[str, Any]) -> str:
    """One paragraph from a request's JSON (:meth:`EditRequest.to_json`) and the Rewriter's ``method``:
    layer, rank and the seeds of the copy, paste and context selections for a rewrite; layer, rank and
    the context seeds for an erase (``method: "erase"``: its directions come from the context, or the
    paste region when there is none; the copy region plays no part).
    A recipe without ``method`` (written before erases said so) reads as a rewrite."""
    rules = recipe.get("rules")
    if isinstance(rules, list) and rules:
        names = ", ".join(f"`{r.get('name') or i + 1}`" for i, r in enumerate(rules) if isinstance(r, Mapping))
        return (f"{len(rules)} spatial rules ({names}) solved jointly on layer `{recipe.get('layer')}`, rank "
                f"{recipe.get('rank')} in all: one least squares fits every rule's target together, on directions "
                "spanning each rule's own. Each rule's copy / paste / context masks are stored as PNG in "
                "`edit_config.json` (`recipe.rules`), so anyone can re-derive the edit.")
    context = [_seed(s) for s in recipe.get("context") or [] if isinstance(s, Mapping)]
    stored = "The painted masks are stored as PNG in `edit_config.json` (`recipe`), so anyone can re-derive the edit."
    if recipe.get("method") == "erase":
        where = (f"the context masks of sample seeds {context}" if context
                 else f"the paste mask of sample seed {_seed(recipe.get('paste'))} (no context was given)")
        return (f"Erase rule on layer `{recipe.get('layer')}`, rank {recipe.get('rank')}: the paper's removal rule "
                f"W1 = W0 - W0 Dᵀ D, with the directions D taken from the keys under {where}; what those keys "
                f"wrote is removed and no copy region is used. {stored}")
    return (f"Spatial rule (copy / paste / context) on layer `{recipe.get('layer')}`, rank {recipe.get('rank')}: "
            f"copy from sample seed {_seed(recipe.get('copy'))}, paste into sample seed {_seed(recipe.get('paste'))}, "
            f"context seeds {context or 'none'}. {stored}")
