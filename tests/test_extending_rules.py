"""README "Extending olam-edit / A new rule kind": the section's code block, run as it is on its tiny
model, gives an Edit that maps the keys to their values, applies and reverts exactly, and describes
itself on the model card in the rule's own words."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from readme_code import README, python_block_after

import olam_edit as oe
from olam_edit.edit.card import build_model_card
from olam_edit.errors import RequestError
from olam_edit.rules import make_recipe, register_rule_kind, registry, rule_kind

MARKER = "<!-- rule-kind-example -->"


def _example_code() -> str:
    return python_block_after(MARKER, section='### A new rule kind')


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The README block executed in a fresh namespace, with kinds registered by it forgotten afterwards."""
    monkeypatch.setattr(registry, "_registered", {})
    torch.manual_seed(17)
    namespace: dict = {"__name__": "readme_rule_kind"}
    exec(compile(_example_code(), str(README), "exec"), namespace)
    return namespace


def test_the_section_is_where_the_issue_says() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.index("## Extending olam-edit") < text.index("### A new rule kind") < text.index("## How it works")


def test_readme_rule_kind_maps_keys_to_values_and_reverts_exactly(example: dict) -> None:
    model, keys, values, edit = example["model"], example["keys"], example["values"], example["edit"]
    assert rule_kind("key_value") is example["KEY_VALUE"]
    w0 = model[0].weight.detach().clone()
    k_perp = torch.randn(4, 8, dtype=torch.float64)
    k64 = keys.double()
    k_perp -= k_perp @ k64.T @ torch.linalg.pinv(k64 @ k64.T) @ k64  # orthogonal to every key
    k_perp = k_perp.float()
    with torch.no_grad():
        before_perp = model(k_perp)
        with oe.edited(model, edit):
            got, after_perp = model(keys), model(k_perp)
        assert torch.equal(model[0].weight, w0)  # reverted bit for bit
    assert float((got - values).norm() / values.norm()) < 1e-4
    assert float((after_perp - before_perp).abs().max()) < 1e-5  # D spans the keys: the rest is unchanged
    assert edit.deltas["0"].rank == len(keys)


def test_readme_rule_kind_edit_describes_itself(example: dict, tmp_path: Path) -> None:
    edit = example["edit"]
    recipe = edit.manifest["recipe"]
    assert recipe["kind"] == "key_value" and recipe["keys"] == 3 and recipe["layer"] == "0"
    assert recipe["summary"].startswith("Key -> value rule on layer `0`: 3 keys")
    loaded = oe.Edit.load(edit.save(tmp_path / "kv"))
    card = build_model_card(loaded, "someone/key-value").content
    assert "Rule kind `key_value`. Key -> value rule on layer `0`: 3 keys mapped to chosen values" in card
    assert "sample seed" not in card and "Layer `None`" not in card


def test_a_kind_is_registered_once_and_unknown_kinds_are_refused(example: dict) -> None:
    with pytest.raises(RequestError, match="already declared"):
        register_rule_kind(example["KEY_VALUE"])
    with pytest.raises(RequestError, match=r"unknown rule kind 'key_valu'.*key_value"):
        make_recipe("key_valu", {"layer": "0"})
