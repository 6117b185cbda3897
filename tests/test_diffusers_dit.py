"""Text rules on tiny DiT pipelines built from configs (PixArt-Sigma, Sana, SD3, Flux): the keys are
what the prompt-only layers read, the closed form is the optimum, keys orthogonal in the prior's
metric are untouched, revert is exact, the stock diffusers LoRA loader reproduces our apply, and
unknown transformers or non-prompt-only layers are refused clearly."""

from __future__ import annotations

import pytest
import torch
from tiny_dit import tiny_flux, tiny_pixart, tiny_sana, tiny_sd3

import olam_edit as oe
from olam_edit.adapters.diffusers.families import call_default, family_of
from olam_edit.adapters.diffusers.text import encode, prompt_moment, rule_keys, text_edit
from olam_edit.errors import UnsupportedLayerError, UnsupportedModelError
from olam_edit.rules.text.solve import prior_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("pixart", "sana", "sd3", "flux")
LAYERS = {"pixart": 4, "sana": 4, "sd3": 1, "flux": 1}  # 2 blocks x attn2 (to_k, to_v); one context_embedder
SMALL_CORPUS = ["a photo of a cat", "a red car in the sky", "a house with a tree", "a green field", "a dog",
                "a painting of a flower", "a small house", "the sky", "a big tree on the grass", "a cat and a dog"]


def _build(name: str, folder):
    makers = {"pixart": lambda: tiny_pixart(), "sana": lambda: tiny_sana(), "sd3": lambda: tiny_sd3(folder),
              "flux": lambda: tiny_flux(folder)}
    return makers[name]().to(torch.float64)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory, one_thread):
    name = request.param
    pipe = _build(name, tmp_path_factory.mktemp(name))
    corpus = SMALL_CORPUS if name == "sana" else None  # Sana encodes every prompt after its long instruction
    return name, pipe, prompt_moment(pipe, corpus), corpus


def _inputs(name: str, pipe, prompt: str) -> dict:
    """The transformer's inputs for ``prompt`` (the pipeline's own encode_prompt) and a seeded latent."""
    kw = {"prompt": prompt, "device": torch.device("cpu"), "num_images_per_prompt": 1}
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([500.0], dtype=torch.float64)
    if name in ("pixart", "sana"):
        extra = {"complex_human_instruction": call_default(pipe, "complex_human_instruction")} if name == "sana" else {}
        emb, mask = pipe.encode_prompt(do_classifier_free_guidance=False, **kw, **extra)[:2]
        x = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        cond = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}} if name == "pixart" else {}
        return {"hidden_states": x, "encoder_hidden_states": emb, "encoder_attention_mask": mask, "timestep": t, **cond}
    if name == "sd3":
        emb, _, pooled, _ = pipe.encode_prompt(prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, **kw)
        x = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        return {"hidden_states": x, "encoder_hidden_states": emb, "pooled_projections": pooled, "timestep": t}
    emb, pooled, txt_ids = pipe.encode_prompt(prompt_2=None, **kw)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return {"hidden_states": torch.randn(1, 16, 4, generator=g, dtype=torch.float64), "encoder_hidden_states": emb,
            "pooled_projections": pooled, "timestep": t / 1000, "img_ids": img_ids.reshape(-1, 3).double(),
            "txt_ids": txt_ids.double(), "guidance": None}


def _run(transformer, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]


def _weights(module, names):
    return {n: oe.get_handle(module, n).parameter.detach().clone() for n in names}


