"""Concept erasure and replacement (adapters/diffusers/erase.py) on a tiny Stable Diffusion pipeline: the
token alignment, the concepts' values sent to the guides' on every layer, preserve prompts kept, several
concepts in one solve, replacement without containment, strength, the report, bad input, and the card."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_diffusers import tiny_pipeline

import olam_edit as oe
from olam_edit.adapters.diffusers.erase import (
    concept_alignment,
    concept_keys,
    concept_report,
    text_erase,
    text_replace,
)
from olam_edit.adapters.diffusers.text import cross_attention_layers, text_edit
from olam_edit.edit.card import build_model_card
from olam_edit.errors import (
    BaseMismatchError,
    EmptySelectionError,
    RequestError,
    TokenAlignmentError,
    UnsupportedModelError,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PRESERVE = ["a photo of a horse", "a house in a field"]
EXACT = 1e-5  # hard rule: float64 solve, float32 factors on a float64 pipeline
SPECIAL = frozenset({0, 99})  # BOS / EOS of the hand-written token ids below


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, one_thread):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny_sd")).to(torch.float64)


@pytest.fixture(scope="module")
def erased(pipe):
    """Two concepts in one hard solve: 'a red car' towards 'a painting', 'a cat' towards the empty prompt."""
    return text_erase(pipe, ["a red car", "a cat"], guide=["a painting", ""], preserve=PRESERVE, hard=True)


def _emb(pipe, prompt: str) -> torch.Tensor:
    """The embeddings the UNet reads for one prompt ``[T, d]``, straight from the pipeline."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt=[prompt], device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=False)[0][0].double()


def _n_tokens(pipe, prompt: str) -> int:
    return len(pipe.tokenizer(prompt).input_ids)


