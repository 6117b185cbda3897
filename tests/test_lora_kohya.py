"""Kohya-format LoRA export (A1111 / ComfyUI / kohya keys): diffusers' own kohya conversion reproduces our
apply on tiny SD and SDXL UNets and a CLIP text encoder; the metadata kohya's tools read; refusals; and
the diffusers ``transformer.`` prefix of a DiT edit, loaded by ``load_lora_adapter``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from tiny_diffusers import tiny_pipeline, tiny_sdxl_pipeline, tiny_unet

import olam_edit as oe
from olam_edit.cli import lora as cli_lora
from olam_edit.cli import main as cli_main
from olam_edit.edit import lora_kohya
from olam_edit.errors import LoraExportError
from olam_edit.eval.attention_stack import attention_stack
from olam_edit.memory.delta import Delta

pytestmark = pytest.mark.usefixtures("one_thread")

# (layer, kohya key written by hand from kohya's rule: "lora_unet_" + the path with "." -> "_")
SD_LAYERS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k":
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v":
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_out.0":
        "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn1_to_out_0",
    "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2":
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2",
    "down_blocks.0.attentions.0.proj_in": "lora_unet_down_blocks_0_attentions_0_proj_in",  # 1x1 conv
    "down_blocks.0.resnets.0.conv1": "lora_unet_down_blocks_0_resnets_0_conv1",  # 3x3 conv: LoCon
    "up_blocks.0.resnets.0.conv_shortcut": "lora_unet_up_blocks_0_resnets_0_conv_shortcut",
    "down_blocks.1.resnets.0.time_emb_proj": "lora_unet_down_blocks_1_resnets_0_time_emb_proj",
    "down_blocks.0.downsamplers.0.conv": "lora_unet_down_blocks_0_downsamplers_0_conv",
    "conv_in": "lora_unet_conv_in",
    "time_embedding.linear_1": "lora_unet_time_embedding_linear_1",
}


def _orth(r: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].T.float().contiguous()


def _deltas(model: torch.nn.Module, names, g: torch.Generator, size: float = 0.1,
            rank: int | None = None) -> dict[str, Delta]:
    """Ranks 1..3 by position (or ``rank``): linear deltas and k x k conv deltas (rank r*k*k LoRAs)."""
    mods, out = dict(model.named_modules()), {}
    for i, name in enumerate(names):
        m, r = mods[name], rank or 1 + i % 3
        if isinstance(m, torch.nn.Linear):
            out[name] = Delta(size * torch.randn(m.out_features, r, generator=g), _orth(r, m.in_features, g), "linear")
        else:
            kh, kw = m.kernel_size
            lam = size * torch.randn(m.out_channels, r, kh, kw, generator=g)
            out[name] = Delta(lam, _orth(r, m.in_channels, g), "conv2d", scale=0.8)
    return out


def _unet_run(unet, g: torch.Generator, context: int, sdxl: bool = False):
    x = (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 7, context, generator=g))
    extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, 16, generator=g),
                                   "time_ids": torch.randn(2, 6, generator=g)}} if sdxl else {}

    def run(u) -> torch.Tensor:
        with torch.no_grad():
            return u(*x, **extra).sample
    return run


def _keys(path) -> tuple[list[str], dict[str, str], safe_open]:
    f = safe_open(str(path), "pt")
    return list(f.keys()), f.metadata(), f


def test_kohya_file_goes_through_diffusers_kohya_conversion_and_matches_our_apply(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = tiny_pipeline(tmp_path / "pipe")
    g = torch.Generator().manual_seed(11)
    edit = oe.Edit.create(pipe.unet, _deltas(pipe.unet, SD_LAYERS, g), base_model="tiny/sd", component="unet")
    run = _unet_run(pipe.unet, g, 32)
    base = run(pipe.unet)
    with oe.edited(pipe.unet, edit):
        ours = run(pipe.unet)
    assert edit.to_lora(tmp_path / "k", format="kohya") == tmp_path / "k"
    path = tmp_path / "k" / "lora.safetensors"
    keys, _, f = _keys(path)
    assert sorted(keys) == sorted(f"{k}.{s}" for k in SD_LAYERS.values() for s in ("lora_down.weight",
                                                                                    "lora_up.weight", "alpha"))
    for name, key in SD_LAYERS.items():  # what A1111 / ComfyUI / kohya add: alpha / rank * up down
        down, up, alpha = (f.get_tensor(f"{key}.{s}") for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        added = float(alpha) / down.shape[0] * (up.flatten(1).double() @ down.flatten(1).double())
        dense = edit.deltas[name].dense().double().flatten(1)  # [out, in * kh * kw]
        assert float((added - dense).abs().max()) < 1e-6 * float(dense.abs().max())
    ranks = [f.get_tensor(f"{k}.lora_down.weight").shape[0] for k in SD_LAYERS.values()]
    common = max(ranks, key=ranks.count)  # one alpha for all: diffusers gives attention projections that one
    assert {float(f.get_tensor(f"{k}.alpha")) for k in SD_LAYERS.values()} == {float(common)} and len(set(ranks)) > 2
    assert f.get_tensor(f"{SD_LAYERS['down_blocks.0.resnets.0.conv1']}.lora_down.weight").shape == (9 * 3, 16, 3, 3)
    # diffusers sees the kohya names and converts them (network alphas come only from that path)
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    assert alphas and all(k.startswith("unet.") for k in state)
    pipe.load_lora_weights(str(path))
    assert float((ours - base).abs().max()) > 1e-2
    assert float((run(pipe.unet) - ours).abs().max()) < 1e-5


def test_sdxl_unet_and_text_encoder_kohya_files_match_our_apply(tmp_path) -> None:
    pipe = tiny_sdxl_pipeline(tmp_path / "xl")
    g = torch.Generator().manual_seed(12)
    names = ["down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", "up_blocks.0.attentions.1.proj_out",
             "up_blocks.0.upsamplers.0.conv", "conv_out"]
    edit = oe.Edit.create(pipe.unet, _deltas(pipe.unet, names, g), component="unet")
    run = _unet_run(pipe.unet, g, 64, sdxl=True)
    with oe.edited(pipe.unet, edit):
        ours = run(pipe.unet)
    edit.to_lora(tmp_path / "k", format="kohya", base_version="sdxl_base_v1-0")
    keys, meta, _ = _keys(tmp_path / "k" / "lora.safetensors")
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k.lora_up.weight" in keys
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    pipe.load_lora_weights(str(tmp_path / "k" / "lora.safetensors"))
    assert float((run(pipe.unet) - ours).abs().max()) < 1e-5

    te = pipe.text_encoder_2  # SDXL's second encoder: keys lora_te2_text_model_..., as kohya writes them
    te_names = [n for n, _ in te.named_modules() if n.endswith(("layers.0.self_attn.k_proj", "layers.1.mlp.fc1"))]
    assert len(te_names) == 2  # "text_model." in front or not, as the transformers version has it
    te_edit = oe.Edit.create(te, _deltas(te, te_names, g, size=0.3), component="text_encoder_2")
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        base = te(ids).text_embeds
        with oe.edited(te, te_edit):
            ours_te = te(ids).text_embeds
    te_edit.to_lora(tmp_path / "te", format="kohya", base_version="sdxl_base_v1-0")
    keys, _, _ = _keys(tmp_path / "te" / "lora.safetensors")
    assert "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight" in keys
    pipe.load_lora_weights(str(tmp_path / "te" / "lora.safetensors"))
    with torch.no_grad():
        stock = pipe.text_encoder_2(ids).text_embeds
    assert float((ours_te - base).abs().max()) > 1e-3 and float((stock - ours_te).abs().max()) < 1e-5


@pytest.mark.parametrize(("width", "version", "v2", "arch"), [(768, "sd_v1", "False", "stable-diffusion-v1"),
                                                             (1024, "sd_v2", "True", "stable-diffusion-v2-512")])
def test_metadata_kohya_tools_read(tmp_path, width: int, version: str, v2: str, arch: str) -> None:
    stack = attention_stack([("down_blocks.0.attentions.0", 8)], width, seed=3)
    g = torch.Generator().manual_seed(13)
    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
             "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"]
    edit = oe.Edit.create(stack, _deltas(stack, names, g, rank=2), base_model="someone/base", component="unet",
                          rule="a rose -> a blue rose")
    edit.to_lora(tmp_path, format="kohya")
    _, meta, _ = _keys(tmp_path / "lora.safetensors")
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("2", "2.0")
    assert json.loads(meta["ss_network_args"]) == {}  # no conv layer
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_sd_model_name"]) == (version, v2, "someone/base")
    assert meta["modelspec.architecture"] == f"{arch}/lora"
    assert json.loads(meta["olam_edit"])["rule"] == "a rose -> a blue rose"


def test_conv_dim_metadata_and_unknown_base(tmp_path) -> None:
    unet = tiny_unet()
    g = torch.Generator().manual_seed(14)
    names = ["down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2"]  # ranks 1, 2 of 3x3 convs
    edit = oe.Edit.create(unet, _deltas(unet, names, g), component="unet")
    edit.to_lora(tmp_path, format="kohya")
    _, meta, f = _keys(tmp_path / "lora.safetensors")
    # LoRA ranks 9 and 18: kohya's "Dynamic" dim; one alpha (the first most common rank) for every module
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "Dynamic", "conv_alpha": "9.0"}
    assert meta["ss_network_dim"] == "Dynamic" and meta["ss_network_alpha"] == "9.0"
    assert {float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")} == {9.0}
    assert "ss_base_model_version" not in meta and "ss_sd_model_name" not in meta  # 32-wide tiny: unknown


def test_what_the_kohya_format_cannot_hold_is_refused_by_name(tmp_path) -> None:
    g = torch.Generator().manual_seed(15)
    xl = tiny_unet(sdxl=True)
    add = oe.Edit.create(xl, _deltas(xl, ["add_embedding.linear_1"], g), component="unet")
    with pytest.raises(LoraExportError, match=r"'add_embedding\.linear_1'.*kohya"):
        add.to_lora(tmp_path / "a", format="kohya")
    add.to_lora(tmp_path / "ok", format="diffusers")  # the diffusers format holds it
    seq = torch.nn.Sequential(torch.nn.Linear(4, 3))
    plain = oe.Edit.create(seq, _deltas(seq, ["0"], g))
    with pytest.raises(LoraExportError, match="layer '0' cannot be written in the kohya format"):
        plain.to_lora(tmp_path / "b", format="kohya")
    vae_like = oe.Edit.create(seq, _deltas(seq, ["0"], g), component="vae")
    with pytest.raises(LoraExportError, match=r"'vae' cannot be written in the kohya format.*format='diffusers'"):
        vae_like.to_lora(tmp_path / "c", format="kohya")
    unet = tiny_unet()
    ok = oe.Edit.create(unet, _deltas(unet, ["conv_in"], g), component="unet")
    with pytest.raises(LoraExportError, match="unknown base model version"):
        ok.to_lora(tmp_path / "d", format="kohya", base_version="sd_v3")
    assert {p.name for p in tmp_path.iterdir()} == {"ok"}  # nothing written on refusal


def test_cli_export_lora_kohya(tmp_path, capsys) -> None:
    assert cli_lora.FORMATS == ("peft", "diffusers", "kohya") and cli_lora.BASE_VERSIONS == lora_kohya.BASE_VERSIONS
    unet = tiny_unet()
    edit = oe.Edit.create(unet, _deltas(unet, list(SD_LAYERS)[:3], torch.Generator().manual_seed(16)),
                          component="unet")
    edit.save(tmp_path / "edit")
    assert cli_main(["export-lora", str(tmp_path / "edit"), str(tmp_path / "k"), "--format", "kohya",
                     "--base-version", "sd_v1"]) == 0
    assert "wrote a kohya LoRA of 3 layer(s)" in capsys.readouterr().out
    keys, meta, _ = _keys(tmp_path / "k" / "lora.safetensors")
    assert len(keys) == 9 and all(k.startswith("lora_unet_") for k in keys) and meta["ss_base_model_version"] == "sd_v1"
    seq = torch.nn.Sequential(torch.nn.Linear(4, 3))
    oe.Edit.create(seq, _deltas(seq, ["0"], torch.Generator().manual_seed(17))).save(tmp_path / "plain")
    assert cli_main(["export-lora", str(tmp_path / "plain"), str(tmp_path / "p"), "--format", "kohya"]) == 2
    assert "cannot be written in the kohya format" in capsys.readouterr().err


def _tiny_sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8).eval()


def test_transformer_edit_exports_with_the_transformer_prefix_and_loads(tmp_path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tr = _tiny_sd3()
    g = torch.Generator().manual_seed(18)
    names = ["context_embedder", "transformer_blocks.0.attn.add_k_proj"]
    edit = oe.Edit.create(tr, _deltas(tr, names, g, size=0.3), base_model="tiny/sd3", component="transformer")
    x = {"hidden_states": torch.randn(2, 4, 8, 8, generator=g),
         "encoder_hidden_states": torch.randn(2, 5, 16, generator=g),
         "pooled_projections": torch.randn(2, 8, generator=g), "timestep": torch.tensor([10, 500])}

    def run(m) -> torch.Tensor:
        with torch.no_grad():
            return m(**x).sample
    base = run(tr)
    with oe.edited(tr, edit):
        ours = run(tr)
    edit.to_lora(tmp_path / "d", format="diffusers")
    with safe_open(str(tmp_path / "d" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert set(f.keys()) == {f"transformer.{n}.lora_{ab}.weight" for n in names for ab in "AB"}
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.r"] == 1
    stock = copy.deepcopy(tr)
    stock.load_lora_adapter(str(tmp_path / "d"), prefix="transformer", weight_name="pytorch_lora_weights.safetensors")
    # the pipeline-level loader (an SD3 pipeline holding just this transformer)
    pipe = StableDiffusion3Pipeline(transformer=_tiny_sd3(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.load_lora_weights(str(tmp_path / "d"))
    assert float((ours - base).abs().max()) > 1e-3
    assert float((run(stock) - ours).abs().max()) < 1e-5 and float((run(pipe.transformer) - ours).abs().max()) < 1e-5
    with pytest.raises(LoraExportError, match="'transformer' cannot be written in the kohya format"):
        edit.to_lora(tmp_path / "k", format="kohya")
