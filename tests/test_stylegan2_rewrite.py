"""StyleGAN2 through the unchanged core: the modulated-conv handle, the Generator adapter, rewrite,
apply / revert / preview and edit files, on a tiny seeded 16x16 generator built in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import olam_edit as oe
import olam_edit.memory.solve as core_solve
from olam_edit.adapters import load_generator
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.files import save_stylegan2
from olam_edit.adapters.stylegan2.generator import StyleGAN2Adapter, load_generator_from_path
from olam_edit.adapters.stylegan2.handle import ModConvHandle
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.errors import RequestError
from olam_edit.memory.solve import _sqrt_psd, smoothness_matrix
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

STYLE_DIM = 16  # equalised-lr scale 1/4: a stored affine weight of 4 is exactly 1 in effect
MID, UP = "layers.layer4.conv", "layers.layer5.conv"  # 8x8 keys; 8x8 keys -> 16x16 values


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> StyleGAN2Generator:
    """16x16, 16 channels, random biases and noise; output channels of the 3x3 convs rescaled by
    e^N(0,1) so that the demodulation differs a lot between output channels."""
    torch.manual_seed(seed)
    config = StyleGAN2Config(size=16, style_dim=STYLE_DIM, n_mlp=2, channels={4: 16, 8: 16, 16: 16})
    model = StyleGAN2Generator(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "noise_strength")):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "affine" in name else 0.0))
            elif name.endswith("conv.weight") and p.shape[-1] == 3:
                p.mul_(torch.randn(p.shape[0], 1, 1, 1).exp())
        model.mapping.w_avg.normal_()
    return model.eval().requires_grad_(False).to(dtype)


def tiny_gen(dtype: torch.dtype = torch.float32) -> StyleGAN2Adapter:
    return StyleGAN2Adapter(tiny_model(dtype=dtype), name="tiny-stylegan2")


def box(y0: int, y1: int, x0: int, x1: int, size: int = 16) -> np.ndarray:
    m = np.zeros((size, size))
    m[y0:y1, x0:x1] = 1.0
    return m


def make_request(layer: str, seed_copy: int = 3, seed_paste: int = 4, context: list[Selection] | None = None
            ) -> EditRequest:
    return EditRequest(layer=layer, copy=Selection(seed_copy, box(4, 8, 4, 8)),
                       paste=Selection(seed_paste, box(8, 12, 6, 10)), context=context or [], rank=1)


def taps(conv: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """Record the conv's input x, style s, keys and values of the next forward."""
    rec: dict[str, torch.Tensor] = {}

    def keep(key: str):
        return lambda _m, _a, out: rec.__setitem__(key, out)

    hooks = [conv.register_forward_pre_hook(lambda _m, args: rec.__setitem__("x", args[0])),
             conv.style_tap.register_forward_hook(keep("s")), conv.key_tap.register_forward_hook(keep("k")),
             conv.value_tap.register_forward_hook(keep("v"))]
    return rec, hooks


# -- (a) the handle ------------------------------------------------------------------------------


def test_layers_are_found_by_the_core() -> None:
    gen = tiny_gen()
    assert [n for n in oe.list_layers(gen.model) if n.startswith("layers.")] == [
        f"layers.layer{n}.conv" for n in range(2, 7)]
    h = oe.get_handle(gen.model, gen.layer_name("layer5"))
    assert isinstance(h, ModConvHandle) and h.name == UP
    assert (h.layout, h.kind, h.value_ratio, h.key_dim, h.taps) == ("conv2d", "stylegan2_modconv", 2.0, 16, 9)
    assert oe.get_handle(gen.model, MID).value_ratio == 1.0
    assert torch.equal(h.parameter, gen.model.layers.layer5.conv.weight)
    w = h.effective_weight()
    assert w.dtype == torch.float64 and torch.equal(h.stored_from_effective(w).float(), h.parameter)


@pytest.mark.parametrize("layer", [MID, UP, "to_rgbs.rgb8.conv"])
def test_keys_are_modulated_inputs_and_linear_op_is_the_networks_value(layer: str) -> None:
    gen = tiny_gen(torch.float64)
    h = gen.handle(layer)
    rec, hooks = taps(h.module)
    z = gen.latents([3, 4])
    gen.model(z)  # the whole forward (keys_and_values stops at the layer)
    for hook in hooks:
        hook.remove()
    x, v = gen.keys_and_values(layer, z)
    assert torch.equal(x, rec["x"] * rec["s"][:, :, None, None])  # keys = s (.) x, per pixel
    assert torch.equal(h.linear_op(x, h.effective_weight()), rec["v"])  # bit for bit in float64
    assert torch.equal(v, rec["v"])


