"""LoRA export: exact factors, and stock PEFT / diffusers loaders reproduce our own apply (float32)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tiny_diffusers import tiny_pipeline, tiny_unet

import olam_edit as oe
from olam_edit.cli import main as cli_main
from olam_edit.edit.lora import lora_factors, to_lora
from olam_edit.errors import LoraExportError
from olam_edit.memory.delta import Delta

TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
TO_V = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"
CONV = "down_blocks.0.resnets.0.conv1"  # 3x3, 16 -> 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _orth(r: int, d: int, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].T.to(dtype).contiguous()


def _unet_edit(unet) -> oe.Edit:
    """Linear deltas of ranks 3 and 1 and a rank-2 delta on a 3x3 conv (a rank-18 conv LoRA)."""
    g = torch.Generator().manual_seed(7)
    deltas = {TO_K: Delta(0.2 * torch.randn(16, 3, generator=g), _orth(3, 32, g), "linear"),
              TO_V: Delta(0.2 * torch.randn(32, 1, generator=g), _orth(1, 32, g), "linear"),
              CONV: Delta(0.2 * torch.randn(16, 2, 3, 3, generator=g), _orth(2, 16, g), "conv2d", scale=0.7)}
    return oe.Edit.create(unet, deltas, base_model="tiny/unet", component="unet")


def _unet_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 7, 32, generator=g)


def _run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs).sample


@pytest.mark.parametrize("stride", [1, 2])
def test_lora_factors_are_exact(stride: int) -> None:
    g = torch.Generator().manual_seed(0)
    lin = Delta(torch.randn(5, 2, generator=g, dtype=torch.float64), _orth(2, 6, g, torch.float64), "linear", 0.5)
    f = lora_factors(lin, torch.float64)
    assert torch.allclose(f.B @ f.A, lin.dense(), atol=1e-14) and f.rank == 2
    conv = Delta(torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64), _orth(2, 6, g, torch.float64), "conv2d")
    f = lora_factors(conv, torch.float64)
    assert f.A.shape == (18, 6, 3, 3) and f.B.shape == (5, 18, 1, 1)
    x = torch.randn(2, 6, 9, 9, generator=g, dtype=torch.float64)
    want = F.conv2d(x, conv.dense(), stride=stride, padding=1)
    got = F.conv2d(F.conv2d(x, f.A, stride=stride, padding=1), f.B)  # PEFT's A then 1x1 B
    assert float((got - want).abs().max()) < 1e-12


def test_stock_peft_and_diffusers_loaders_match_our_apply(tmp_path) -> None:
    from peft import PeftModel

    pipe = tiny_pipeline(tmp_path / "pipe")
    unet, inputs = pipe.unet, _unet_inputs()
    edit = _unet_edit(unet)
    base = _run(unet, inputs)
    with oe.edited(unet, edit):
        ours = _run(unet, inputs)
    edit.to_lora(tmp_path / "peft", format="peft")
    edit.to_lora(tmp_path / "diffusers", format="diffusers")

    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 3
    assert config["rank_pattern"] == config["alpha_pattern"] == {f"^{TO_V}": 1, f"^{CONV}": 18}
    with safe_open(str(tmp_path / "diffusers" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f"unet.{CONV}.lora_A.weight" in f.keys() and all(k.startswith("unet.") for k in f.keys())
        assert json.loads(f.metadata()["lora_adapter_metadata"])["unet.r"] == 3

    peft_out = _run(PeftModel.from_pretrained(copy.deepcopy(unet), tmp_path / "peft"), inputs)
    model_level = copy.deepcopy(unet)
    model_level.load_lora_adapter(tmp_path / "diffusers", prefix="unet", weight_name="pytorch_lora_weights.safetensors")
    pipe.load_lora_weights(tmp_path / "diffusers")  # the pipeline-level loader
    assert float((ours - base).abs().max()) > 1e-2
    for other in (peft_out, _run(model_level, inputs), _run(pipe.unet, inputs)):
        assert float((other - ours).abs().max()) < 1e-5


def test_text_rule_lora_renders_like_our_apply_in_a_pipeline(tmp_path) -> None:
    from olam_edit.adapters.diffusers.text import text_edit

    ours_pipe, stock_pipe = tiny_pipeline(tmp_path / "a"), tiny_pipeline(tmp_path / "b")  # same seed, same weights
    edit = text_edit(ours_pipe, "a rose", "a blue rose", prior="identity")
    edit.to_lora(tmp_path / "lora", "diffusers")
    stock_pipe.load_lora_weights(tmp_path / "lora")

    def render(pipe):
        return pipe("a rose", num_inference_steps=2, height=16, width=16, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    base = render(ours_pipe)
    with oe.edited(ours_pipe, edit):
        ours = render(ours_pipe)
    assert float((ours - base).abs().max()) > 1e-4
    assert float((render(stock_pipe) - ours).abs().max()) < 1e-5


def test_export_refuses_what_lora_cannot_hold(tmp_path) -> None:
    unet = tiny_unet()
    edit = _unet_edit(unet)
    with pytest.raises(LoraExportError, match="unknown LoRA format"):
        to_lora(edit, tmp_path / "x", "lycoris")
    ct = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 3, 4, 2, 1))
    g = torch.Generator().manual_seed(0)
    ct_edit = oe.Edit.create(ct, {"0": Delta(torch.randn(1, 3, 4, 4, generator=g), _orth(1, 4, g), "conv_transpose2d")})
    with pytest.raises(LoraExportError, match="cannot be written as a LoRA"):
        ct_edit.to_lora(tmp_path / "ct")
    modconv = oe.Edit(edit.deltas, {**edit.manifest, "layers": {**edit.manifest["layers"],
                                                               CONV: {"kind": "stylegan2_modconv"}}})
    with pytest.raises(LoraExportError, match="stylegan2_modconv"):
        modconv.to_lora(tmp_path / "sg")
    dilated = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3, padding=2, dilation=2))
    d_edit = oe.Edit.create(dilated, {"0": Delta(torch.randn(3, 1, 3, 3, generator=g), _orth(1, 4, g), "conv2d")})
    with pytest.raises(LoraExportError, match="dilat"):
        d_edit.to_lora(tmp_path / "dil", model=dilated)
    assert not any(tmp_path.iterdir())  # nothing written on refusal


def test_cli_export_lora(tmp_path, capsys) -> None:
    edit = _unet_edit(tiny_unet())
    edit.save(tmp_path / "edit")
    assert cli_main(["export-lora", str(tmp_path / "edit"), str(tmp_path / "d"), "--format", "diffusers"]) == 0
    assert cli_main(["export-lora", str(tmp_path / "edit"), str(tmp_path / "p")]) == 0
    assert "LoRA ranks [1, 3, 18]" in capsys.readouterr().out
    assert (tmp_path / "d" / "pytorch_lora_weights.safetensors").is_file()
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    with pytest.raises(SystemExit):
        cli_main(["export-lora", str(tmp_path / "edit"), str(tmp_path / "k"), "--format", "lycoris"])
    assert cli_main(["export-lora", str(tmp_path / "missing"), str(tmp_path / "m")]) == 2


def test_import_works_without_diffusers_peft_and_transformers(tmp_path) -> None:
    code = textwrap.dedent(f"""
        import sys
        for name in ("diffusers", "peft", "transformers"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import torch, olam_edit
        from olam_edit.edit.lora import to_lora
        from olam_edit.cli import build_parser
        from olam_edit.adapters.diffusers import text, vae
        model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        delta = olam_edit.Delta(torch.ones(3, 1), torch.tensor([[1.0, 0, 0, 0]]), "linear")
        to_lora(olam_edit.Edit.create(model, {{"0": delta}}), {str(tmp_path / "out")!r}, "peft")
        build_parser().parse_args(["export-lora", "a", "b"])
        assert not any(m in sys.modules and sys.modules[m] is not None for m in ("diffusers", "peft"))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
