"""The closed-form rewrite on Linear, Conv2d and ConvTranspose2d handles (float64 invariants)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import key_map, single_layer

import olam_edit as oe
from olam_edit.memory.solve import objective

KINDS = ["linear", "conv2d", "conv2d_strided", "conv_transpose2d"]


def _setup(kind: str, rank: int = 2):
    model = single_layer(kind)
    h = oe.get_handle(model, "0")
    x = key_map(kind)
    keys = h.keys_of(x)  # [N, in]
    C = oe.SecondMoment(h.key_dim).add(keys).moment()
    D = oe.context_directions(keys[:7], None, C, rank=rank, ridge=0.0)
    return model, h, x, keys, C, D


@pytest.mark.parametrize("kind", KINDS)
def test_exact_recovery_of_known_change(kind: str) -> None:
    _, h, x, _, C, D = _setup(kind)
    w0 = h.effective_weight().detach()
    lam_true = torch.randn(h.lam_of(w0, D).shape, dtype=torch.float64)
    v_star = h.linear_op(x, w0 + h.dense(lam_true, D))
    lam = oe.solve_lambda(oe.Problem(h, x, v_star), D, C, smoothness=0.0)
    assert float((lam - lam_true).norm() / lam_true.norm()) < 1e-10


def _direct_objective(h, x, v_star, lam_flat, lam_shape, D, keys, smooth):
    """The paper's objective written out independently: dense dW, full op, E_k over actual keys."""
    lam = lam_flat.reshape(lam_shape)
    dW = h.dense(lam, D)
    w0 = h.effective_weight().detach()
    fit = (h.linear_op(x, w0 + dW) - v_star).square().sum()
    n_fit = v_star.numel() // (v_star.shape[-1] if h.layout == "linear" else v_star.shape[1])
    if h.layout == "linear":
        per_key = (keys @ dW.T).square().sum(1)
    elif h.layout == "conv2d":
        per_key = torch.einsum("oiyx,ni->noyx", dW, keys).square().flatten(1).sum(1)
    else:
        per_key = torch.einsum("ioyx,ni->noyx", dW, keys).square().flatten(1).sum(1)
    return fit + smooth * n_fit * per_key.mean()


@pytest.mark.parametrize("kind", KINDS)
def test_regularised_solve_equals_direct_minimisation(kind: str) -> None:
    _, h, x, keys, C, D = _setup(kind)
    w0 = h.effective_weight().detach()
    v_star = h.linear_op(x, w0) + torch.randn_like(h.linear_op(x, w0))
    smooth = 0.7
    lam = oe.solve_lambda(oe.Problem(h, x, v_star), D, C, smoothness=smooth)
    shape = lam.shape
    f = lambda z: _direct_objective(h, x, v_star, z, shape, D, keys, smooth)  # noqa: E731
    z0 = torch.zeros(lam.numel(), dtype=torch.float64)
    g = torch.autograd.functional.jacobian(f, z0)
    H = torch.autograd.functional.hessian(f, z0)
    lam_direct = torch.linalg.solve(H, -g).reshape(shape)  # exact minimiser of a quadratic
    assert float((lam - lam_direct).norm() / lam_direct.norm()) < 1e-9
    got = objective(oe.Problem(h, x, v_star), lam, D, C, smooth)
    assert got == pytest.approx(float(f(lam.reshape(-1))), rel=1e-9)


def test_single_key_direction_is_C_inverse_k() -> None:
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(200, 7, generator=g, dtype=torch.float64) @ torch.randn(
        7, 7, generator=g, dtype=torch.float64
    )
    C = oe.SecondMoment(7).add(keys).moment()
    k_star = torch.randn(7, generator=g, dtype=torch.float64)
    D = oe.context_directions(k_star[None], None, C, rank=1, ridge=0.0)
    d = torch.linalg.solve(C, k_star)
    d = d / d.norm()
    assert D.shape == (1, 7)
    assert torch.allclose(D[0], d * torch.sign(D[0] @ d), atol=1e-12)
    assert torch.allclose(oe.single_key_direction(k_star, C), d, atol=1e-12)


