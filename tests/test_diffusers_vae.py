"""Spatial rules on a tiny AutoencoderKL decoder through the generic conv-generator adapter: the
Rewriter meets its target as on the DCGAN, the edit applies to the VAE itself, and its LoRA export
loads in stock PEFT and diffusers with the same outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_diffusers import tiny_vae

import olam_edit as oe
from olam_edit.adapters.diffusers.vae import VAEDecode, vae_generator
from olam_edit.errors import UnsupportedModelError
from olam_edit.memory.solve import Problem, objective
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

LAYER = "decoder.up_blocks.0.resnets.0.conv2"  # 3x3 conv, 16 -> 16 channels, on the 8x8 latent grid


pytestmark = pytest.mark.usefixtures("one_thread")


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16))
    m[y0:y1, x0:x1] = 1
    return m


def _request(rank: int = 1, layer: str = LAYER) -> EditRequest:
    return EditRequest(layer=layer, rank=rank, copy=Selection(3, _mask(2, 8, 2, 8)),
                       paste=Selection(5, _mask(8, 14, 8, 14)),
                       context=[Selection(5, _mask(8, 14, 8, 14)), Selection(9, _mask(4, 10, 4, 10))])


def test_decoder_generator_names_layers_like_the_vae() -> None:
    vae = tiny_vae()
    gen = vae_generator(vae)
    assert gen.latent_shape == (4, 8, 8) and gen.component == "vae"
    assert set(gen.layers()) <= {n for n, _ in vae.named_modules()}
    z = gen.latents([0, 1])
    with torch.no_grad():
        want = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(gen.render(z), want, atol=1e-6)  # decodes diffusion latents as the pipelines do
    with pytest.raises(UnsupportedModelError, match="decoder"):
        vae_generator(torch.nn.Linear(2, 2))


def test_rewrite_meets_the_target_at_the_closed_form_optimum(tmp_path) -> None:
    gen = vae_generator(tiny_vae().double())
    rw = Rewriter(gen, LAYER, smoothness=0.3, progress=False, stats_samples=40, cache_dir=str(tmp_path))
    req = _request(rank=2)
    edit = rw.rewrite(req)
    rule = rw.rule_tensors(req)
    D, lam = edit.deltas[LAYER].directions.double(), edit.deltas[LAYER].lam.double()
    problem = Problem(rw.handle, rule.x_paste, rule.v_star, rule.fit_mask)
    best = objective(problem, lam, D, rw.C, 0.3)
    assert all(objective(problem, lam + 1e-3 * torch.randn_like(lam), D, rw.C, 0.3) > best for _ in range(5))
    with oe.edited(gen.model, edit):
        _, v_after = gen.keys_and_values(LAYER, gen.latents([5]))
    _, v_before = gen.keys_and_values(LAYER, gen.latents([5]))
    fit = rule.fit_mask.bool()[0]
    assert (v_after - rule.v_star)[..., fit].norm() < 0.8 * (v_before - rule.v_star)[..., fit].norm()


def test_hard_fit_with_zero_smoothness_and_rank_covering_the_crop(tmp_path) -> None:
    gen = vae_generator(tiny_vae().double())
    rw = Rewriter(gen, LAYER, smoothness=0.0, progress=False, stats_samples=40, cache_dir=str(tmp_path))
    req = EditRequest(layer=LAYER, rank=4, copy=Selection(3, _mask(2, 6, 2, 6)),
                      paste=Selection(5, _mask(8, 12, 8, 12)))
    rule = rw.rule_tensors(req)
    edit = rw.rewrite(req)
    with oe.edited(gen.model, edit):
        _, v_after = gen.keys_and_values(LAYER, gen.latents([5]))
    fit = rule.fit_mask.bool()[0]
    rel = float((v_after - rule.v_star)[..., fit].norm() / rule.v_star[..., fit].norm())
    assert rel < 1e-5  # float32 storage of the factors limits this, not the solve


def test_edit_applies_to_the_vae_and_exports_as_a_conv_lora(tmp_path) -> None:
    """A rank-2 rewrite of a 3x3 conv is a rank-18 conv LoRA; PEFT and diffusers reproduce our apply."""
    from peft import PeftModel

    vae = tiny_vae()
    gen = vae_generator(vae)
    edit = Rewriter(gen, LAYER, smoothness=0.5, progress=False, stats_samples=20,
                    cache_dir=str(tmp_path / "stats")).rewrite(_request(rank=2))
    z = gen.latents([11, 12]) / vae.config.scaling_factor
    with torch.no_grad():
        base = vae.decode(z).sample
        with oe.edited(vae, edit):  # the edit's layer names are the VAE's own
            ours = vae.decode(z).sample
        assert torch.allclose(gen.render(gen.latents([11, 12]), edit), ours.clamp(-1, 1), atol=1e-6)
        edit.to_lora(tmp_path / "peft", "peft")
        edit.to_lora(tmp_path / "diffusers", "diffusers", prefix="vae")
        peft_out = PeftModel.from_pretrained(copy.deepcopy(vae), tmp_path / "peft").decode(z).sample
        vae2 = copy.deepcopy(vae)
        vae2.load_lora_adapter(tmp_path / "diffusers", prefix="vae", weight_name="pytorch_lora_weights.safetensors")
        diffusers_out = vae2.decode(z).sample
    assert float((ours - base).abs().max()) > 1e-3
    assert float((peft_out - ours).abs().max()) < 1e-5
    assert float((diffusers_out - ours).abs().max()) < 1e-5
    assert vae2.peft_config["default_0"].r == 18
    assert isinstance(gen.model, VAEDecode)