def _values(pipe, name: str, keys: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return oe.get_handle(pipe.unet, name).module(keys)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- alignment -------------------------------------------------------------------------------------------
def test_alignment_pairs_last_tokens_and_follows_the_tail() -> None:
    # concept BOS c1 c2 c3 EOS, guide BOS g1 g2 EOS, 8 positions: c3 -> g2, then the tail in order
    assert concept_alignment([0, 5, 6, 7, 99], [0, 8, 9, 99], SPECIAL, 8) == [(3, 2), (4, 3), (5, 4), (6, 5), (7, 6)]
    assert concept_alignment([0, 5, 6, 7, 99], [0, 8, 9, 99], SPECIAL, 8, padding=False) == [(3, 2), (4, 3)]
    # tokens="all": c2 -> g1 and c1 clipped to g1 (right alignment)
    assert concept_alignment([0, 5, 6, 7, 99], [0, 8, 9, 99], SPECIAL, 8, padding=False, tokens="all") == [
        (1, 1), (2, 1), (3, 2), (4, 3)]
    # a shorter concept takes the guide's last tokens; the tail is clipped at the context's end
    assert concept_alignment([0, 5, 99], [0, 8, 9, 10, 99], SPECIAL, 5, tokens="all") == [(1, 3), (2, 4), (3, 4),
                                                                                          (4, 4)]
    # the empty guide: its end-of-text position stands in for its last content token
    assert concept_alignment([0, 5, 6, 99], [0, 99], SPECIAL, 5) == [(2, 1), (3, 2), (4, 3)]
    assert concept_alignment([0, 5, 6, 99], [0, 99], SPECIAL, 5, tokens="all") == [(1, 1), (2, 1), (3, 2), (4, 3)]
    with pytest.raises(RequestError, match="tokens="):
        concept_alignment([0, 5, 99], [0, 8, 99], SPECIAL, 5, tokens="first")


def test_concept_keys_come_from_the_prompts_embeddings(pipe) -> None:
    car, painting = _emb(pipe, "a red car"), _emb(pipe, "a painting")
    ck = concept_keys(pipe, ["a red car"], ["a painting"], padding=True)
    assert ck.alignments[0][:2] == [[3, 2], [4, 3]] and len(ck.alignments[0]) == car.shape[0] - 3
    assert torch.allclose(ck.keys, car[3:]) and torch.allclose(ck.targets[:2], painting[[2, 3]])
    every = concept_keys(pipe, ["a red car"], ["a painting"], padding=True, tokens="all")
    assert every.alignments[0][:4] == [[1, 1], [2, 1], [3, 2], [4, 3]]
    assert torch.allclose(every.keys, car[1:])  # every position but BOS
    assert torch.allclose(every.targets[:4], painting[[1, 1, 2, 3]])


def test_earlier_tokens_are_prefixes_shared_with_other_prompts(pipe) -> None:
    """Why the last token is the default: the 'a' of 'a cat' is the 'a' of 'a photo of a horse'."""
    assert torch.equal(_emb(pipe, "a cat")[1], _emb(pipe, "a photo of a horse")[1])
    last = text_erase(pipe, "a cat", preserve=PRESERVE, hard=True)
    every = text_erase(pipe, "a cat", preserve=PRESERVE, hard=True, tokens="all")
    assert last.manifest["metrics"]["concepts"][0]["residual_after"] < EXACT
    assert every.manifest["metrics"]["concepts"][0]["residual_after"] > 0.01  # the shared key cannot do both


# -- erasure ---------------------------------------------------------------------------------------------
def test_erasure_sends_every_concept_to_its_guide_on_every_layer(pipe, erased) -> None:
    names = cross_attention_layers(pipe.unet)
    assert set(erased.deltas) == set(names) and erased.manifest["component"] == "unet"
    assert _n_tokens(pipe, "a red car") == 5 and _n_tokens(pipe, "a painting") == 4 and _n_tokens(pipe, "a cat") == 4
    # hard, no padding: last content token and end-of-text; "" has no content token -> its EOS (1) stands in
    rules = [(_emb(pipe, "a red car")[[3, 4]], _emb(pipe, "a painting")[[2, 3]]),
             (_emb(pipe, "a cat")[[2, 3]], _emb(pipe, "")[[1, 2]])]
    kept = [_emb(pipe, p)[: _n_tokens(pipe, p)] for p in PRESERVE]
    before = {n: ([_values(pipe, n, K) for K, _ in rules], [_values(pipe, n, P) for P in kept]) for n in names}
    want = {n: [_values(pipe, n, T) for _, T in rules] for n in names}
    with oe.edited(pipe, erased):
        for n in names:
            for i, (K, _) in enumerate(rules):
                assert _rel(before[n][0][i], want[n][i]) > 0.05, n  # it had somewhere to go
                assert _rel(_values(pipe, n, K), want[n][i]) < EXACT, (n, i)
            for j, P in enumerate(kept):
                assert _rel(_values(pipe, n, P), before[n][1][j]) < EXACT, (n, PRESERVE[j])


def test_the_report_in_the_manifest_measures_the_edit(pipe, erased) -> None:
    metrics = erased.manifest["metrics"]
    assert [c["concept"] for c in metrics["concepts"]] == ["a red car", "a cat"]
    assert [c["guide"] for c in metrics["concepts"]] == ["a painting", ""]
    assert [c["keys"] for c in metrics["concepts"]] == [2, 2]
    assert all(c["residual_after"] < EXACT < 0.05 < c["residual_before"] for c in metrics["concepts"])
    assert [p["prompt"] for p in metrics["preserve_change"]] == PRESERVE
    assert all(p["change"] < EXACT for p in metrics["preserve_change"])
    again = concept_report(pipe, erased)  # rebuilt from the recipe alone
    for ours, theirs in zip(again.concepts, metrics["concepts"], strict=True):
        assert ours["residual_before"] == pytest.approx(theirs["residual_before"], rel=1e-9)
    assert "'a red car'" in str(again) and "preserve 'a house in a field'" in str(again)


def test_soft_erasure_with_the_corpus_prior_moves_most_of_the_way(pipe) -> None:
    edit = text_erase(pipe, ["a red car", "a cat"], guide="a painting", preserve=PRESERVE)
    recipe, metrics = edit.manifest["recipe"], edit.manifest["metrics"]
    assert recipe["padding"] is True and recipe["prior"] == "corpus" and edit.manifest["stats_fingerprint"]
    # d = 32 cannot hold 17 + 18 keys and the preserve keys exactly; measured: see the report
    assert [c["keys"] for c in metrics["concepts"]] == [17, 18]
    for c in metrics["concepts"]:
        assert c["residual_after"] < 0.5 * c["residual_before"], c
    assert all(p["change"] < 0.1 for p in metrics["preserve_change"])
    # the report is the largest relative residual over the layers, recomputed here from the prompts
    K, T = _emb(pipe, "a cat")[2:], _emb(pipe, "a painting")[2:]
    want = {n: _values(pipe, n, T) for n in edit.deltas}  # the guide's values under the base weights
    with oe.edited(pipe, edit):
        after = max(_rel(_values(pipe, n, K), want[n]) for n in edit.deltas)
    assert metrics["concepts"][1]["residual_after"] == pytest.approx(after, rel=1e-4)


def test_replace_needs_no_containment(pipe) -> None:
    with pytest.raises(TokenAlignmentError):
        text_edit(pipe, "a rose", "a dog", prior="identity")  # text_edit needs the source inside the destination
    edit = text_replace(pipe, "a rose", "a dog", hard=True)
    assert edit.manifest["rule"] == "replace 'a rose' with 'a dog'"
    K, T = _emb(pipe, "a rose")[[2, 3]], _emb(pipe, "a dog")[[2, 3]]
    want = {n: _values(pipe, n, T) for n in edit.deltas}
    with oe.edited(pipe, edit):
        assert all(_rel(_values(pipe, n, K), want[n]) < EXACT for n in edit.deltas)


def test_scale_is_the_strength_of_the_edit(pipe, erased) -> None:
    half = text_erase(pipe, ["a red car", "a cat"], guide=["a painting", ""], preserve=PRESERVE, hard=True,
                      scale=0.5)
    for name, delta in half.deltas.items():
        assert torch.allclose(delta.dense(torch.float64), 0.5 * erased.deltas[name].dense(torch.float64))
    assert half.manifest["recipe"]["scale"] == 0.5 and "(strength 0.5)" in half.manifest["rule"]
    # an exact fit scaled by s leaves (1 - s) of the residual
    for c in half.manifest["metrics"]["concepts"]:
        assert c["residual_after"] == pytest.approx(0.5 * c["residual_before"], rel=1e-4)
    report = concept_report(pipe, erased.scaled(0.5))
    assert [c["residual_after"] for c in report.concepts] == pytest.approx(
        [c["residual_after"] for c in half.manifest["metrics"]["concepts"]], rel=1e-6)


def test_a_later_edit_keeps_an_earlier_erasure(pipe, erased) -> None:
    erased.apply(pipe)
    try:
        later = text_replace(pipe, "a rose", "a dog", hard=True, preserve_edits=[erased])
        assert erased.fingerprint in later.manifest["solver"]["protected_edits"]
        K = concept_keys(pipe, ["a red car", "a cat"], ["a painting", ""], padding=False).keys
        for name, delta in later.deltas.items():
            dW = delta.dense(torch.float64)
            assert float((K @ dW.T).norm() / _values(pipe, name, K).norm()) < EXACT, name
    finally:
        erased.revert(pipe)


def test_the_edit_saves_and_exports_like_any_text_edit(pipe, erased, tmp_path) -> None:
    erased.save(tmp_path / "no-red-cars")
    loaded = oe.Edit.from_pretrained(str(tmp_path / "no-red-cars"))
    assert loaded.manifest["recipe"]["concepts"] == ["a red car", "a cat"]
    assert loaded.manifest["metrics"]["concepts"] == erased.manifest["metrics"]["concepts"]
    inputs = (torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.tensor([10]), _emb(pipe, "a red car")[None])
    with torch.no_grad(), oe.edited(pipe, loaded):
        ours = pipe.unet(*inputs).sample
    erased.to_lora(tmp_path / "lora", format="diffusers")
    stock = copy.deepcopy(pipe)
    stock.load_lora_weights(tmp_path / "lora")
    with torch.no_grad():
        theirs, base = stock.unet(*inputs).sample, pipe.unet(*inputs).sample
    assert float((ours - base).abs().max()) > 1e-4 and float((theirs - ours).abs().max()) < 1e-5


# -- bad input -------------------------------------------------------------------------------------------
def _unchanged(pipe, state: dict) -> bool:
    return all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in state.items())


