"""Text rules on a tiny Stable Diffusion pipeline's cross-attention: exact / optimal fits, untouched
keys, SDXL layout from embeddings, applying an edit folder to a pipeline, and clear errors."""

from __future__ import annotations

import pytest
import torch
from tiny_diffusers import tiny_pipeline, tiny_sdxl_pipeline, tiny_unet

import olam_edit as oe
from olam_edit.adapters.diffusers.text import (
    corpus_prompts,
    cross_attention_layers,
    prompt_moment,
    rule_keys,
    text_edit,
    text_edit_from_embeddings,
)
from olam_edit.errors import (
    BaseMismatchError,
    EditStateError,
    LayerNotFoundError,
    ShapeMismatchError,
    TokenAlignmentError,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from olam_edit.rules.text.solve import prior_matrix, shared_directions, solve_map

D = 32  # the tiny text encoder's width = the UNet's cross_attention_dim


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, one_thread):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny_sd")).to(torch.float64)


@pytest.fixture(scope="module")
def moment(pipe):
    return prompt_moment(pipe)


def _weights(unet, names):
    return {n: oe.get_handle(unet, n).parameter.detach().clone().double() for n in names}


def _perp(K: torch.Tensor, C: torch.Tensor, n: int = 6) -> torch.Tensor:
    """Random keys k with K^T C^{-1} k = 0 (orthogonal to every rule key in the prior's metric)."""
    A = torch.linalg.solve(C, K.T).T  # [n_keys, d] rows C^{-1} k_j
    u = torch.randn(n, K.shape[1], dtype=torch.float64)
    return u - (torch.linalg.pinv(A) @ (A @ u.T)).T


def test_cross_attention_layers_of_sd_and_sdxl_layouts(pipe) -> None:
    sd = cross_attention_layers(pipe.unet)
    xl = cross_attention_layers(tiny_unet(sdxl=True))
    assert len(sd) == 14 and len(xl) == 16  # SDXL: no attention in the first block, 2 layers in the others
    assert all(".attn2.to_" in n for n in sd + xl)
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v" in xl
    assert len(corpus_prompts()) >= 100


def test_hard_rule_maps_the_source_keys_to_their_targets_exactly(pipe, moment) -> None:
    names = cross_attention_layers(pipe.unet)
    w0 = _weights(pipe.unet, names)
    edit = text_edit(pipe, "a rose", "a blue rose", prior=moment, hard=True)
    rk = rule_keys(pipe, ["a rose"], ["a blue rose"], padding=False)
    assert rk.alignments[0][:5] == [0, 1, 3, 4, 5]  # BOS, a, rose, EOS skip 'blue'
    assert set(edit.deltas) == set(names) and edit.manifest["component"] == "unet"
    assert all(d.rank <= rk.keys.shape[0] for d in edit.deltas.values())
    with oe.edited(pipe, edit), torch.no_grad():
        for name in names:
            got = oe.get_handle(pipe.unet, name).module(rk.keys)
            want = rk.targets @ w0[name].T
            assert float((got - want).norm() / want.norm()) < 1e-5, name
    assert edit.manifest["metrics"]["residual_after"] < 1e-9  # float64 solve, before float32 storage


def test_soft_rule_is_the_closed_form_optimum(pipe, moment) -> None:
    src, dst, lam = ["a rose", "a cat"], ["a blue rose", "a big cat"], 0.5
    edit = text_edit(pipe, src, dst, prior=moment, prior_weight=lam)
    rk = rule_keys(pipe, src, dst, padding=True)
    K, T, C = rk.keys, rk.targets, prior_matrix(moment, D)
    for name in cross_attention_layers(pipe.unet)[:4]:
        W0 = oe.get_handle(pipe.unet, name).parameter.detach().double()
        dW, R = edit.deltas[name].dense(torch.float64), W0 @ (T - K).T

        def f(dw: torch.Tensor, R=R) -> float:
            return float((dw @ K.T - R).square().sum() + lam * torch.einsum("oi,ij,oj->", dw, C, dw))

        grad = (dW @ K.T - R) @ K + lam * dW @ C  # half the gradient of f; zero at the optimum
        assert float(grad.norm() / (R @ K).norm()) < 1e-5
        assert all(f(dW + 1e-4 * torch.randn_like(dW)) > f(dW) for _ in range(4))
        assert float((dW @ K.T - R).norm()) < float(R.norm())
        assert edit.deltas[name].rank <= K.shape[0]


def test_identity_prior_is_time_closed_form(pipe) -> None:
    """With C = I the update equals TIME's W1 = (lam W0 + V* K^T)(lam I + K K^T)^{-1}."""
    edit = text_edit(pipe, "a dog", "a red dog", prior="identity", prior_weight=0.1)
    rk = rule_keys(pipe, ["a dog"], ["a red dog"], padding=True)
    K, T = rk.keys, rk.targets
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"
    W0 = oe.get_handle(pipe.unet, name).parameter.detach().double()
    time_w1 = (0.1 * W0 + (T @ W0.T).T @ K) @ torch.linalg.inv(0.1 * torch.eye(D, dtype=torch.float64) + K.T @ K)
    w1 = W0 + edit.deltas[name].dense(torch.float64)
    assert float((w1 - time_w1).norm() / W0.norm()) < 1e-5