def test_frozen_demodulation_makes_the_op_linear() -> None:
    gen = tiny_gen(torch.float64)
    h = gen.handle(UP)
    x, v = gen.keys_and_values(UP, gen.latents([3, 4]))
    g = torch.Generator().manual_seed(0)
    w0 = h.effective_weight()
    D = torch.linalg.qr(torch.randn(16, 2, generator=g, dtype=torch.float64))[0].T  # [2, 16]
    lam = 0.3 * torch.randn(16, 2, 3, 3, generator=g, dtype=torch.float64)
    w1 = w0 + h.dense(lam, D)
    assert not torch.allclose(h.linear_op(x, 2 * w1), 2 * h.linear_op(x, w1))  # demodulation follows w
    h.freeze(w1)
    assert torch.allclose(h.linear_op(x, 2 * w1), 2 * h.linear_op(x, w1), rtol=0, atol=1e-12)
    change = h.linear_op(x, w1) - h.linear_op(x, w0)
    assert torch.allclose(h.delta_response(x, lam, D), change, rtol=0, atol=1e-12)
    scaled = h.output_scale(x)[:, :, None, None] * h.unscaled_delta_response(x, lam, D)
    assert torch.allclose(h.delta_response(x, lam, D), scaled, rtol=0, atol=1e-15)
    h.freeze(None)
    assert torch.equal(h.linear_op(x, w0), v)


def test_keys_of_unknown_origin_are_refused() -> None:
    gen = tiny_gen()
    h = gen.handle(MID)
    x, v = gen.keys_and_values(MID, gen.latents([3]))
    assert torch.allclose(h.values_of(x.double()), v.double(), atol=1e-5)  # a float64 copy is still found
    with pytest.raises(RequestError, match="style is unknown"):
        h.values_of(x + 1)


# -- (b) the rewrite -----------------------------------------------------------------------------


def _exact_frozen_solve(h: ModConvHandle, rule, D: torch.Tensor, C: torch.Tensor, w: torch.Tensor,
                        smooth: float) -> torch.Tensor:
    """Lambda minimising the objective with the demodulation frozen at ``w``, one output channel at a
    time (each channel's rows scaled by its own demodulation): written independently of the core."""
    x, m = rule.x_paste, rule.fit_mask.reshape(-1) > 0
    d = h.module.demodulation(w, h.style_of(x))[0]  # [O]
    u0 = h.module.conv_value(x, h.effective_weight())[0].flatten(1)  # [O, P] undemodulated base values
    Dx = torch.einsum("ri,bihw->brhw", D, x)  # [1, r, h, w]
    J = D.shape[0] * 9
    basis = torch.stack([h.module.conv_value(Dx, e.reshape(1, -1, 3, 3))[0, 0].reshape(-1)
                         for e in torch.eye(J, dtype=torch.float64)], 1)  # [P, J]
    pen = (smooth * float(m.sum())) ** 0.5 * _sqrt_psd(smoothness_matrix(D, C, 9))  # [J, J]
    coefs = []
    for o, target in enumerate(rule.v_star[0].flatten(1)):
        A = torch.cat([d[o] * basis[m], pen])
        rhs = torch.cat([target[m] - d[o] * u0[o][m], torch.zeros(J, dtype=torch.float64)])
        coefs.append(torch.linalg.lstsq(A, rhs[:, None]).solution[:, 0])
    return torch.stack(coefs).reshape(-1, D.shape[0], 3, 3)  # [O, r, 3, 3]


def _true_residual(h: ModConvHandle, rule, w: torch.Tensor) -> float:
    h.freeze(None)
    r = h.linear_op(rule.x_paste, w) - rule.v_star  # the network's own values at weight w
    return float((r.square().sum(1) * rule.fit_mask).sum().sqrt())


@pytest.fixture(scope="module", params=[MID, UP])
def rewritten(request, tmp_path_factory):
    """A rewrite through the unchanged Rewriter (statistics collected over 20 samples)."""
    gen, layer = tiny_gen(), request.param
    rw = Rewriter(gen, layer, stats_samples=20, cache_dir=str(tmp_path_factory.mktemp("stats")), progress=False)
    req = make_request(layer)
    return gen, rw, req, rw.rewrite(req)


