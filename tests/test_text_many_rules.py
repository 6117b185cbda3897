"""Text rules at scale and in sequence: many rules in one solve (memory and time linear in the keys),
protection of earlier edits' keys (the constrained optimum, exact to float64 round-off), the
sequential-interference figure, the bench row's measurement, and the errors of preserve_edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_diffusers import tiny_pipeline, tiny_unet
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import olam_edit as oe
from olam_edit.adapters.diffusers.text import cross_attention_layers, rule_keys, text_edit, text_edit_from_embeddings
from olam_edit.errors import BaseMismatchError, RequestError, ShapeMismatchError, UnsupportedModelError
from olam_edit.eval import text_sequential as ts
from olam_edit.eval.attention_stack import TINY_BLOCKS, attention_stack, projection_names
from olam_edit.eval.bench_many_rules import bench_many_rules, peak_mb
from olam_edit.rules.text.fit import RuleProbes
from olam_edit.rules.text.maps import complement_basis, hard_map
from olam_edit.rules.text.solve import prior_matrix, shared_directions, solve_map, solve_text_rule, text_rule_edit

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
FIGURE = Path(ts.__file__).parent / "figures" / "text_sequential.json"


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def _spd(g: torch.Generator, d: int) -> torch.Tensor:
    A = _randn(g, d, d)
    return prior_matrix(A @ A.T + 0.5 * torch.eye(d, dtype=F64), d)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, one_thread):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny_sd_many")).to(F64)


# -- the protected solve is the constrained optimum ------------------------------------------------------
@pytest.mark.parametrize("hard", [False, True])
def test_protected_map_leaves_protected_keys_exactly_and_is_the_constrained_optimum(hard: bool) -> None:
    g, d, w = torch.Generator().manual_seed(61), 24, 0.3
    K, P, Ko, C = _randn(g, 5, d), _randn(g, 3, d), _randn(g, 7, d), _spd(g, d)
    W = _randn(g, 6, d)
    R = W @ _randn(g, 5, d).T  # [6, 5] residuals of the rule keys
    dW = R @ solve_map(K, C, w, hard, preserve=P, protect=Ko).T  # [6, d]
    assert float((dW @ Ko.T).norm() / (W @ Ko.T).norm()) < 1e-13  # exact, to float64 round-off
    N, q = complement_basis(Ko)
    assert q == 7 and N.shape == (d, d - 7)
    if hard:  # dW K = R and dW P = 0 exactly, and C dW^T lies in span[K Ko P] (Lagrange stationarity)
        assert float((dW @ K.T - R).norm() / R.norm()) < 1e-10 and float((dW @ P.T).norm()) < 1e-10 * R.norm()
        B = torch.cat([K, Ko, P]).T  # [d, 15]
        CdW = C @ dW.T  # [d, 6]
        assert float((CdW - B @ torch.linalg.lstsq(B, CdW).solution).norm() / CdW.norm()) < 1e-10
    else:  # the gradient of the soft objective is orthogonal to every feasible direction N
        grad = (dW @ K.T - R) @ K + dW @ (P.T @ P) + w * dW @ C  # [6, d]
        assert float((grad @ N).norm() / (R @ K).norm()) < 1e-10
        A = w * C + K.T @ K + P.T @ P  # the Lagrange form of the same optimum
        AiK, AiKo = torch.linalg.solve(A, K.T), torch.linalg.solve(A, Ko.T)
        X_l = AiK - AiKo @ torch.linalg.solve(Ko @ AiKo, Ko @ AiK)
        assert float((R @ X_l.T - dW).norm() / dW.norm()) < 1e-8


def test_hard_map_is_the_least_squares_of_the_gram_it_never_forms() -> None:
    g, d = torch.Generator().manual_seed(67), 12
    C = _spd(g, d)
    K = torch.cat([_randn(g, 4, d), _randn(g, 1, d).repeat(2, 1)])  # two equal keys: rank-deficient
    KP = torch.cat([K, _randn(g, 2, d)]).T  # [d, 8] with two preserve keys
    L = torch.linalg.cholesky(C)
    Kw = torch.linalg.solve_triangular(L, KP, upper=False)
    Z = torch.linalg.lstsq(Kw.T @ Kw, torch.eye(8, 6, dtype=F64), driver="gelsd").solution
    old = torch.linalg.solve_triangular(L.T, Kw @ Z, upper=True)  # the former [n+m, n+m] route
    new = hard_map(K.T, KP[:, 6:], C)
    assert float((new - old).norm() / old.norm()) < 1e-8


def test_protecting_every_direction_is_refused_and_dimensions_are_checked() -> None:
    g = torch.Generator().manual_seed(71)
    model = nn.ModuleDict({"to_v": nn.Linear(8, 3, bias=False)}).double()
    K, T = _randn(g, 2, 8), _randn(g, 2, 8)
    with pytest.raises(RequestError, match="span all 8 directions") as e:
        solve_text_rule(model, ["to_v"], K, T, protect=_randn(g, 9, 8))
    assert e.value.fix and e.value.got
    with pytest.raises(ShapeMismatchError, match="dimension"):
        solve_text_rule(model, ["to_v"], K, T, protect=_randn(g, 3, 5))


# -- many rules in one solve --------------------------------------------------------------------------
class _Shapes(TorchDispatchMode):
    """Records the largest tensor any torch op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_a_thousand_rules_in_one_solve_grow_with_the_keys_only(tmp_path) -> None:
    g, d, rules = torch.Generator().manual_seed(73), 48, 1000
    model = attention_stack(TINY_BLOCKS, d, seed=3, dtype=F64)
    layers = projection_names(model)
    K = _randn(g, rules * 2, d)  # [2000, 48]: two keys a rule
    T = K + 0.5 * _randn(g, *K.shape)
    with _Shapes() as shapes:
        fit = solve_text_rule(model, layers, K, T, prior_weight=0.1)
    n = K.shape[0]
    assert shapes.largest <= n * d  # nothing [n, n] (4e6), no [d, d] per rule: the keys themselves are the largest
    name = layers[3]
    W = oe.get_handle(model, name).parameter.detach()
    R = W @ (T - K).T
    dW = R @ K @ torch.linalg.inv(0.1 * torch.eye(d, dtype=F64) + K.T @ K)  # TIME's closed form, C = I
    assert float((fit.fits[name].delta.dense(F64) - dW).norm() / dW.norm()) < 1e-6
    X = solve_map(K, torch.eye(d, dtype=F64), 0.1, False)
    assert RuleProbes(K, T, X, shared_directions(X)).stacked is None  # more probe columns than d: the Gram route
    after = float((R - dW @ K.T).norm() / (W @ T.T).norm())
    assert fit.fits[name].residual_after == pytest.approx(after, rel=1e-6)
    assert fit.fits[name].residual_before == pytest.approx(float(R.norm() / (W @ T.T).norm()), rel=1e-9)
    loaded = oe.Edit.load(text_rule_edit(model, fit).save(tmp_path / "many"))  # one edit file of 1,000 rules
    assert torch.equal(loaded.deltas[name].dense(F64), fit.fits[name].delta.dense(F64))