def test_bad_concepts_guides_and_preserve_lists(pipe) -> None:
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for empty in ("", "   "):
        with pytest.raises(EmptySelectionError, match="tokenises to nothing") as e:
            text_erase(pipe, ["a cat", empty], preserve=PRESERVE)
        assert e.value.fix
    with pytest.raises(TokenAlignmentError, match="longer than the text encoder reads") as e:
        text_erase(pipe, " ".join(["a red car"] * 10), preserve=PRESERVE)
    assert "at most 20" in str(e.value)
    with pytest.raises(RequestError, match="the concept itself") as e:
        text_erase(pipe, "a cat", guide="A cat ", preserve=PRESERVE)  # the same tokens
    assert e.value.got and e.value.expected and e.value.fix
    with pytest.raises(RequestError, match="needs preserve prompts") as e:
        text_erase(pipe, "a cat", guide="a dog")
    assert "preserve=[" in e.value.fix
    with pytest.raises(RequestError, match="prior='identity'"):
        text_replace(pipe, "a rose", "a dog", prior="identity")
    with pytest.raises(RequestError, match="is a concept being changed"):
        text_erase(pipe, "a cat", guide="a dog", preserve=["a cat", *PRESERVE])
    with pytest.raises(RequestError, match="one guide"):
        text_erase(pipe, ["a cat", "a dog", "a rose"], guide=["a painting", "a house"], preserve=PRESERVE)
    with pytest.raises(RequestError, match="non-empty list"):
        text_replace(pipe, [], "a dog")
    assert _unchanged(pipe, state)


def test_an_edit_for_another_pipeline_is_refused(pipe, erased, tmp_path) -> None:
    other = tiny_pipeline(tmp_path, seed=1).to(torch.float64)
    state = {k: v.clone() for k, v in other.unet.state_dict().items()}
    with pytest.raises(BaseMismatchError, match="fingerprint"):
        erased.apply(other)
    with pytest.raises(BaseMismatchError):
        text_replace(other, "a rose", "a dog", preserve_edits=[erased])
    assert _unchanged(other, state)