def test_rewrite_improves_on_the_first_step_and_matches_the_network(rewritten) -> None:
    gen, rw, req, edit = rewritten
    h, rule, rep = rw.handle, rw.rule_tensors(req), rw.last_report
    delta = edit.deltas[rw.layer]
    D, w0 = delta.directions.double(), h.effective_weight()
    assert edit.manifest["layers"][rw.layer]["kind"] == "stylegan2_modconv"
    h.freeze(w0)  # the first closed-form step: demodulation held at W0
    lam1 = oe.solve_lambda(oe.Problem(h, rule.x_paste, rule.v_star, rule.fit_mask), D, rw.C, rw.smoothness)
    first = _true_residual(h, rule, w0 + h.dense(lam1, D))
    assert rep.residual_after <= first * (1 + 1e-6) and rep.residual_after < rep.residual_before
    assert 0 < rep.relative_norm < 1
    with oe.edited(gen.model, edit):  # the float32 network after the edit agrees with the solver
        _, v1 = gen.keys_and_values(rw.layer, gen.latents([req.paste.seed]))
    got = float(((v1.double() - rule.v_star).square().sum(1) * rule.fit_mask).sum().sqrt())
    assert got == pytest.approx(rep.residual_after, rel=1e-4)


def test_rewrite_reaches_the_frozen_demodulation_fixed_point(rewritten) -> None:
    _, rw, req, edit = rewritten
    h, rule, delta = rw.handle, rw.rule_tensors(req), edit.deltas[rw.layer]
    lam, D = delta.lam.double(), delta.directions.double()
    w_final = h.effective_weight() + h.dense(lam, D)
    lam_again = _exact_frozen_solve(h, rule, D, rw.C, w_final, rw.smoothness)
    assert float((lam_again - lam).norm() / lam.norm()) < 2e-2
    h.freeze(w_final)  # the objective at the solution, demodulation at the solution's own weight
    at_solution = core_solve.objective(oe.Problem(h, rule.x_paste, rule.v_star, rule.fit_mask), lam, D, rw.C,
                                       rw.smoothness)
    h.freeze(None)
    assert rw.last_report.objective == pytest.approx(at_solution, rel=1e-4)


# -- (c) keys outside the rule -------------------------------------------------------------------


def _split_styles(gen: StyleGAN2Adapter, layer: str, seed_a: int, seed_b: int, n_a: int) -> None:
    """Make the styles of ``layer`` exactly 0 on channels [:n_a] for seed_a and on [n_a:] for seed_b.

    s_i = w_i - w_i(seed) with an affine of stored weight 4 (effective 1) on the diagonal: every
    product but one is an exact 0, so s_i(seed) is an exact 0 whatever the summation order.
    """
    model, conv = gen.model, gen.handle(layer).module
    idx = model.ws_index(layer.split(".")[1])
    with torch.no_grad():
        w = {s: model.truncate(model.mapping(gen.latents([s])), gen.truncation)[0, idx] for s in (seed_a, seed_b)}
        conv.affine.weight.zero_()
        conv.affine.weight.diagonal().fill_(1.0 / conv.affine.scale)
        conv.affine.bias.copy_(-torch.cat([w[seed_a][:n_a], w[seed_b][n_a:]]))


@pytest.mark.parametrize("layer", [MID, UP])
def test_images_whose_keys_are_C_orthogonal_to_D_are_bit_identical(layer: str) -> None:
    """seed 11's keys live on channels [8:], the rule's (seed 12) on [:8]; C is block-diagonal, so
    D k = 0 exactly for seed 11 and its demodulation sees s_i = 0 wherever dW != 0."""
    gen, outside, inside, n_a = tiny_gen(), 11, 12, 8
    _split_styles(gen, layer, outside, inside, n_a)
    x_out, _ = gen.keys_and_values(layer, gen.latents([outside]))
    x_in, _ = gen.keys_and_values(layer, gen.latents([inside]))
    assert bool((x_out[:, :n_a] == 0).all()) and bool((x_in[:, n_a:] == 0).all())
    stats = oe.SecondMoment(16).add(gen.handle(layer).keys_of(torch.cat([x_out, x_in])))
    rw = Rewriter(gen, layer, stats=stats, progress=False)
    req = make_request(layer, inside, inside, context=[Selection(inside, box(8, 12, 6, 10))])
    edit = rw.rewrite(req)
    assert bool((edit.deltas[layer].directions[:, n_a:] == 0).all())
    before = gen.images([outside, inside, 5], batch_size=1)
    with oe.edited(gen.model, edit):
        after = gen.images([outside, inside, 5], batch_size=1)
    assert torch.equal(after[0], before[0])
    assert not torch.allclose(after[1], before[1]) and not torch.allclose(after[2], before[2])