def test_bench_row_measures_peak_memory_and_the_ratio() -> None:
    mb = peak_mb(lambda: torch.ones(16 * 2**20, dtype=torch.float32).add_(1))  # 64 MiB, then freed
    assert 60 < mb < 140
    row = bench_many_rules(quick=True)
    assert row["many_rules_time_ratio"] == pytest.approx(row["many_rules_joint_s"] / row["many_rules_one_by_one_s"])
    assert row["many_rules_keys"] == 80 and row["many_rules_layers"] == 14 and row["many_rules_peak_mb"] >= 0


# -- sequential rules: the figure -----------------------------------------------------------------------
def test_sequential_protection_on_a_tiny_diffusers_unet() -> None:
    """The eval on a real diffusers UNet (the stand-in has its layer names and shapes), 24 rules."""
    unet = tiny_unet(cross_attention_dim=128).double()
    layers = cross_attention_layers(unet)
    assert layers == projection_names(attention_stack(TINY_BLOCKS, 128))
    rules = ts.make_rules(24, 128, 3, seed=77)
    kept = ts.run_sequence(unet, layers, rules, protect=True, first=12)
    free = ts.run_sequence(unet, layers, rules, protect=False, first=12)
    assert kept["drift_max"] < 1e-8 and kept["within_tolerance"] == 1.0  # every earlier key, to 1e-8
    assert free["drift_max"] > 1e-2 and free["within_tolerance"] < kept["within_tolerance"]
    assert all(torch.equal(p, q) for p, q in zip(unet.parameters(), tiny_unet(cross_attention_dim=128).double()
                                                  .parameters(), strict=True))  # the UNet itself untouched


