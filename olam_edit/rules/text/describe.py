"""How a text-rule edit was made, in words (the ``describe`` of the ``"text"`` rule kind)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_PRIORS = {
    "corpus": "the second moment of token embeddings over the shipped prompt corpus",
    "identity": "the identity (TIME / UCE)",
    "SecondMoment": "a given second moment of token embeddings",
    "Tensor": "a given [d, d] matrix",
}


def _rules(recipe: Mapping[str, Any]) -> str:
    sources, dests = recipe.get("source"), recipe.get("destination")
    if isinstance(sources, list) and isinstance(dests, list) and sources:
        return "; ".join(f"render {s!r} as {d!r}" for s, d in zip(sources, dests, strict=False))
    return f"map {recipe.get('keys', 'the given')} key embeddings to their target embeddings"


def _prior(recipe: Mapping[str, Any]) -> str:
    prior, corpus = recipe.get("prior"), recipe.get("corpus")
    text = _PRIORS.get(str(prior), f"`{prior}`" if prior else "not recorded")
    if prior == "corpus" and corpus is not None:
        text = f"the second moment of token embeddings over the prompt corpus {corpus!r}"
    return text


def describe_text(recipe: Mapping[str, Any]) -> str:
    """One paragraph from a text rule's recipe: the rules, the fit, the prior and what was kept."""
    if recipe.get("fit") == "exact":
        fit = "exact fit of the source tokens with the least change over the prior"
    else:
        weight = recipe.get("prior_weight")
        fit = "soft fit" + (f" with prior weight {weight}" if weight is not None else "")
    preserve = recipe.get("preserve") or []
    padding = recipe.get("padding")
    parts = [f"Text rule on the cross-attention key / value projections (closed form): {_rules(recipe)}.",
             f"{fit[0].upper()}{fit[1:]}; prior C: {_prior(recipe)}.",
             f"Preserved prompts: {', '.join(repr(p) for p in preserve) if preserve else 'none'}."]
    if padding is not None:
        parts.append(f"Padding positions {'edited as well' if padding else 'left out'}.")
    if "alignments" in recipe:
        parts.append("The prompts and token alignments are stored in `edit_config.json` (`recipe`), so anyone "
                     "can re-derive the edit.")
    return " ".join(parts)
