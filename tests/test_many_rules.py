"""Several spatial rules in one solve, edits that keep earlier edits, and Edit.merge (issue 14).

A tiny seeded DCGAN in float64: the joint solve is checked against a direct minimisation of the
stacked objective written out here, protection against the values themselves, merge against the
parts applied one after another and against stock PEFT / diffusers loaders of its LoRA.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_diffusers import tiny_pipeline
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit.adapters import TorchGenerator
from olam_edit.edit.apply import SolvedOnOtherEditsWarning
from olam_edit.edit.card import build_model_card
from olam_edit.edit.core import Edit
from olam_edit.errors import BaseMismatchError, RequestError
from olam_edit.memory.delta import Delta
from olam_edit.memory.protect import keys_feeding
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

LAYER = "3"  # ConvTranspose2d 64 -> 32, keys on a 4x4 grid, values on 8x8


def _gen(seed: int = 0) -> TorchGenerator:
    return TorchGenerator(tiny_dcgan(ngf=16, seed=seed, dtype=torch.float64), (8, 1, 1), name=f"tiny{seed}")


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16))
    m[y0:y1, x0:x1] = 1
    return m


def _req(copy_seed: int, paste_seed: int, box: tuple[int, int, int, int], rank: int = 1, layer: str = LAYER,
         name: str = "") -> EditRequest:
    return EditRequest(layer=layer, rank=rank, copy=Selection(copy_seed, _mask(*box)),
                       paste=Selection(paste_seed, _mask(*box)), name=name,
                       context=[Selection(paste_seed, _mask(*box)), Selection(copy_seed + 40, _mask(*box))])


A = _req(3, 5, (0, 6, 0, 6), name="a")  # top-left
B = _req(7, 9, (10, 16, 8, 16), rank=2, name="b")  # bottom-right, on another paste sample


def _rewriter(gen: TorchGenerator, **kw) -> Rewriter:
    return Rewriter(gen, LAYER, smoothness=0.4, progress=False, stats_samples=60, **kw)


def _expected_penalty(dW: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """E_k ||dW k||^2 = sum over taps and outputs of w^T C w, for a conv-transpose weight [in, out, kh, kw]."""
    W = dW.flatten(1)  # [in, out*taps]
    return torch.einsum("ia,ij,ja->", W, C, W)


def test_joint_solve_equals_a_direct_minimisation_of_the_stacked_objective() -> None:
    gen = _gen()
    rw = _rewriter(gen)
    edit = rw.rewrite([A, B])
    delta = edit.deltas[LAYER]
    D, lam = delta.directions.double(), delta.lam.double()
    assert delta.rank == 3 and torch.allclose(D @ D.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    for req in (A, B):  # D spans each rule's own directions
        Di = rw.directions(req)
        assert float((Di - Di @ D.T @ D).norm()) < 1e-10
    h, C, smooth = rw.handle, rw.C, 0.4
    w0 = h.effective_weight().detach().double()
    rules = [rw.rule_tensors(r) for r in (A, B)]  # each paste sample captured on its own
    totals = [float(r.fit_mask.sum()) for r in rules]
    weights = [sum(totals) / len(totals) / t for t in totals]

    def f(z: torch.Tensor) -> torch.Tensor:
        dW = h.dense(z.reshape(lam.shape), D)
        fit = sum(a * ((h.linear_op(r.x_paste, w0 + dW) - r.v_star).square().sum(1) * r.fit_mask).sum()
                  for a, r in zip(weights, rules, strict=True))
        return fit + smooth * sum(totals) / len(totals) * _expected_penalty(dW, C)  # the penalty counted once

    z0 = torch.zeros(lam.numel(), dtype=torch.float64)
    g, H = torch.autograd.functional.jacobian(f, z0), torch.autograd.functional.hessian(f, z0)
    lam_direct = torch.linalg.solve(H, -g).reshape(lam.shape)  # the exact minimiser of a quadratic
    assert float((lam - lam_direct).norm() / lam_direct.norm()) < 1e-9
    assert edit.manifest["solver"]["rules"] == 2 and edit.manifest["solver"]["ranks"] == [1, 2]
    assert [r["name"] for r in edit.manifest["recipe"]["rules"]] == ["a", "b"]
    assert "2 spatial rules" in edit.manifest["recipe"]["summary"]


def test_one_rule_in_a_list_is_the_single_rule_solve_and_coinciding_spans_lower_the_rank() -> None:
    rw = _rewriter(_gen())
    one, listed = rw.rewrite(A), rw.rewrite([A])
    assert torch.equal(one.deltas[LAYER].lam, listed.deltas[LAYER].lam)
    assert one.manifest["recipe"] == listed.manifest["recipe"]
    twice = rw.rewrite([A, A])  # the same rule twice: one direction; its fit counts twice against one penalty
    half = rw.rewrite(A, smoothness=0.2)  # which is the rule alone at half the smoothness
    assert twice.deltas[LAYER].rank == 1 and twice.manifest["solver"]["ranks"] == [1, 1]
    ref = half.deltas[LAYER].dense(torch.float64)
    assert float((twice.deltas[LAYER].dense(torch.float64) - ref).abs().max()) < 1e-9 * float(ref.abs().max())


def _fit_values(gen: TorchGenerator, rw: Rewriter, req: EditRequest) -> torch.Tensor:
    rule = rw.rule_tensors(req)
    _, v = gen.keys_and_values(LAYER, gen.latents([req.paste.seed]))
    return v.double()[..., rule.fit_mask[0].bool()]  # [1, out, n_fit]


def test_a_kept_edit_keeps_every_fitted_value() -> None:
    gen = _gen()
    first = _rewriter(gen).rewrite(A)
    first.apply(gen.model)
    rw = _rewriter(gen, keep=[first])
    v_first = _fit_values(gen, rw, A)
    second = rw.rewrite(B)
    kept = keys_feeding(rw.handle, rw.rule_tensors(A).x_paste, rw.rule_tensors(A).fit_mask)
    assert float((second.deltas[LAYER].directions.double() @ kept.T).abs().max()) < 1e-12 * float(kept.abs().max())
    with oe.edited(gen.model, second):
        v_both = _fit_values(gen, rw, A)
        _, v_b = gen.keys_and_values(LAYER, gen.latents([B.paste.seed]))
    assert float((v_both - v_first).norm() / v_first.norm()) < 1e-8
    unprotected = _rewriter(gen).rewrite(B)  # the control: without keep= the first rule's values move
    with oe.edited(gen.model, unprotected):
        moved = float((_fit_values(gen, rw, A) - v_first).norm() / v_first.norm())
    assert moved > 1e-3
    assert second.manifest["solver"]["kept_edits"] == [first.fingerprint]
    assert second.manifest["solver"]["protected_keys"] == kept.shape[0]
    _, v_base_b = gen.keys_and_values(LAYER, gen.latents([B.paste.seed]))
    assert float((v_b - v_base_b).norm()) > 1e-3  # the new rule still does something
    first.revert(gen.model)
    with pytest.warns(SolvedOnOtherEditsWarning, match=first.fingerprint[:12]):
        second.apply(gen.model)  # it records the same base and applies alone, saying what it was solved on
    second.revert(gen.model)


def test_protected_seeds_render_exactly_as_before() -> None:
    gen = _gen()
    seeds = [20, 21]
    edit = _rewriter(gen, protect=seeds).rewrite(A)
    with torch.no_grad():
        before = gen.model(gen.latents(seeds))
        other_before = gen.model(gen.latents([A.paste.seed]))
    with torch.no_grad(), oe.edited(gen.model, edit):
        after = gen.model(gen.latents(seeds))
        other_after = gen.model(gen.latents([A.paste.seed]))
    assert float((after - before).abs().max()) < 1e-8 * float(before.abs().max())
    assert float((other_after - other_before).abs().max()) > 1e-3
    assert edit.manifest["solver"]["protected_keys"] == 2 * 16


def test_bad_joint_and_keep_requests_are_refused_before_anything_changes() -> None:
    gen = _gen()
    rw = _rewriter(gen)
    with pytest.raises(RequestError, match="one layer") as e:
        rw.rewrite([A, _req(3, 5, (0, 6, 0, 6), layer="6", name="elsewhere")])
    assert "elsewhere (6)" in str(e.value) and "One edit per layer" in str(e.value)
    with pytest.raises(RequestError):
        rw.rewrite([])
    foreign_request = EditRequest.from_json({**B.to_json(), "model": "someone/other-model"})
    with pytest.raises(RequestError, match="another model"):
        rw.rewrite([A, foreign_request])
    edit = rw.rewrite(A)
    with pytest.raises(BaseMismatchError, match="not applied"):
        _rewriter(gen, keep=[edit]).rewrite(B)
    foreign = _rewriter(_gen(seed=1)).rewrite(A)  # made for another base weight
    foreign.apply(gen.model, force=True)
    with pytest.raises(BaseMismatchError):
        _rewriter(gen, keep=[foreign]).rewrite(B)
    foreign.revert(gen.model)
    with pytest.raises(RequestError, match="span every direction"):
        _rewriter(gen, protect=[20, 21, 22, 23, 24]).rewrite(A)  # 80 keys in a 64-dim key space
    with pytest.raises(RequestError, match="protect="):
        _rewriter(gen, protect="seeds").rewrite(A)


# -- merge ------------------------------------------------------------------------------------------
def test_merge_equals_applying_the_parts_one_after_another() -> None:
    gen = _gen()
    rw = _rewriter(gen)
    ea, eb = rw.rewrite(A), rw.rewrite(B)
    merged = Edit.merge([ea, eb], scales=[1.0, -0.5])
    assert merged.deltas[LAYER].rank == 3
    h = rw.handle
    with oe.edited(gen.model, merged):
        w_merged = h.parameter.detach().clone()
    with oe.edited(gen.model, ea), oe.edited(gen.model, eb.scaled(-0.5)):
        w_parts = h.parameter.detach().clone()
    w0 = h.parameter.detach()
    # float64 addition is not associative: the sum re-factored on one basis rounds differently
    assert float((w_merged - w_parts).abs().max()) < 1e-13 * float(w0.abs().max())
    assert float((w_merged - w0).abs().max()) > 1e-3
    parts = merged.manifest["recipe"]["parts"]
    assert [p["fingerprint"] for p in parts] == [ea.fingerprint, eb.fingerprint]
    assert [p["scale"] for p in parts] == [1.0, -0.5] and merged.manifest["recipe"]["kind"] == "merged"


def test_a_merged_edit_saves_loads_and_keeps_its_parts(tmp_path) -> None:
    gen = _gen()
    rw = _rewriter(gen)
    merged = Edit.merge([rw.rewrite(A), rw.rewrite(B)])
    loaded = Edit.load(merged.save(tmp_path / "m"))
    assert loaded.manifest["recipe"]["parts"] == merged.manifest["recipe"]["parts"]
    with oe.edited(gen.model, loaded):
        w_loaded = rw.handle.parameter.detach().clone()
    with oe.edited(gen.model, merged):
        w_mem = rw.handle.parameter.detach().clone()
    assert float((w_loaded - w_mem).abs().max()) < 1e-6  # the file holds float32 factors
    card = str(build_model_card(loaded, "someone/merged"))
    assert "A merge of 2 edits" in card


def test_merge_refuses_mismatched_parts() -> None:
    gen = _gen()
    ea = _rewriter(gen).rewrite(A)
    with pytest.raises(RequestError, match="one scale per edit"):
        Edit.merge([ea, ea], scales=[1.0])
    with pytest.raises(RequestError):
        Edit.merge([])
    with pytest.raises(RequestError, match="finite"):
        Edit.merge([ea], scales=[float("nan")])
    other = _rewriter(_gen(seed=1)).rewrite(A)
    with pytest.raises(BaseMismatchError, match="base model") as e:
        Edit.merge([ea, other])
    assert "got tiny1" in str(e.value) and "expected tiny0" in str(e.value)
    same_name = Edit(other.deltas, {**other.manifest, "base_model": ea.manifest["base_model"]})
    with pytest.raises(BaseMismatchError, match="another base weight"):
        Edit.merge([ea, same_name])


def test_merge_exports_one_lora_that_stock_loaders_apply_like_our_merge(tmp_path) -> None:
    pipe = tiny_pipeline(tmp_path / "pipe")
    unet = pipe.unet
    to_k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    g = torch.Generator().manual_seed(11)

    def part(r: int) -> Edit:
        D = torch.linalg.qr(torch.randn(32, r, generator=g, dtype=torch.float64))[0].T.float().contiguous()
        return Edit.create(unet, {to_k: Delta(0.3 * torch.randn(16, r, generator=g), D, "linear")},
                           base_model="tiny/unet", component="unet")

    merged = Edit.merge([part(1), part(2)], scales=[1.0, 0.5])
    inputs = (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 7, 32, generator=g))
    with torch.no_grad(), oe.edited(unet, merged):
        ours = unet(*inputs).sample
    merged.to_lora(tmp_path / "lora", format="diffusers")
    stock = copy.deepcopy(pipe)
    stock.load_lora_weights(tmp_path / "lora")
    with torch.no_grad():
        theirs = stock.unet(*inputs).sample
        base = unet(*inputs).sample
    assert float((ours - base).abs().max()) > 1e-3
    assert float((theirs - ours).abs().max()) < 1e-5


# -- the README's example, run as it is --------------------------------------------------------------
def test_the_readme_many_rules_example_does_what_it_says(tmp_path, monkeypatch) -> None:
    from readme_code import python_block_after

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OLAM_EDIT_CACHE", str(tmp_path / "cache"))
    ns: dict = {"__name__": "readme_many_rules"}
    exec(compile(python_block_after("<!-- many-rules-example -->"), "README.md", "exec"), ns)
    gen, first, second, rewriter = ns["gen"], ns["first"], ns["second"], ns["rewriter"]
    assert ns["both"].deltas["main.6"].rank == 2 and ns["merged"].deltas["main.6"].rank == 2
    assert (tmp_path / "glasses-and-half-a-mouth" / "edit.safetensors").is_file()
    h = rewriter.handle
    with torch.no_grad():
        rule = rewriter.rule_tensors(ns["glasses"])
        kept = keys_feeding(h, rule.x_paste, rule.fit_mask).float()
        assert float((second.deltas["main.6"].directions @ kept.T).abs().max()) < 1e-5 * float(kept.abs().max())
        second.revert(gen.model)
        first.revert(gen.model)
        before = gen.model(gen.latents([10, 11]))
        paste_before = gen.model(gen.latents([1]))
        with oe.edited(gen.model, ns["quiet"]):
            after = gen.model(gen.latents([10, 11]))
            paste_after = gen.model(gen.latents([1]))
    assert float((after - before).abs().max()) < 1e-4  # float32 model: exact up to float32 round-off
    assert float((paste_after - paste_before).abs().max()) > 0.1  # the rule still paints its paste sample


def test_kept_recipes_from_files_are_bounded_and_checked() -> None:
    """requests_of reads recipes of edit files: deep nesting, malformed parts and too many rules are refused."""
    from olam_edit.rules.spatial.joint import MAX_JOINT_RULES, requests_of

    one = {**A.to_json(), "method": "rewrite"}
    merged = {"kind": "merged", "parts": [{"recipe": one}, {"recipe": one}]}
    assert [r.name for r, _ in requests_of(merged)] == ["a", "a"]
    nested: dict = {"kind": "merged", "parts": [{"recipe": one}]}
    for _ in range(6):
        nested = {"kind": "merged", "parts": [{"recipe": nested}]}
    for bad in (nested, {"kind": "merged", "parts": [one, "x"]}, {"kind": "merged", "parts": "x"},
                {"rules": [one] * (MAX_JOINT_RULES + 1)}, {"kind": "text", "source": ["a"]}, None):
        with pytest.raises(RequestError):
            requests_of(bad)
