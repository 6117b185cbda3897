"""How a text-rule edit was made, in words (the ``describe`` of the ``"text"`` rule kind)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

_PRIORS = {
    "corpus": "the second moment of token embeddings over the shipped prompt corpus",
    "identity": "the identity (TIME / UCE)",
    "SecondMoment": "a given second moment of token embeddings",
    "Tensor": "a given [d, d] matrix",
}


def _prompt(p: object) -> str:
    return repr(p) if p else "the empty prompt"


def _concepts(recipe: Mapping[str, Any]) -> str:
    """The erase / replace rules in words: each concept and its guide or destination."""
    concepts, guides = recipe.get("concepts") or [], recipe.get("guides") or []
    if recipe.get("mode") == "replace":
        pairs = [f"replace {c!r} with {_prompt(g)}" for c, g in zip(concepts, guides, strict=False)]
    else:
        pairs = [f"erase {c!r} towards the guide {_prompt(g)}" for c, g in zip(concepts, guides, strict=False)]
    padding = recipe.get("padding", True)
    tail = "the end-of-text and padding positions after it" if padding else "its end-of-text position"
    other = "destination" if recipe.get("mode") == "replace" else "guide"
    if recipe.get("tokens") == "all":
        return (f"{'; '.join(pairs)}. Each concept's tokens and {tail} (the positions that attend to it) take the "
                f"values of the aligned tokens of the {other}: last content token onto last, earlier ones right to "
                "left, end-of-text and padding in order")
    return (f"{'; '.join(pairs)}. Each concept's last token and {tail} (the positions that attend to it) take the "
            f"values of the aligned tokens of the {other}: last content token onto last, end-of-text and padding in "
            "order")


def _layers(recipe: Mapping[str, Any]) -> str:
    """Which layers, when the recipe lists them: how many, by kind (the last part of the name)."""
    names = recipe.get("layers")
    if not isinstance(names, list) or not names:
        return "the cross-attention key / value projections"
    kinds = Counter(str(n).rsplit(".", 1)[-1] for n in names)
    if set(kinds) <= {"to_k", "to_v"}:
        return f"{len(names)} cross-attention key / value projections ({kinds['to_k']} `to_k`, {kinds['to_v']} `to_v`)"
    return f"{len(names)} layers that read the text embeddings ({', '.join(f'{v} `{k}`' for k, v in kinds.items())})"


def _rules(recipe: Mapping[str, Any]) -> str:
    if recipe.get("mode") in ("erase", "replace"):
        return _concepts(recipe)
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
    """One paragraph from a text rule's recipe: the layers, the rules (render / erase / replace), the fit,
    the prior, what was kept and the strength."""
    if recipe.get("fit") == "exact":
        fit = "exact fit of the source tokens with the least change over the prior"
    else:
        weight = recipe.get("prior_weight")
        fit = "soft fit" + (f" with prior weight {weight}" if weight is not None else "")
    preserve = recipe.get("preserve") or []
    padding = recipe.get("padding")
    parts = [f"Text rule on {_layers(recipe)} (closed form): {_rules(recipe)}.",
             f"{fit[0].upper()}{fit[1:]}; prior C: {_prior(recipe)}.",
             f"Preserved prompts: {', '.join(repr(p) for p in preserve) if preserve else 'none'}."]
    scale = recipe.get("scale")
    if isinstance(scale, int | float) and not isinstance(scale, bool) and scale != 1:
        parts.append(f"Applied at strength {scale:g} (the solved update times {scale:g}).")
    if padding is not None and recipe.get("mode") not in ("erase", "replace"):
        parts.append(f"Padding positions {'edited as well' if padding else 'left out'}.")
    if "alignments" in recipe:
        parts.append("The prompts and token alignments are stored in `edit_config.json` (`recipe`), so anyone "
                     "can re-derive the edit.")
    return " ".join(parts)
