"""Tests of the pure-PyTorch StyleGAN2 generator: shapes, noise, truncation and the key/value API."""

from __future__ import annotations

import math

import pytest
import torch

from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.modconv import ModulatedConv
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.adapters.stylegan2.ops import blur_kernel, upsample_2x


def tiny_stylegan2(seed: int = 0, flavor: str = "rosinality", dtype: torch.dtype = torch.float32
                   ) -> StyleGAN2Generator:
    """A 16x16 generator with every parameter and buffer randomised (biases and noise included)."""
    torch.manual_seed(seed)
    config = StyleGAN2Config(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 12, 16: 8}, flavor=flavor)
    model = StyleGAN2Generator(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "affine" in name else 0.0))
        model.mapping.w_avg.normal_()
    return model.eval().to(dtype)


def z_batch(n: int = 2, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_names_shapes_and_ws_indices() -> None:
    model = tiny_stylegan2()
    assert model.layer_names == ["layer2", "layer3", "layer4", "layer5", "layer6"]
    assert model.num_ws == 6
    assert [model.ws_index(n) for n in model.layer_names] == [0, 1, 2, 3, 4]
    assert [model.ws_index(f"rgb{r}") for r in (4, 8, 16)] == [1, 3, 5]
    sd = model.state_dict()
    assert tuple(sd["const"].shape) == (16, 4, 4)
    assert tuple(sd["layers.layer3.conv.weight"].shape) == (12, 16, 3, 3)
    assert tuple(sd["layers.layer5.noise_const"].shape) == (1, 1, 16, 16)
    assert tuple(sd["to_rgbs.rgb16.conv.weight"].shape) == (3, 8, 1, 1)
    assert not any("blur" in k or "kernel" in k or "tap" in k for k in sd)
    assert model(z_batch(3), noise_mode="const").shape == (3, 3, 16, 16)


def test_noise_modes() -> None:
    model, z = tiny_stylegan2(), z_batch()
    with torch.no_grad():
        const = model(z, noise_mode="const")
        assert torch.equal(const, model(z, noise_mode="const"))
        explicit = [lay.noise_const for lay in model.layers.values()]
        assert torch.equal(const, model(z, noise=explicit))
        assert not torch.allclose(const, model(z, noise_mode="none"))
        a = model(z, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, model(z, generator=torch.Generator().manual_seed(3)))
        assert not torch.allclose(a, const)
        model.noise_mode = "const"
        assert torch.equal(model(z), const)
    with pytest.raises(ValueError, match="noise_mode"):
        model(z, noise_mode="fixed")
    with pytest.raises(ValueError, match="one per layer"):
        model(z, noise=explicit[:2])


def test_truncation_pulls_toward_w_avg() -> None:
    model, z = tiny_stylegan2(), z_batch()
    w = model.mapping(z)  # [B, D]
    ws = model.truncate(w, 0.0)
    assert torch.equal(ws, model.mapping.w_avg.expand_as(ws))
    half = model.truncate(w, 0.5, cutoff=2)
    assert torch.allclose(half[:, :2], model.mapping.w_avg + 0.5 * (w[:, None] - model.mapping.w_avg))
    assert torch.equal(half[:, 2:], w[:, None].expand(-1, 4, -1))
    with torch.no_grad():
        direct = model(z, truncation=0.5, truncation_cutoff=2, noise_mode="none")
        via_ws = model(half, input_is_w=True, noise_mode="none")
    assert torch.equal(direct, via_ws)


def test_forward_is_the_documented_composition_and_taps_see_keys_and_values() -> None:
    model = tiny_stylegan2(dtype=torch.float64)
    conv = model.editable_layers()["layer5"]
    seen: dict[str, torch.Tensor] = {}
    conv.register_forward_hook(lambda _m, args, _out: seen.update(x=args[0]))
    conv.style_tap.register_forward_hook(lambda _m, _a, out: seen.update(s=out))
    conv.key_tap.register_forward_hook(lambda _m, _a, out: seen.update(keys=out))
    conv.value_tap.register_forward_hook(lambda _m, _a, out: seen.update(values=out))
    z = z_batch(dtype=torch.float64)
    ws = model.truncate(model.mapping(z))
    with torch.no_grad():
        model(ws, input_is_w=True, noise_mode="none")
        s = conv.style(ws[:, model.ws_index("layer5")])  # [B, I]
        keys = conv.modulated_input(seen["x"], s)
        w_eff = conv.effective_weight()
        values = conv.conv_value(keys, w_eff, conv.demodulation(w_eff, s))
    assert seen["keys"].shape == (2, 12, 8, 8) and seen["values"].shape == (2, 8, 16, 16)
    assert torch.equal(s, seen["s"])
    assert torch.equal(keys, seen["keys"])
    assert torch.equal(values, seen["values"])
    assert torch.equal(w_eff, conv.weight * conv.scale)
    assert conv.scale == pytest.approx(1 / math.sqrt(12 * 9))


def test_value_tap_hook_can_replace_values() -> None:
    model, z = tiny_stylegan2(), z_batch()
    with torch.no_grad():
        base = model(z, noise_mode="const")
        hook = model.layers["layer4"].conv.value_tap.register_forward_hook(lambda _m, _a, out: out * 0)
        zeroed = model(z, noise_mode="const")
        hook.remove()
    assert not torch.allclose(base, zeroed)
    assert torch.equal(base, model(z, noise_mode="const"))


def test_demodulation_gives_unit_norm_filters() -> None:
    model = tiny_stylegan2(dtype=torch.float64)
    conv = model.layers["layer4"].conv
    s = conv.style(model.mapping(z_batch(dtype=torch.float64)))  # [B, I]
    w_eff = conv.effective_weight()
    d = conv.demodulation(w_eff, s)  # [B, O]
    per_sample = w_eff[None] * s[:, None, :, None, None] * d[:, :, None, None, None]
    norms = per_sample.square().sum(dim=(2, 3, 4)).sqrt()
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert model.to_rgbs["rgb8"].conv.demodulation(w_eff, s) is None


@pytest.mark.parametrize("up", [False, True])
def test_conv_value_is_linear_in_the_weight(up: bool) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv(5, 4, 3, 8, up=up).double()
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    w1, w2 = torch.randn(2, 4, 5, 3, 3, dtype=torch.float64)
    combo = conv.conv_value(x, 2 * w1 - 3 * w2)
    assert combo.shape == (2, 4, 12, 12) if up else (2, 4, 6, 6)
    assert torch.allclose(combo, 2 * conv.conv_value(x, w1) - 3 * conv.conv_value(x, w2), atol=1e-12)


def test_up_layer_keeps_a_constant_signal_constant() -> None:
    """Centre tap 1, constant input: transposed conv + gain-4 blur must give 1 away from the border."""
    conv = ModulatedConv(1, 1, 3, 4, up=True, demodulate=False).double()
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0
    out = conv.conv_value(torch.ones(1, 1, 6, 6, dtype=torch.float64), weight)  # [1, 1, 12, 12]
    assert torch.allclose(out[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8, dtype=torch.float64))
    img = upsample_2x(torch.ones(1, 2, 5, 5, dtype=torch.float64), blur_kernel(4.0).double())
    assert img.shape == (1, 2, 10, 10)
    assert torch.allclose(img[..., 2:-2, 2:-2], torch.ones(1, 2, 6, 6, dtype=torch.float64))


def test_flavors_differ_only_in_the_demodulation_epsilon() -> None:
    ros, nv = tiny_stylegan2(flavor="rosinality"), tiny_stylegan2(flavor="nvlabs")
    nv.load_state_dict(ros.state_dict())
    z = z_batch()
    with torch.no_grad():
        diff = (ros(z, noise_mode="const") - nv(z, noise_mode="const")).abs().max()
    assert 0 <= diff < 1e-5


def test_float64_and_config_round_trip() -> None:
    model = tiny_stylegan2(dtype=torch.float64)
    assert model(z_batch(dtype=torch.float64), noise_mode="const").dtype == torch.float64
    cfg = model.config
    assert StyleGAN2Config.from_dict(cfg.to_dict()) == cfg
    assert StyleGAN2Config(size=64).channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512}
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(size=48)
    with pytest.raises(ValueError, match="channels"):
        StyleGAN2Config(size=16, channels={4: 8, 8: 8})
    with pytest.raises(ValueError, match="flavor"):
        StyleGAN2Config(size=16, flavor="tf")
