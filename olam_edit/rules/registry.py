"""The rule-kind registry: every kind of rule olam-edit solves, and how its edits describe themselves.

A :class:`RuleKind` is a name, a title and ``describe(recipe) -> str`` (one paragraph of Markdown saying
how an edit of that kind was made). olam-edit's own kinds sit in the static table :data:`RULE_KINDS`;
code outside the package declares more with :func:`register_rule_kind` (a call made at start-up, never
at import time).

The model card (:mod:`olam_edit.edit.card`) sits below the rules and never imports them, so the
dependency is inverted: a rule stamps its recipe with :func:`make_recipe` when it creates an edit, and
the card renders the stamped fields of any kind generically:

- ``recipe["kind"]``: the kind's name (a key of :func:`rule_kinds`);
- ``recipe["summary"]``: ``describe(recipe)``, the "How it was made" paragraph;
- ``recipe["layer_notes"]`` (optional): ``{layer: short note}``, a column of the card's layer table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from olam_edit.edit.merge import describe_merged
from olam_edit.errors import RequestError, explain
from olam_edit.rules.spatial.describe import describe_spatial
from olam_edit.rules.text.describe import describe_text

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
STAMPED_FIELDS = ("kind", "summary", "layer_notes")  # what make_recipe adds to a rule's own fields


@dataclass(frozen=True)
class RuleKind:
    """One kind of rule: ``name`` (lower-case identifier, stored in recipes), ``title`` (a few words for
    people), ``describe(recipe) -> str`` (the card's "How it was made" paragraph for one recipe of this
    kind) and ``module`` (where its solver lives, for documentation and error messages)."""

    name: str
    title: str
    describe: Callable[[Mapping[str, Any]], str]
    module: str = ""


RULE_KINDS: Mapping[str, RuleKind] = MappingProxyType({
    "spatial": RuleKind("spatial", "the paper's copy / paste / context rule on generated samples",
                        describe_spatial, "olam_edit.rules.spatial.rewriter"),
    "text": RuleKind("text", "render a source prompt as a destination prompt (cross-attention keys -> values)",
                     describe_text, "olam_edit.rules.text.solve"),
    "merged": RuleKind("merged", "several edits summed into one (Edit.merge)", describe_merged,
                       "olam_edit.edit.merge"),
})
_registered: dict[str, RuleKind] = {}  # kinds declared at run time by register_rule_kind()


def register_rule_kind(kind: RuleKind) -> RuleKind:
    """Declare a rule kind made outside olam-edit; returns it. A name already in use is refused."""
    if not isinstance(kind, RuleKind):
        raise RequestError(explain("a rule kind must be a RuleKind", got=type(kind).__name__,
                                   fix="Use RuleKind(name, title, describe)."))
    if not isinstance(kind.name, str) or not _NAME.match(kind.name):
        raise RequestError(explain("a rule kind's name must be a lower-case identifier", got=repr(kind.name),
                                   expected="e.g. 'key_value'"))
    if not callable(kind.describe):
        raise RequestError(explain(f"rule kind {kind.name!r} has no describe(recipe) function",
                                   got=type(kind.describe).__name__))
    if kind.name in rule_kinds():
        raise RequestError(explain(f"rule kind {kind.name!r} is already declared",
                                   got=rule_kinds()[kind.name].module or "a kind registered earlier",
                                   fix="Pick another name; each kind is registered once."))
    _registered[kind.name] = kind
    return kind


def rule_kinds() -> dict[str, RuleKind]:
    """Every declared kind by name: the built-in table, then the ones registered at run time."""
    return {**RULE_KINDS, **_registered}


def rule_kind(name: str) -> RuleKind:
    """The kind called ``name``; an unknown name raises RequestError listing the known ones."""
    kinds = rule_kinds()
    if name not in kinds:
        raise RequestError(explain(f"unknown rule kind {name!r}", expected=f"one of {sorted(kinds)}",
                                   fix="Declare it with olam_edit.rules.register_rule_kind(RuleKind(...))."))
    return kinds[name]


def make_recipe(kind: str, fields: Mapping[str, Any], *, layer_notes: Mapping[str, str] | None = None
                ) -> dict[str, Any]:
    """The recipe of an edit of ``kind``: the rule's own JSON ``fields``, stamped with ``kind``,
    ``summary`` (the kind's ``describe(fields)``) and, when given, ``layer_notes`` ``{layer: note}``."""
    rk = rule_kind(kind)
    own = {k: v for k, v in fields.items() if k not in STAMPED_FIELDS}
    summary = rk.describe(own)
    if not isinstance(summary, str) or not summary.strip():
        raise RequestError(explain(f"rule kind {kind!r} described a recipe with no text", got=repr(summary)[:80],
                                   fix="describe(recipe) must return a non-empty string."))
    recipe = {"kind": kind, **own, "summary": " ".join(summary.split())}
    if layer_notes:
        recipe["layer_notes"] = {str(k): str(v) for k, v in layer_notes.items()}
    try:
        json.dumps(recipe)
    except (TypeError, ValueError) as e:
        raise RequestError(explain(f"the recipe of a {kind!r} edit is not JSON", got=str(e)[:120],
                                   fix="Store numbers, strings, lists and dicts only.")) from e
    return recipe


def kind_of(recipe: Mapping[str, Any]) -> str | None:
    """The kind a recipe was made by: its ``kind`` field, else what edits written before rule kinds look
    like (``"text"`` for ``type: text_rule``, ``"spatial"`` for a copy / paste request), else None."""
    if isinstance(recipe.get("kind"), str):
        return recipe["kind"]
    if recipe.get("type") == "text_rule":
        return "text"
    return "spatial" if "copy" in recipe and "paste" in recipe else None


def describe_recipe(recipe: Mapping[str, Any]) -> str:
    """How an edit was made, in words: the recipe's ``summary``, else its kind's ``describe``."""
    if isinstance(recipe.get("summary"), str) and recipe["summary"].strip():
        return recipe["summary"]
    kind = kind_of(recipe)
    if kind is None:
        raise RequestError(explain("the recipe does not say which rule kind made it", got=sorted(recipe)[:8],
                                   expected="a 'kind' field"))
    return " ".join(rule_kind(kind).describe(recipe).split())


__all__ = ["RULE_KINDS", "RuleKind", "describe_recipe", "kind_of", "make_recipe", "register_rule_kind",
           "rule_kind", "rule_kinds"]
