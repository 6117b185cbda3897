"""The rule-kind registry and the text rule's closed form in the core: kinds declared in a static table,
recipes stamped with their own description, model cards that render any kind (older files as before),
the closed form on a plain torch model (no diffusers), one shared Cholesky helper, and the renamed
prior weight (``lam=`` still accepted with a DeprecationWarning)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import olam_edit as oe
from olam_edit.edit.card import build_model_card
from olam_edit.errors import RequestError, SingularStatisticError
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.linalg import cholesky, solve_spd
from olam_edit.rules import RULE_KINDS, RuleKind, describe_recipe, kind_of, make_recipe, register_rule_kind, registry
from olam_edit.rules.text.solve import (
    TEXT_PRIOR_RIDGE,
    prior_matrix,
    solve_map,
    solve_text_rule,
    text_rule_edit,
)

IN = 6  # key dimension of the plain model's layers


def _plain_model() -> nn.Module:
    torch.manual_seed(23)
    return nn.ModuleDict({"to_k": nn.Linear(IN, 5, bias=False), "to_v": nn.Linear(IN, 4, bias=False)}).double()


def _spd(d: int, g: torch.Generator) -> torch.Tensor:
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return A @ A.T + 0.5 * torch.eye(d, dtype=torch.float64)


# -- the registry -----------------------------------------------------------------------------------------
def test_builtin_kinds_are_a_static_table_and_registration_is_checked(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    assert set(RULE_KINDS) == {"spatial", "text", "merged"} and registry.rule_kinds() == dict(RULE_KINDS)
    with pytest.raises(TypeError):
        RULE_KINDS["other"] = RULE_KINDS["text"]  # read-only: nothing changes the table at run time
    for bad, match in ((RuleKind("Bad Name", "t", str), "lower-case identifier"),
                       (RuleKind("spatial", "t", str), "already declared"),
                       (RuleKind("nodescribe", "t", None), "no describe"), ("text", "must be a RuleKind")):
        with pytest.raises(RequestError, match=match):
            register_rule_kind(bad)
    mine = register_rule_kind(RuleKind("mine", "a test kind", lambda r: f"made from {r['n']} things"))
    assert registry.rule_kind("mine") is mine and set(registry.rule_kinds()) == {"spatial", "text", "merged", "mine"}


def test_make_recipe_stamps_kind_summary_and_layer_notes(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    register_rule_kind(RuleKind("mine", "a test kind", lambda r: f"made  from\n{r['n']} things"))
    recipe = make_recipe("mine", {"n": 4, "kind": "forged", "summary": "forged"}, layer_notes={"a": "note a"})
    assert recipe == {"kind": "mine", "n": 4, "summary": "made from 4 things", "layer_notes": {"a": "note a"}}
    assert describe_recipe(recipe) == "made from 4 things" and kind_of(recipe) == "mine"
    with pytest.raises(RequestError, match="not JSON"):
        make_recipe("mine", {"n": torch.zeros(2)})
    register_rule_kind(RuleKind("silent", "says nothing", lambda r: "  "))
    with pytest.raises(RequestError, match="no text"):
        make_recipe("silent", {})


def test_older_recipes_are_recognised_by_their_shape() -> None:
    spatial = {"layer": "3", "rank": 2, "copy": {"seed": 3}, "paste": {"seed": 4}, "context": [{"seed": 8}]}
    text = {"type": "text_rule", "source": ["a cat"], "destination": ["a big cat"], "padding": True}
    assert kind_of(spatial) == "spatial" and kind_of(text) == "text" and kind_of({"seeds": [1]}) is None
    assert "copy from sample seed 3, paste into sample seed 4, context seeds [8]" in describe_recipe(spatial)
    assert "render 'a cat' as 'a big cat'" in describe_recipe(text)
    with pytest.raises(RequestError, match="which rule kind"):
        describe_recipe({"seeds": [1]})


# -- the text rule's closed form on a plain model ------------------------------------------------------------
def test_hard_text_rule_on_a_plain_model_fits_exactly_and_leaves_orthogonal_keys() -> None:
    model, g = _plain_model(), torch.Generator().manual_seed(29)
    K, T = torch.randn(3, IN, generator=g, dtype=torch.float64), torch.randn(3, IN, generator=g, dtype=torch.float64)
    C = _spd(IN, g)
    fit = solve_text_rule(model, ["to_k", "to_v"], K, T, prior=C, hard=True)
    edit = text_rule_edit(model, fit, fields={"source": ["a cat"], "destination": ["a big cat"]})
    Cr = prior_matrix(C, IN)  # the matrix the solve used
    A = torch.linalg.solve(Cr, K.T).T  # [3, IN] rows C^{-1} k_j
    u = torch.randn(5, IN, generator=g, dtype=torch.float64)
    k_perp = u - (torch.linalg.pinv(A) @ (A @ u.T)).T  # K^T C^{-1} k = 0
    w0 = {n: model[n].weight.detach().clone() for n in ("to_k", "to_v")}
    with oe.edited(model, edit), torch.no_grad():
        for n in w0:
            assert float((model[n](K) - T @ w0[n].T).norm() / (T @ w0[n].T).norm()) < 1e-6
            assert float((model[n](k_perp) - k_perp @ w0[n].T).abs().max()) < 1e-6
    assert all(torch.equal(model[n].weight, w) for n, w in w0.items())
    assert edit.manifest["solver"]["method"] == "text_rule_hard" and edit.manifest["solver"]["prior"] == "Tensor"
    assert set(edit.manifest["metrics"]["relative_norms"]) == {"to_k", "to_v"}


def test_soft_text_rule_is_the_stationary_point_of_its_objective() -> None:
    model, g = _plain_model(), torch.Generator().manual_seed(31)
    K, T = torch.randn(4, IN, generator=g, dtype=torch.float64), torch.randn(4, IN, generator=g, dtype=torch.float64)
    C, w = prior_matrix(_spd(IN, g), IN, ridge=0.0), 0.7  # mean eigenvalue 1: the matrix the solve uses
    fit = solve_text_rule(model, ["to_v"], K, T, prior=C, prior_weight=w, ridge=0.0)
    W0 = model["to_v"].weight.detach()
    R = W0 @ (T - K).T  # [4, 4] residuals of the keys
    dW = R @ solve_map(K, C, w, hard=False).T  # the float64 solve, before the float32 factors
    grad = (dW @ K.T - R) @ K + w * dW @ C  # half the gradient of ||dW K^T - R||^2 + w tr(dW C dW^T)
    assert float(grad.norm() / (R @ K).norm()) < 1e-10
    stored = fit.fits["to_v"].delta.dense(torch.float64)
    assert float((stored - dW).norm() / dW.norm()) < 1e-6  # the factored delta is that dW
    with pytest.raises(RequestError, match="prior_weight > 0"):
        solve_map(K, C, 0.0, hard=False)


def test_text_prior_ridge_and_the_shared_cholesky() -> None:
    g = torch.Generator().manual_seed(37)
    C = _spd(IN, g)
    scaled = C / C.diagonal().mean()
    assert torch.allclose(prior_matrix(C, IN) - scaled, TEXT_PRIOR_RIDGE * torch.eye(IN, dtype=torch.float64))
    assert TEXT_PRIOR_RIDGE > DEFAULT_RIDGE  # the corpus prior is the worse-conditioned one (see the comment)
    B = torch.randn(IN, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(C @ solve_spd(C, B, "C", fix="-"), B)
    L = cholesky(C, "C", fix="-")
    assert torch.allclose(L @ L.T, C)
    singular = torch.zeros(IN, IN, dtype=torch.float64)
    with pytest.raises(SingularStatisticError, match=r"the prior C is singular.*larger ridge"):
        solve_map(torch.ones(1, IN, dtype=torch.float64), singular, 0.1, hard=True)


# -- model cards -----------------------------------------------------------------------------------------
def _card(edit: oe.Edit) -> str:
    return build_model_card(edit, "someone/an-edit").content


def test_card_of_a_text_edit_describes_the_text_rule() -> None:
    model, g = _plain_model(), torch.Generator().manual_seed(41)
    K, T = torch.randn(2, IN, generator=g, dtype=torch.float64), torch.randn(2, IN, generator=g, dtype=torch.float64)
    fit = solve_text_rule(model, ["to_k", "to_v"], K, T)
    edit = text_rule_edit(model, fit, fields={"source": ["a rose"], "destination": ["a blue rose"],
                                              "preserve": ["a red car"]}, rule="render 'a rose' as 'a blue rose'")
    card = _card(edit)
    assert "Layer `None`" not in card and "sample seed" not in card
    assert "Rule kind `text`" in card and "render 'a rose' as 'a blue rose'" in card and "'a red car'" in card
    assert "| note |" in card and "keys: where each token is looked for" in card
    rel = edit.manifest["metrics"]["relative_norms"]["to_v"]
    assert f"| {rel:.4f} |" in card  # each layer's own relative change, not "n/a"


def test_card_of_older_edit_files_renders_as_before() -> None:
    model = _plain_model()
    D = torch.eye(IN)[:1].contiguous()
    delta = oe.Delta(torch.zeros(4, 1), D, "linear")
    spatial = {"layer": "3", "rank": 1, "copy": {"seed": 3, "mask": ""}, "paste": {"seed": 4, "mask": ""},
               "context": []}
    old = oe.Edit.create(model, {"to_v": delta}, recipe=spatial)
    assert ("Layer `3`, rank 1: copy from sample seed 3, paste into sample seed 4, context seeds none."
            in _card(old))
    old_text = oe.Edit.create(model, {"to_v": delta}, recipe={"type": "text_rule", "padding": True, "source": ["x"]})
    card = _card(old_text)
    assert "sample seed" not in card and "`text_rule` rule" in card and '"padding": true' in card
    assert "| note |" not in card


# -- the renamed prior weight --------------------------------------------------------------------------------
def test_lam_keyword_is_deprecated_but_still_works() -> None:
    from tiny_diffusers import tiny_unet

    from olam_edit.adapters.diffusers.text import text_edit_from_embeddings

    unet, g = tiny_unet().double(), torch.Generator().manual_seed(43)
    K, T = torch.randn(3, 32, generator=g, dtype=torch.float64), torch.randn(3, 32, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        new = text_edit_from_embeddings(unet, K, T, prior_weight=0.3)
    with pytest.warns(DeprecationWarning, match="prior_weight"):
        old = text_edit_from_embeddings(unet, K, T, lam=0.3)
    assert new.fingerprint == old.fingerprint and old.manifest["solver"]["prior_weight"] == 0.3
    default = text_edit_from_embeddings(unet, K, T)
    assert default.fingerprint != new.fingerprint and default.manifest["recipe"]["prior_weight"] == 0.1
    with pytest.raises(RequestError, match="both prior_weight= and its deprecated name lam="):
        text_edit_from_embeddings(unet, K, T, prior_weight=0.3, lam=0.3)
