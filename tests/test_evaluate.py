"""Evaluation: each measure against a hand computation, held-out seeds, and the paper's comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_dcgan

from olam_edit.adapters import TorchGenerator
from olam_edit.errors import RequestError
from olam_edit.eval.evaluate import evaluate, heldout_seeds, ratio_standard_error, score
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter


def test_measures_match_a_hand_computation() -> None:
    before = torch.zeros(2, 3, 4, 4)
    after = before.clone()
    after[0, :, 0, 0] = 0.6  # image 0: one region pixel changes by 0.6
    after[0, :, 3, 3] = 0.3  # ... and one outside pixel by 0.3
    after[1, :, 3, 3] = 0.9  # image 1: only an outside pixel changes
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, 0:2, 0:2] = True  # 4 region pixels, 12 outside pixels per image
    s = score(before, after, region, threshold=0.1)
    assert s.in_region == pytest.approx(0.6 / 8)  # 8 region pixels in all
    assert s.collateral == pytest.approx((0.3 + 0.9) / 24)
    assert s.ratio == pytest.approx((0.6 / 8) / (1.2 / 24))
    # image 0: in 0.6/4 = 0.15, out 0.3/12 = 0.025 -> 0.125 > 0.1 counts; image 1: in 0 -> does not
    assert s.generality == pytest.approx(0.5)


def test_heldout_seeds_exclude_the_request() -> None:
    mask = np.zeros((16, 16))
    mask[4:8, 4:8] = 1
    req = EditRequest(layer="3", copy=Selection(10_003, mask), paste=Selection(10_005, mask),
                      context=[Selection(10_010, mask)])
    held = heldout_seeds(req, range(10_000, 10_020))
    assert not set(held) & {10_003, 10_005, 10_010} and len(held) == 17
    with pytest.raises(RequestError, match="held-out"):
        heldout_seeds(req, [10_003, 10_005])


def _tiny_rule() -> tuple[TorchGenerator, EditRequest, Rewriter, torch.Tensor]:
    """A tiny seeded DCGAN, one rule on its layer '3' (one box for copy, paste and context), its
    Rewriter and the box as the evaluation region ``[16, 16]``."""
    gen = TorchGenerator(tiny_dcgan(dtype=torch.float64), (8, 1, 1), name="tiny")
    mask = np.zeros((16, 16))
    mask[4:10, 4:10] = 1
    req = EditRequest(layer="3", copy=Selection(1, mask), paste=Selection(2, mask), context=[Selection(3, mask)])
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[4:10, 4:10] = True
    return gen, req, Rewriter(gen, "3", progress=False, stats_samples=40), region


def test_evaluate_on_a_tiny_model_uses_only_heldout_seeds() -> None:
    gen, req, rw, region = _tiny_rule()
    rendered: list[list[int]] = []
    original = gen.images
    gen.images = lambda seeds, *a, **k: (rendered.append(list(seeds)), original(seeds, *a, **k))[1]
    report = evaluate(gen, req, seeds=range(0, 12), region=region, rewriter=rw, progress=False,
                      steps={"finetune_layer": 20, "finetune_all": 20})
    assert report.seeds == [0, *range(4, 12)]
    assert all(not {1, 2, 3} & set(s) for s in rendered)
    assert set(report.methods) == {"rewrite", "finetune_layer", "finetune_all"}
    edit = rw.rewrite(req)
    with torch.no_grad():
        before, after = gen.images(report.seeds), gen.images(report.seeds, edit)
    expect = score(before, after, region.expand(9, 16, 16))
    assert report.methods["rewrite"].in_region == pytest.approx(expect.in_region)
    assert report.region_fraction == pytest.approx(36 / 256)


def test_a_strength_scales_the_rewrite_it_evaluates() -> None:
    gen, req, rw, region = _tiny_rule()
    full = evaluate(gen, req, seeds=range(0, 12), region=region, rewriter=rw, baselines=False, progress=False)
    half = evaluate(gen, req, seeds=range(0, 12), region=region, rewriter=rw, baselines=False, progress=False,
                    strength=0.5)
    for name, delta in full.edit.deltas.items():  # exactly half of the same solve, on every layer
        h = half.edit.deltas[name]
        assert torch.equal(h.lam, delta.lam) and torch.equal(h.directions, delta.directions)
        assert h.scale == 0.5 * delta.scale
    assert half.settings["strength"] == 0.5 and "strength" not in full.settings
    assert half.methods["rewrite"].in_region < full.methods["rewrite"].in_region
    for bad in (0, -1, float("nan"), 2.5, "1"):
        with pytest.raises(RequestError, match="strength"):
            evaluate(gen, req, seeds=range(0, 12), region=region, rewriter=rw, baselines=False, progress=False,
                     strength=bad)


def test_rewrite_beats_finetuning_on_a_curated_face_edit() -> None:
    """The paper's claim on the embedded model, read from the README's figure (which
    ``test_figures.test_evaluate_figure_reproduces_on_fewer_seeds_and_steps`` re-runs seed by seed, so
    the full 2001-step baselines are not trained again here): >= 2x the locality of both baselines,
    higher generality, on 200 held-out seeds."""
    from olam_edit.eval.figures import load_figure

    fig = load_figure("evaluate_add_sunglasses")
    assert fig["_meta"]["seeds"][2] >= 190 and fig["_meta"]["steps"]["finetune_all"] == 2001
    for base in ("finetune_layer", "finetune_all"):
        assert fig["rewrite"]["ratio"] >= 2 * fig[base]["ratio"]
        assert fig["rewrite"]["generality"] > fig[base]["generality"]


def test_cli_json_last_line(tmp_path) -> None:
    exe = Path(sys.executable).parent / "olam-edit"
    out = subprocess.run([str(exe), "evaluate", "close_mouth", "--region", "example", "--seeds", "1000-1019",
                          "--steps", "30", "--out", str(tmp_path), "--json"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"rewrite", "finetune_layer", "finetune_all"}
    assert all(set(v) == {"in_region", "collateral", "generality"} for v in last.values())
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report.json").read_text())["rewrite"]["ratio"] > 0


def test_ratio_standard_error_matches_the_spread_over_resampled_seeds() -> None:
    """The delta-method s.e. of in-region / collateral against the spread of the ratio over many
    independent draws of 200 images from one population (a check that does not use the formula)."""
    g = torch.Generator().manual_seed(3)
    n_in, n_out = torch.full((200,), 64.0, dtype=torch.float64), torch.full((200,), 192.0, dtype=torch.float64)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        base = torch.rand(200, generator=g, dtype=torch.float64)  # images differ, inside and outside together
        a = (0.2 + 0.1 * base + 0.05 * torch.rand(200, generator=g, dtype=torch.float64)) * n_in
        b = (0.04 + 0.02 * base + 0.02 * torch.rand(200, generator=g, dtype=torch.float64)) * n_out
        return a, b

    ratios = []
    for _ in range(400):
        a, b = draw()
        ratios.append(float((a.sum() / n_in.sum()) / (b.sum() / n_out.sum())))
    spread = float(torch.tensor(ratios).std())
    a, b = draw()
    se = ratio_standard_error(a, b, n_in, n_out)
    assert se == pytest.approx(spread, rel=0.2)
    assert ratio_standard_error(a[:1], b[:1], n_in[:1], n_out[:1]) == 0.0


def test_scores_carry_sampling_errors_and_per_seed_changes() -> None:
    gen, req, rw, region = _tiny_rule()
    report = evaluate(gen, req, seeds=range(20, 60), region=region, rewriter=rw, baselines=False, progress=False)
    s, seeds = report.methods["rewrite"], report.to_json(per_seed=True)["_per_seed"]
    assert seeds["seeds"] == list(range(20, 60)) and len(seeds["rewrite"]["in"]) == 40
    ins, outs = report.per_seed["rewrite"]["in"], report.per_seed["rewrite"]["out"]
    assert s.in_region == pytest.approx(sum(ins) / 40) and s.collateral == pytest.approx(sum(outs) / 40)
    hits = torch.tensor([i - o > 0.05 for i, o in zip(ins, outs, strict=True)], dtype=torch.float64)
    assert s.generality_se == pytest.approx(float(hits.std()) / 40**0.5)
    assert s.ratio_se > 0
    assert "_per_seed" not in report.to_json() and "ratio_se" in report.to_json()["rewrite"]


def test_checkpoints_score_each_baseline_after_that_many_steps() -> None:
    gen, req, rw, region = _tiny_rule()
    kw = {"seeds": range(20, 32), "region": region, "rewriter": rw, "progress": False}
    report = evaluate(gen, req, steps={"finetune_layer": 12, "finetune_all": 12}, checkpoints=(5, 12, 50), **kw)
    assert set(report.checkpoints) == {"finetune_layer@5", "finetune_all@5"}  # 12 is the end, 50 beyond it
    assert report.settings["checkpoints"] == [5]
    short = evaluate(gen, req, steps={"finetune_layer": 5, "finetune_all": 5}, **kw)
    for name in ("finetune_layer", "finetune_all"):
        assert report.checkpoints[f"{name}@5"] == short.methods[name]  # the same model as a 5-step run
        assert report.per_seed[f"{name}@5"] == short.per_seed[name]
        assert report.methods[name] != short.methods[name]
    assert "finetune_all@5" in report.table()