def _perp(K: torch.Tensor, C: torch.Tensor, n: int = 6) -> torch.Tensor:
    """Random keys k with K^T C^{-1} k = 0 (orthogonal to every rule key in the prior's metric)."""
    A = torch.linalg.solve(C, K.T).T  # [n_keys, d] rows C^{-1} k_j
    u = torch.randn(n, K.shape[1], generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return u - (torch.linalg.pinv(A) @ (A @ u.T)).T


def test_the_family_edits_layers_that_read_only_the_prompt(family) -> None:
    """Family, component and layers; the keys we compute are exactly the inputs the layers receive in
    the transformer's own forward pass."""
    name, pipe, _, _ = family
    fam, comp = family_of(pipe)
    assert comp is pipe.transformer and fam.component == "transformer"
    layers = fam.layers(comp)
    assert len(layers) == LAYERS[name]
    assert all(".attn2.to_" in n for n in layers) if name in ("pixart", "sana") else layers == ["context_embedder"]
    seen: list[torch.Tensor] = []
    hook = oe.get_handle(comp, layers[0]).module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    try:
        _run(comp, _inputs(name, pipe, "a blue rose"))
    finally:
        hook.remove()
    keys = encode(pipe, ["a blue rose"])  # [1, T, d]
    assert seen and seen[0].shape[-2:] == keys.shape[-2:]
    assert float((seen[0].double() - keys).abs().max()) < 1e-10


def test_soft_rule_is_the_closed_form_optimum(family) -> None:
    name, pipe, moment, _ = family
    lam = 0.5
    edit = text_edit(pipe, ["a rose", "a cat"], ["a blue rose", "a big cat"], prior=moment, prior_weight=lam)
    assert edit.manifest["component"] == "transformer"
    rk = rule_keys(pipe, ["a rose", "a cat"], ["a blue rose", "a big cat"], padding=True)
    K, T = rk.keys, rk.targets
    C = prior_matrix(moment, K.shape[1])
    for layer in list(edit.deltas)[:2]:
        W0 = oe.get_handle(pipe.transformer, layer).parameter.detach().double()
        dW, R = edit.deltas[layer].dense(torch.float64), W0 @ (T - K).T

        def f(dw: torch.Tensor, R=R) -> float:
            return float((dw @ K.T - R).square().sum() + lam * torch.einsum("oi,ij,oj->", dw, C, dw))

        grad = (dW @ K.T - R) @ K + lam * dW @ C  # half the gradient of f; zero at the optimum
        assert float(grad.norm() / (R @ K).norm()) < 1e-5, layer
        g = torch.Generator().manual_seed(3)
        assert all(f(dW + 1e-4 * torch.randn(dW.shape, generator=g, dtype=dW.dtype)) > f(dW) for _ in range(4))
        assert float((dW @ K.T - R).norm()) < 0.9 * float(R.norm())


def test_hard_rule_is_exact_orthogonal_keys_stay_and_revert_is_exact(family) -> None:
    name, pipe, moment, _ = family
    tr = pipe.transformer
    edit = text_edit(pipe, "a rose", "a blue rose", prior=moment, hard=True)
    rk = rule_keys(pipe, ["a rose"], ["a blue rose"], padding=False)
    k_perp = _perp(rk.keys, prior_matrix(moment, rk.keys.shape[1]))
    w0, state = _weights(tr, edit.deltas), {k: v.clone() for k, v in tr.state_dict().items()}
    modules = {n: oe.get_handle(tr, n).module for n in edit.deltas}
    with torch.no_grad():
        before = {n: m(k_perp) for n, m in modules.items()}
        edit.apply(pipe)  # the edit names its component: pipe.transformer
        try:
            for n, m in modules.items():
                b = m.bias if m.bias is not None else 0  # the bias cancels: W1 k + b = W0 t + b
                want, got = rk.targets @ w0[n].T + b, m(rk.keys)
                assert float((got - want).norm() / want.norm()) < 1e-5, n
                moved = float((got - rk.keys @ w0[n].T - b).norm())
                assert moved > 1e-3 and float((m(k_perp) - before[n]).norm()) < 1e-5 * moved, n
        finally:
            edit.revert(pipe)
    assert all(torch.equal(tr.state_dict()[k], v) for k, v in state.items())


def test_stock_diffusers_lora_loader_reproduces_our_apply(family, tmp_path) -> None:
    name, pipe, _, corpus = family
    """SD3, Flux, Sana: the diffusers file through ``pipe.load_lora_weights`` and through the model-level
    ``transformer.load_lora_adapter(prefix="transformer")``. PixArt's transformer has no LoRA loader in
    diffusers (no PeftAdapterMixin), so there the PEFT folder goes through ``peft.PeftModel``."""
    from peft import PeftModel
    from safetensors import safe_open

    edit = text_edit(pipe, "a rose", "a blue rose", corpus=corpus)
    edit.to_lora(tmp_path / "lora", "diffusers")
    edit.to_lora(tmp_path / "peft", "peft")
    with safe_open(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert all(k.startswith("transformer.") for k in f.keys())
    loaded = []
    if name == "pixart":
        loaded.append(PeftModel.from_pretrained(_build(name, tmp_path / "p").transformer, tmp_path / "peft"))
    else:
        stock, model_level = _build(name, tmp_path / "s"), _build(name, tmp_path / "m")  # same seeds, same weights
        stock.load_lora_weights(tmp_path / "lora")
        model_level.transformer.load_lora_adapter(tmp_path / "lora", prefix="transformer",
                                                  weight_name="pytorch_lora_weights.safetensors")
        loaded += [stock.transformer, model_level.transformer]
    inputs = _inputs(name, pipe, "a rose")
    base = _run(pipe.transformer, inputs)
    with oe.edited(pipe, edit):
        ours = _run(pipe.transformer, inputs)
    assert float((ours - base).abs().max()) > 1e-6
    for model in loaded:
        assert float((_run(model, inputs) - ours).abs().max()) < 1e-5


# -- bad input ------------------------------------------------------------------------------------------
def test_joint_attention_add_projections_are_refused(tmp_path) -> None:
    pipe = _build("sd3", tmp_path)
    with pytest.raises(UnsupportedLayerError, match="context_embedder"):
        text_edit(pipe, "a rose", "a blue rose", prior="identity",
                  layers=["transformer_blocks.1.attn.add_k_proj"])


def test_unknown_transformer_names_the_layers_looked_for() -> None:
    class Mystery(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    class Pipe:
        def __init__(self) -> None:
            self.transformer = Mystery()
            self.components = {"transformer": self.transformer}

    with pytest.raises(UnsupportedModelError, match=r"no prompt-only layer.*Mystery.*context_embedder") as e:
        text_edit(Pipe(), "a rose", "a blue rose", prior="identity")
    assert "attn2.to_k" in str(e.value) and "register_family" in str(e.value)


def test_capitals_give_the_keys_of_what_the_encoder_sees(family) -> None:
    """PixArt and Sana lower-case prompts before their case-sensitive tokenisers: the rule's token
    positions must come from that text, so "A Blue Rose" aligns exactly like "a blue rose"."""
    name, pipe, _, _ = family
    upper = rule_keys(pipe, ["A Blue Rose"], ["A Blue Rose In A Vase"], True)
    if name in ("pixart", "sana"):
        lower = rule_keys(pipe, ["a blue rose"], ["a blue rose in a vase"], True)
        assert upper.alignments == lower.alignments
        assert torch.equal(upper.keys, lower.keys) and torch.equal(upper.targets, lower.targets)
    assert upper.keys.shape == upper.targets.shape and upper.keys.shape[0] > 0


def test_erase_and_replace_refuse_dit_pipelines_with_one_line(family) -> None:
    from olam_edit.adapters.diffusers.erase import text_erase, text_replace

    _, pipe, _, _ = family
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="support UNet pipelines"):
        text_erase(pipe, "a cat", guide="a dog", preserve=["a house"])
    with pytest.raises(UnsupportedModelError, match="support UNet pipelines"):
        text_replace(pipe, "a cat", "a dog")
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())
