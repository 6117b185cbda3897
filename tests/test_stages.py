"""A rule rewritten at two layers (olam_edit.rules.spatial.stages): the second stage is solved on the
model the first edited, the model is left bit for bit as it was, and bad settings are one clear error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from olam_edit.adapters import load_default
from olam_edit.edit.apply import applied_edits, edited
from olam_edit.errors import RequestError
from olam_edit.rules.spatial.examples import load_example
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.rules.spatial.stages import Then, parse_then, solve_staged

THEN = Then("main.12", rank=1, first_strength=0.5)


@pytest.fixture(scope="module")
def gen():
    return load_default()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("stats"))


@pytest.fixture(scope="module")
def rule():
    request, settings = load_example("add_sunglasses")
    return request, settings


def _maker(gen, settings, cache):
    def make(layer: str) -> Rewriter:
        return Rewriter(gen, layer, smoothness=settings["smoothness"], ridge=settings["ridge"], cache_dir=cache,
                        progress=False)

    return make


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_second_stage_is_solved_on_the_model_the_first_edited(gen, rule, cache) -> None:
    request, settings = rule
    make = _maker(gen, settings, cache)
    staged = solve_staged(gen, request, THEN, make)
    assert staged.layers == ["main.6", "main.12"]
    first = make("main.6").rewrite(request).scaled(THEN.first_strength)
    second_request = dataclasses.replace(request, layer="main.12", rank=1)
    with edited(gen.model, first):  # by hand: the second layer's statistics and targets of the edited model
        on_edited = make("main.12").rewrite(second_request)
    on_base = make("main.12").rewrite(second_request)  # what it would be without the first stage
    got = staged.deltas["main.12"].dense(torch.float64)  # [3, 64, 4, 4] as the layer's weight
    want = on_edited.deltas["main.12"].dense(torch.float64)
    base = on_base.deltas["main.12"].dense(torch.float64)
    assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
    assert float((base - want).norm()) > 0.05 * float(want.norm())  # the first stage does change the second
    assert torch.allclose(staged.deltas["main.6"].dense(torch.float64), first.deltas["main.6"].dense(torch.float64),
                          rtol=0, atol=1e-7)
    assert staged.deltas["main.12"].rank == 1
    norms = staged.manifest["metrics"]["relative_norms"]
    assert set(norms) == {"main.6", "main.12"} and staged.manifest["metrics"]["relative_norm"] == max(norms.values())



def test_a_second_stage_before_the_first_layer_is_solved_as_on_the_unedited_model(gen, rule, cache) -> None:
    """main.3 comes before main.6: the first stage changes neither its keys nor its targets."""
    request, settings = rule
    make = _maker(gen, settings, cache)
    staged = solve_staged(gen, request, Then("main.3", rank=2, first_strength=1.0), make)
    assert staged.layers == ["main.6", "main.3"] and staged.deltas["main.3"].rank == 2
    alone = make("main.3").rewrite(dataclasses.replace(request, layer="main.3", rank=2))
    got = staged.deltas["main.3"].dense(torch.float64)  # [512, 256, 4, 4] as the layer's weight
    want = alone.deltas["main.3"].dense(torch.float64)
    assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))  # float32 forward passes
    assert torch.allclose(staged.deltas["main.6"].dense(torch.float64),
                          make("main.6").rewrite(request).deltas["main.6"].dense(torch.float64), rtol=0, atol=1e-7)

def test_a_staged_solve_and_its_edit_leave_the_model_bit_for_bit(gen, rule, cache) -> None:
    request, settings = rule
    before = _weights(gen.model)
    staged = solve_staged(gen, request, THEN, _maker(gen, settings, cache))
    assert applied_edits(gen.model) == []
    assert all(torch.equal(before[k], v) for k, v in gen.model.state_dict().items())
    staged.apply(gen.model)
    changed = [k for k, v in gen.model.state_dict().items() if not torch.equal(before[k], v)]
    assert sorted(changed) == ["main.12.weight", "main.6.weight"]
    staged.revert(gen.model)
    assert all(torch.equal(before[k], v) for k, v in gen.model.state_dict().items())


def test_a_failing_second_stage_leaves_the_model_as_it_was(gen, rule, cache) -> None:
    request, settings = rule
    before = _weights(gen.model)
    make = _maker(gen, settings, cache)

    def failing(layer: str) -> Rewriter:
        if layer == "main.12":
            raise RequestError("no second stage today")
        return make(layer)

    with pytest.raises(RequestError, match="no second stage"):
        solve_staged(gen, request, THEN, failing)
    assert applied_edits(gen.model) == []
    assert all(torch.equal(before[k], v) for k, v in gen.model.state_dict().items())


@pytest.mark.parametrize("then", [
    {"layer": "main.6"},  # the first layer again
    {"layer": "main.12", "rank": 0},
    {"layer": "main.12", "rank": True},
    {"layer": "main.12", "first_strength": float("nan")},
    {"layer": "main.12", "first_strength": 3},
    {"layer": "main.12", "strength": 1},  # an unknown key
    {"layer": "main.12", "ridge": 0.1},  # both stages use the rule's own ridge
    ["main.12"],
])
def test_bad_second_stage_settings_are_one_clear_error(then) -> None:
    with pytest.raises(RequestError) as err:
        parse_then({"then": then}, "main.6")
    assert "\n" not in str(err.value).strip() or len(str(err.value)) < 400


def test_settings_without_a_second_stage_have_none() -> None:
    assert parse_then({}, "main.6") is None
    assert parse_then({"then": {"layer": "main.12"}}, "main.6") == Then("main.12", 1, 1.0)


def test_the_readme_two_layer_example_runs(capsys, tmp_path, monkeypatch) -> None:
    from readme_code import python_block_after

    monkeypatch.setenv("OLAM_EDIT_CACHE", str(tmp_path / "cache"))
    ns: dict = {}
    exec(compile(python_block_after("<!-- staged-example -->"), "README.md", "exec"), ns)
    assert "Edit(main.6: rank 1, main.12: rank 1)" in capsys.readouterr().out
    for layer in ("main.6", "main.12"):
        a, b = ns["edit"].deltas[layer].dense(torch.float64), ns["own"].deltas[layer].dense(torch.float64)
        assert torch.allclose(a, b, rtol=0, atol=1e-6 * float(a.abs().max()))


def test_keep_top_leaves_the_second_layers_leading_key_directions_unchanged(gen, rule, cache) -> None:
    request, settings = rule
    make = _maker(gen, settings, cache)
    then = Then("main.12", rank=1, first_strength=0.5, keep_top=2)
    staged = solve_staged(gen, request, then, make)
    first = make("main.6").rewrite(request).scaled(0.5)
    with edited(gen.model, first):
        C = make("main.12").C  # [64, 64] of the model the second stage was solved on
    top = torch.linalg.eigh(C)[1][:, -2:]  # [64, 2]
    D = staged.deltas["main.12"].directions.double()  # [1, 64]
    assert float((D @ top).abs().max()) < 1e-6
    plain = solve_staged(gen, request, Then("main.12", 1, 0.5), make).deltas["main.12"].directions.double()
    assert float((plain @ top).abs().max()) > 1e-2  # without it the change does move them