def test_keys_orthogonal_in_the_prior_metric_are_unchanged(pipe, moment) -> None:
    rk = rule_keys(pipe, ["a rose"], ["a blue rose"], padding=False)
    C = prior_matrix(moment, D)
    k_perp = _perp(rk.keys, C)
    for hard in (True, False):
        X = solve_map(rk.keys, C, 0.1, hard)  # dW = R X^T for every layer
        assert float((k_perp @ X).abs().max()) < 1e-10 * float(X.abs().max() * k_perp.abs().max())
        assert float((shared_directions(X) @ k_perp.T).abs().max()) < 1e-9
        edit = text_edit(pipe, "a rose", "a blue rose", prior=moment, hard=hard, padding=False)
        for name in cross_attention_layers(pipe.unet)[:4]:
            m = oe.get_handle(pipe.unet, name).module
            with torch.no_grad():
                before, before_k = m(k_perp), m(rk.keys)
                with oe.edited(pipe, edit):
                    after, after_k = m(k_perp), m(rk.keys)
            moved = float((after_k - before_k).norm())  # the rule's own keys move...
            assert moved > 1e-3
            assert float((after - before).norm()) < 1e-5 * moved  # ...the orthogonal ones do not


def test_sdxl_pipeline_hard_rule(tmp_path) -> None:
    """SDXL: keys are the two encoders' concatenated embeddings (64-d here); the fit is exact."""
    xl = tiny_sdxl_pipeline(tmp_path).to(torch.float64)
    names = cross_attention_layers(xl.unet)
    w0 = _weights(xl.unet, names)
    edit = text_edit(xl, "a cat", "a small cat", prior="identity", hard=True)
    rk = rule_keys(xl, ["a cat"], ["a small cat"], padding=False)
    assert rk.keys.shape[1] == 64 and set(edit.deltas) == set(names)
    with oe.edited(xl, edit), torch.no_grad():
        for name in names:
            got, want = oe.get_handle(xl.unet, name).module(rk.keys), rk.targets @ w0[name].T
            assert float((got - want).norm() / want.norm()) < 1e-5, name


def test_sdxl_layout_from_unet_and_embeddings() -> None:
    unet = tiny_unet(sdxl=True).double()
    names = cross_attention_layers(unet)[:5]
    g = torch.Generator().manual_seed(3)
    K = torch.randn(6, 64, generator=g, dtype=torch.float64)
    T = K + 0.5 * torch.randn(6, 64, generator=g, dtype=torch.float64)
    w0 = _weights(unet, names)
    edit = text_edit_from_embeddings(unet, K, T, hard=True, layers=names)
    assert set(edit.deltas) == set(names) and all(d.rank == 6 for d in edit.deltas.values())
    with oe.edited(unet, edit), torch.no_grad():
        for name in names:
            got, want = oe.get_handle(unet, name).module(K), T @ w0[name].T
            assert float((got - want).norm() / want.norm()) < 1e-5
    with pytest.raises(ShapeMismatchError, match="64-dimensional"):
        text_edit_from_embeddings(unet, K[:, :32], T[:, :32], layers=names)


def test_edit_folder_applies_to_a_pipeline_and_reverts_exactly(pipe, tmp_path) -> None:
    edit = text_edit(pipe, "a rose", "a blue rose", prior="identity")
    edit.save(tmp_path / "blue-rose")
    loaded = oe.Edit.from_pretrained(str(tmp_path / "blue-rose"))
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    want = oe.edited_parameters(pipe.unet, loaded)

    def render():
        return pipe("a rose", num_inference_steps=2, height=16, width=16, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    img0 = render()
    loaded.apply(pipe)  # the edit names its component: pipe.unet
    try:
        for key, value in want.items():
            assert torch.equal(pipe.unet.state_dict()[key], value)
        assert float((render() - img0).abs().max()) > 0
    finally:
        loaded.revert(pipe)
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in state.items())


# -- bad input ------------------------------------------------------------------------------------------
def test_prompt_whose_tokens_cannot_be_aligned(pipe) -> None:
    with pytest.raises(TokenAlignmentError, match=r"'red</w>'.*no match") as e:
        text_edit(pipe, "a red rose", "a blue rose", prior="identity")
    assert "a blue rose" in str(e.value) or "blue</w>" in str(e.value)
    with pytest.raises(TokenAlignmentError, match="longer than"):
        text_edit(pipe, "a rose", " ".join(["a blue rose"] * 10), prior="identity")


def test_layer_that_is_not_cross_attention(pipe) -> None:
    for name in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", "conv_in"):
        with pytest.raises(UnsupportedLayerError, match="not a cross-attention"):
            text_edit(pipe, "a rose", "a blue rose", prior="identity", layers=[name])
    with pytest.raises(LayerNotFoundError):
        text_edit(pipe, "a rose", "a blue rose", prior="identity", layers=["mid_block.attn2.to_k"])


def test_edit_made_for_another_base_model(pipe, tmp_path) -> None:
    edit = text_edit(pipe, "a rose", "a blue rose", prior="identity")
    other = tiny_pipeline(tmp_path, seed=1).to(torch.float64)
    state = {k: v.clone() for k, v in other.unet.state_dict().items()}
    with pytest.raises(BaseMismatchError, match="fingerprint"):
        edit.apply(other)
    assert all(torch.equal(other.unet.state_dict()[k], v) for k, v in state.items())


def test_pipeline_without_a_unet() -> None:
    class TransformerPipeline:  # what an SD3 / Flux pipeline looks like to us
        def __init__(self) -> None:
            self.transformer = torch.nn.Linear(4, 4)
            self.components = {"transformer": self.transformer, "vae": None}

    with pytest.raises(UnsupportedModelError, match=r"no.*components \['transformer', 'vae'\]"):
        text_edit(TransformerPipeline(), "a rose", "a blue rose", prior="identity")
    with pytest.raises(UnsupportedModelError, match="encode"):
        text_edit(tiny_unet(), "a rose", "a blue rose", prior="identity")  # a bare UNet cannot encode prompts
    edit = text_edit_from_embeddings(tiny_unet(), torch.randn(3, D), torch.randn(3, D))
    with pytest.raises(EditStateError, match=r"with \.unet"):
        edit.apply(TransformerPipeline())