def test_directions_are_orthonormal_and_rank_is_what_was_asked() -> None:
    _, h, x, keys, C, _ = _setup("conv2d")
    for r in (1, 2, 3):
        D = oe.context_directions(keys[:20], torch.rand(20, dtype=torch.float64), C, rank=r)
        assert D.shape == (r, h.key_dim)
        assert torch.allclose(D @ D.T, torch.eye(r, dtype=torch.float64), atol=1e-12)
        delta = oe.Delta(torch.randn(h.lam_of(h.effective_weight().detach(), D).shape), D.float(), h.layout)
        mat = delta.dense(torch.float64).transpose(0, 1).reshape(h.key_dim, -1)  # [in, out*taps]
        assert int(torch.linalg.matrix_rank(mat)) == r


def test_generalised_eigvectors_maximise_context_energy() -> None:
    """span(D) = top-r generalised eigenvectors of (S, C): compare with scipy-free eigh of C^-1/2 S C^-1/2."""
    _, h, x, keys, C, _ = _setup("linear")
    ctx = keys[:30]
    D = oe.context_directions(ctx, None, C, rank=2, ridge=0.0)
    evals, evecs = torch.linalg.eigh(C)
    Ci = evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # C^-1/2
    _, U = torch.linalg.eigh(Ci @ (ctx.T @ ctx) @ Ci)
    X = Ci @ U[:, -2:]  # [d, 2] generalised eigenvectors
    Q, _ = torch.linalg.qr(X)
    assert torch.allclose(D.T @ D, Q @ Q.T, atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv_transpose2d"])
def test_keys_outside_D_give_bit_identical_outputs(kind: str) -> None:
    """Keys k with D k = 0 termwise (C block-diagonal, context in the first block) are untouched."""
    model = single_layer(kind)
    h = oe.get_handle(model, "0")
    x = key_map(kind)
    keys = h.keys_of(x).clone()
    keys[:, :3] = 0
    ctx = h.keys_of(key_map(kind, seed=5)).clone()[:10]
    ctx[:, 3:] = 0
    C = oe.SecondMoment(6).add(torch.cat([keys, ctx * 3])).moment()
    D = oe.context_directions(ctx, None, C, rank=1, ridge=0.0)
    assert bool((D[:, 3:] == 0).all())
    x_out = x.clone()
    if kind == "linear":
        x_out[:, :3] = 0
    else:
        x_out[:, :3] = 0
    before = model(x_out)
    lam = torch.randn(h.lam_of(h.effective_weight().detach(), D).shape)
    edit = oe.Edit.create(model, {"0": oe.Delta(lam, D.float(), h.layout)})
    with oe.edited(model, edit):
        after = model(x_out)
        assert not torch.equal(model(x), before) or kind == "linear"
    assert torch.equal(before, after)


def test_erase_zeroes_the_response_on_span_D() -> None:
    model, h, x, keys, C, D = _setup("conv2d", rank=1)
    edit = oe.Edit.create(model, {"0": oe.erase_delta(h, D)})
    k_in = D[0][None, :, None, None].expand(1, -1, 3, 3).contiguous()  # every pixel's key is D's row
    with oe.edited(model, edit), torch.no_grad():
        out = model(k_in)
    with torch.no_grad():
        assert float(out.abs().max()) < 1e-6
        assert float(model(k_in).abs().max()) > 1e-2


def test_smoothness_shrinks_the_update() -> None:
    _, h, x, _, C, D = _setup("conv2d")
    w0 = h.effective_weight().detach()
    v_star = h.linear_op(x, w0) + torch.randn_like(h.linear_op(x, w0))
    norms = [
        float(oe.solve_lambda(oe.Problem(h, x, v_star), D, C, smoothness=s).norm()) for s in (0.0, 1.0, 100.0)
    ]
    assert norms[0] > norms[1] > norms[2]


def test_rewrite_layer_reports_norm_and_residual() -> None:
    _, h, x, _, C, D = _setup("conv_transpose2d")
    w0 = h.effective_weight().detach()
    v_star = h.linear_op(x, w0) + 0.1 * torch.randn_like(h.linear_op(x, w0))
    delta, report = oe.rewrite_layer(oe.Problem(h, x, v_star), D, C, smoothness=0.1)
    assert report.residual_after < report.residual_before
    assert report.relative_norm == pytest.approx(
        float(delta.dense(torch.float64).norm() / w0.norm()), rel=1e-6
    )
    assert h.parameter.dtype == torch.float64  # factors follow the layer: float64 here, float32 for float32 layers
    assert delta.lam.dtype == delta.directions.dtype == torch.float64 and delta.rank == 2
    with torch.no_grad():
        h.parameter.data = h.parameter.data.float()
    delta32, _ = oe.rewrite_layer(oe.Problem(h, x, v_star), D, C, smoothness=0.1)
    assert delta32.lam.dtype == delta32.directions.dtype == torch.float32


def test_conv_delta_response_matches_dense_weight_change() -> None:
    for kind in ("conv2d_strided", "conv_transpose2d"):
        _, h, x, _, _, D = _setup(kind)
        lam = torch.randn(h.lam_of(h.effective_weight().detach(), D).shape, dtype=torch.float64)
        direct = h.linear_op(x, h.dense(lam, D))
        assert torch.allclose(h.delta_response(x, lam, D), direct, atol=1e-12)
    m = single_layer("conv2d")
    assert torch.allclose(
        oe.get_handle(m, "0").linear_op(key_map("conv2d"), m[0].weight),
        F.conv2d(key_map("conv2d"), m[0].weight, padding=1),
    )


def test_bad_solver_inputs_raise_specific_errors() -> None:
    from olam_edit.errors import EmptySelectionError, NonFiniteError, SingularStatisticError

    _, h, x, keys, C, D = _setup("conv2d")
    w0 = h.effective_weight().detach()
    v = h.linear_op(x, w0)
    v[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="target"):
        oe.Problem(h, x, v)
    with pytest.raises(EmptySelectionError, match="too few keys"):
        oe.context_directions(keys[:3], torch.zeros(3, dtype=torch.float64), C)
    with pytest.raises(EmptySelectionError, match="at least 3"):
        oe.context_directions(keys[:2], None, C, rank=3)
    singular = torch.zeros(6, 6, dtype=torch.float64)
    singular[0, 0] = 1
    with pytest.raises(SingularStatisticError, match="ridge"):
        oe.context_directions(keys[:3], None, singular, ridge=0.0)
    with pytest.raises(oe.errors.ShapeMismatchError, match="do not fit"):
        oe.context_directions(keys[:3, :4], None, C)
    with pytest.raises(oe.errors.ShapeMismatchError, match="target values"):
        oe.Problem(h, x, v[..., :2])


def test_unsupported_layers_are_named() -> None:
    from torch import nn

    from olam_edit.errors import UnsupportedLayerError

    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, padding_mode="reflect", padding=1),
                          nn.BatchNorm2d(4))
    with pytest.raises(UnsupportedLayerError, match=r"'0'.*groups=2"):
        oe.get_handle(model, "0")
    with pytest.raises(UnsupportedLayerError, match="padding_mode='reflect'"):
        oe.get_handle(model, "1")
    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d"):
        oe.get_handle(model, "2")
    assert oe.list_layers(model) == []  # listed layers are the editable ones only


def test_reference_iterative_fit_stays_in_span_D_and_lowers_the_l1_loss() -> None:
    from olam_edit.eval.iterative import fit_reference

    _, h, x, _, C, D = _setup("conv2d", rank=1)
    w0 = h.effective_weight().detach()
    lam_true = torch.randn(h.lam_of(w0, D).shape, dtype=torch.float64)
    v_star = h.linear_op(x, w0 + h.dense(lam_true, D))
    problem = oe.Problem(h, x, v_star)
    lam = fit_reference(problem, D, steps=201, lr=0.05)
    l1 = lambda lm: float((h.linear_op(x, w0 + h.dense(lm, D)) - v_star).abs().mean())  # noqa: E731
    assert l1(lam) < 0.5 * l1(torch.zeros_like(lam))
    assert lam.shape == lam_true.shape  # the result is W0 + dense(lam, D): rank r by construction
