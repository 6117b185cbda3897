"""Rules: what a user asks to change, turned into keys, targets and a solve. One sub-package per rule
kind (``spatial``: the paper's copy / paste / context; ``text``: prompts on cross-attention), each
declared in :mod:`olam_edit.rules.registry`, which also says how an edit of each kind describes itself."""

from olam_edit.rules.registry import (
    RULE_KINDS,
    RuleKind,
    describe_recipe,
    kind_of,
    make_recipe,
    register_rule_kind,
    rule_kind,
    rule_kinds,
)

__all__ = ["RULE_KINDS", "RuleKind", "describe_recipe", "kind_of", "make_recipe", "register_rule_kind",
           "rule_kind", "rule_kinds"]