def test_keys_with_D_k_zero_change_only_through_the_demodulation() -> None:
    """With D k = 0 but a non-zero style on D's channels, dW changes ||W[o] (.) s||: each output
    channel's values are rescaled by d(W1, s) / d(W0, s), which is why the test above needs s = 0
    there for bit-identical images."""
    gen, n_a = tiny_gen(torch.float64), 8
    conv = gen.handle(MID).module
    gate = conv.register_forward_pre_hook(lambda _m, args: (torch.cat([0 * args[0][:, :n_a], args[0][:, n_a:]], 1),
                                                            *args[1:]))
    rec, hooks = taps(conv)
    z = gen.latents([5])
    gen.model(z)
    v0, s = rec["v"], rec["s"]
    assert bool((rec["k"][:, :n_a] == 0).all()) and bool((s[:, :n_a] != 0).all())
    D = torch.zeros(1, 16, dtype=torch.float64)
    D[0, :n_a] = 1 / n_a**0.5
    edit = oe.Edit.create(gen.model, {MID: oe.Delta(0.5 * torch.randn(16, 1, 3, 3, dtype=torch.float64), D,
                                                    "conv2d")})
    h = gen.handle(MID)
    w0 = h.effective_weight()
    with oe.edited(gen.model, edit):
        gen.model(z)
        v1, w1 = rec["v"], h.effective_weight()
    for hook in [gate, *hooks]:
        hook.remove()
    ratio = conv.demodulation(w1, s) / conv.demodulation(w0, s)  # [1, O]
    assert float((ratio - 1).abs().max()) > 1e-2
    assert torch.allclose(v1, v0 * ratio[:, :, None, None], rtol=1e-12, atol=1e-14)


# -- (d) apply / revert / preview and (e) edit files ---------------------------------------------


def test_apply_revert_is_bit_exact_and_preview_matches_apply(rewritten, tmp_path) -> None:
    gen, rw, _, edit = rewritten
    state = {k: v.clone() for k, v in gen.model.state_dict().items()}
    z = gen.latents([4, 7])
    base, previewed = gen.render(z), gen.render(z, edit)
    assert all(torch.equal(v, state[k]) for k, v in gen.model.state_dict().items())  # preview mutates nothing
    oe.apply_edit(gen.model, edit)
    changed = [k for k, v in gen.model.state_dict().items() if not torch.equal(v, state[k])]
    assert changed == [f"{rw.layer}.weight"]
    assert torch.equal(gen.render(z), previewed) and not torch.allclose(previewed, base)
    oe.revert_edit(gen.model, edit)
    assert all(torch.equal(v, state[k]) for k, v in gen.model.state_dict().items())
    assert torch.equal(gen.render(z), base)


def test_saved_edit_applies_identically(rewritten, tmp_path) -> None:
    gen, rw, _, edit = rewritten
    loaded = oe.Edit.load(edit.save(tmp_path / "edit"))
    z = gen.latents([4, 7])
    with oe.edited(gen.model, edit):
        a = gen.render(z)
    with oe.edited(gen.model, loaded):
        b = gen.render(z)
    assert torch.equal(a, b) and loaded.fingerprint == edit.fingerprint


# -- the Generator adapter -------------------------------------------------------------------------


def test_statistics_stop_at_the_layer_and_key_on_sampler_settings(tmp_path) -> None:
    gen = tiny_gen()
    sm = gen.stats(MID, samples=6, batch_size=3, cache_dir=tmp_path, progress=False)
    x, _ = gen.keys_and_values(MID, gen.latents(range(1_000_003, 1_000_006)))
    x2, _ = gen.keys_and_values(MID, gen.latents(range(1_000_006, 1_000_009)))
    keys = gen.handle(MID).keys_of(torch.cat([x, x2]))
    assert sm.count == keys.shape[0]
    assert torch.allclose(sm.moment(), oe.SecondMoment(16).add(keys).moment(), rtol=1e-6, atol=1e-9)
    gen.truncation = 0.7
    other = gen.stats(MID, samples=6, batch_size=3, cache_dir=tmp_path, progress=False)
    assert other.manifest["fingerprint"] != sm.manifest["fingerprint"]
    assert other.manifest["sampler"]["truncation"] == 0.7 and other.manifest["sampler"]["noise_mode"] == "const"


def test_load_generator_from_path(tmp_path) -> None:
    folder = save_stylegan2(tiny_model(), tmp_path / "sg2")
    gen = load_generator_from_path(folder)
    assert isinstance(gen, StyleGAN2Adapter) and gen.name == str(folder)
    assert gen.sampler_settings() == {"truncation": 0.5, "truncation_cutoff": None, "noise_mode": "const"}
    assert gen.sample_latent(torch.Generator().manual_seed(0)).shape == (STYLE_DIM,)
    img = gen.images([0, 1])
    assert img.shape == (2, 3, 16, 16) and float(img.abs().max()) <= 1
    assert torch.equal(img, gen.images([0, 1]))
    via_spec = load_generator(folder, truncation=0.7)
    assert via_spec.truncation == 0.7 and not torch.equal(via_spec.images([0, 1]), img)
    with pytest.raises(RequestError):
        gen.noise_mode = "sometimes"