def test_shipped_sequential_figure_meets_the_acceptance_and_reproduces() -> None:
    shipped = json.loads(FIGURE.read_text())
    assert shipped["_meta"]["command"] == "python -m olam_edit.eval.text_sequential --json-out " + str(
        FIGURE.relative_to(FIGURE.parents[3]))
    rows = {(r["variant"], r["protected"]): r for r in shipped["rows"]}
    assert rows["soft", True]["within_tolerance"] >= 0.98 and rows["hard", True]["within_tolerance"] >= 0.98
    assert rows["soft", True]["drift_max"] < 1e-8 and rows["hard", True]["drift_max"] < 1e-8
    model = attention_stack(TINY_BLOCKS, ts.TEXT_DIM, seed=0, dtype=F64)
    data = ts.make_rules(seed=shipped["_meta"]["seed"])
    for protect in (False, True):  # the soft rows re-run in full (the hard ones take as long again)
        got, want = ts.run_sequence(model, projection_names(model), data, protect=protect), rows["soft", protect]
        assert got["within_tolerance"] == want["within_tolerance"]
        for key in ("residual_median", "residual_own_median", "preserve_change_median", "preserve_change_max"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
        assert got["drift_max"] < 1e-8 if protect else got["drift_max"] == pytest.approx(want["drift_max"], rel=1e-6)


# -- preserve_edits on a pipeline ------------------------------------------------------------------------
def test_preserve_edits_keeps_an_earlier_text_edit(pipe, tmp_path) -> None:
    first = text_edit(pipe, "a rose", "a blue rose", prior="identity", hard=True)  # padding off: 4 keys
    K_old = rule_keys(pipe, ["a rose"], ["a blue rose"], padding=False).keys
    names = cross_attention_layers(pipe.unet)
    with oe.edited(pipe, first):
        before = {n: oe.get_handle(pipe.unet, n).module(K_old).detach().clone() for n in names}
        second = text_edit(pipe, "a cat", "a big cat", prior="identity", preserve_edits=[first])
        unprotected = text_edit(pipe, "a cat", "a big cat", prior="identity")
        solver, metrics = second.manifest["solver"], second.manifest["metrics"]
        assert solver["protected_keys"] == 4 and solver["protected_edits"] == [first.fingerprint]
        assert metrics["protected_change"] < 1e-12  # float64 solve
        moved = {}
        for edit in (second, unprotected):
            with oe.edited(pipe, edit), torch.no_grad():
                moved[edit.fingerprint] = max(float((oe.get_handle(pipe.unet, n).module(K_old) - before[n]).norm()
                                                    / before[n].norm()) for n in names)
    assert moved[second.fingerprint] < 1e-6  # float32 factors
    assert moved[unprotected.fingerprint] > 1e3 * moved[second.fingerprint]
    assert "protected_change" not in unprotected.manifest["metrics"]
    assert unprotected.manifest["solver"]["protected_keys"] == 0
    loaded = oe.Edit.load(second.save(tmp_path / "second"))  # its record survives the edit folder
    assert loaded.manifest["solver"]["protected_edits"] == [first.fingerprint]
    assert loaded.fingerprint == second.fingerprint


def test_preserve_edits_refuses_what_it_cannot_protect(pipe, tmp_path) -> None:
    first = text_edit(pipe, "a rose", "a blue rose", prior="identity", padding=False)
    spatial = oe.Edit(first.deltas, {**first.manifest, "recipe": {"kind": "spatial", "layer": "x"}})
    vae = oe.Edit(first.deltas, {**first.manifest, "component": "vae"})
    other = text_edit(tiny_pipeline(tmp_path, seed=1).to(F64), "a rose", "a blue rose", prior="identity")
    raw = text_edit_from_embeddings(pipe, torch.randn(3, 32, dtype=F64), torch.randn(3, 32, dtype=F64))
    cases = [("not-an-edit", RequestError, "takes olam-edit Edits"), (spatial, RequestError, "not a text edit"),
             (vae, BaseMismatchError, "another model"), (other, BaseMismatchError, "fingerprint"),
             (raw, RequestError, "protect=")]
    for bad, error, message in cases:
        with pytest.raises(error, match=message) as e:
            text_edit(pipe, "a cat", "a big cat", prior="identity", preserve_edits=[bad])  # type: ignore[list-item]
        assert e.value.got is not None or e.value.expected is not None
    with pytest.raises(UnsupportedModelError, match="needs the pipeline"):
        text_edit_from_embeddings(pipe.unet, torch.randn(3, 32), torch.randn(3, 32), preserve_edits=[first])