def test_a_pipeline_without_a_unet() -> None:
    class TransformerPipeline:
        def __init__(self) -> None:
            self.transformer = torch.nn.Linear(4, 4)
            self.components = {"transformer": self.transformer}

    with pytest.raises(UnsupportedModelError, match="transformer"):
        text_erase(TransformerPipeline(), "a cat", preserve=PRESERVE)


# -- the model card --------------------------------------------------------------------------------------
SPATIAL_TEMPLATE = ("copy from sample seed", "painted masks", "key embeddings to their target embeddings")


def test_the_card_of_an_erasure_describes_the_rule(pipe, erased) -> None:
    card = build_model_card(erased, "test-user/no-red-cars").content
    how = card[card.index("## How it was made"):]
    assert "**The rule:** erase 'a red car' (guide 'a painting'); erase 'a cat' (guide: the empty prompt)." in card
    assert "Rule kind `text`" in how and "14 cross-attention key / value projections (7 `to_k`, 7 `to_v`)" in how
    assert "erase 'a red car' towards the guide 'a painting'; erase 'a cat' towards the guide the empty prompt" in how
    assert "Each concept's last token and its end-of-text position (the positions that attend to it)" in how
    assert "Preserved prompts: 'a photo of a horse', 'a house in a field'." in how
    assert "Exact fit" in how and "prior C: the second moment of token embeddings over the shipped prompt corpus" in how
    assert "pipe.load_lora_weights" in card and "text-rule" in card
    assert not any(t in card for t in SPATIAL_TEMPLATE)
    half = build_model_card(erased.scaled(0.5), "test-user/half").content
    assert "applied at strength 0.5" in half


def test_the_card_of_a_replacement_and_of_a_text_edit(pipe) -> None:
    edit = text_replace(pipe, ["a rose", "a cat"], ["a dog", "a house"], preserve=["a green tree"], scale=0.8,
                        prior="identity")
    how = build_model_card(edit, "test-user/rose-to-dog").content.split("## How it was made")[1]
    assert "replace 'a rose' with 'a dog'; replace 'a cat' with 'a house'" in how
    assert "aligned tokens of the destination" in how and "end-of-text and padding positions after it" in how
    assert "Applied at strength 0.8" in how and "prior C: the identity (TIME / UCE)" in how
    assert "Preserved prompts: 'a green tree'." in how and not any(t in how for t in SPATIAL_TEMPLATE)
    plain = text_edit(pipe, "a rose", "a blue rose", preserve=["a red car"], prior="identity")
    how = build_model_card(plain, "test-user/blue-rose").content.split("## How it was made")[1]
    assert "cross-attention key / value projections" in how and "render 'a rose' as 'a blue rose'" in how
    assert "Preserved prompts: 'a red car'." in how and "the identity (TIME / UCE)" in how
    assert not any(t in how for t in SPATIAL_TEMPLATE)


# -- the README's example, run as it is --------------------------------------------------------------------
def test_the_readme_erase_example_runs_on_the_tiny_pipeline(pipe) -> None:
    from readme_code import python_block_after

    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    ns: dict = {"__name__": "readme_erase", "pipe": pipe}
    exec(compile(python_block_after("<!-- erase-example -->"), "README.md", "exec"), ns)
    no_pets, snoopy = ns["no_pets"], ns["snoopy"]
    assert [c["concept"] for c in no_pets.manifest["metrics"]["concepts"]] == ["a cat", "a dog"]
    assert all(c["residual_after"] < c["residual_before"] for c in no_pets.manifest["metrics"]["concepts"])
    assert snoopy.manifest["recipe"]["mode"] == "replace" and snoopy.manifest["recipe"]["scale"] == 0.8
    assert ns["image"] is not None and _unchanged(pipe, state)  # edited() reverted the erasure


def test_recipes_read_back_from_files_are_checked_before_use(tmp_path) -> None:
    """An earlier edit's recipe is untrusted: prompts, guides and flags of the wrong type are refused."""
    from olam_edit.adapters.diffusers.text import recipe_flag, recipe_prompts

    assert recipe_prompts({"source": ["a cat"]}, "source") == ["a cat"]
    for bad in ({"source": "a cat"}, {"source": []}, {"source": [1]}, {"source": ["x" * 5000]}, {}):
        with pytest.raises(RequestError):
            recipe_prompts(bad, "source")
    assert recipe_flag({}, "padding", True) is True and recipe_flag({"padding": False}, "padding", True) is False
    with pytest.raises(RequestError):
        recipe_flag({"padding": "false"}, "padding", True)
