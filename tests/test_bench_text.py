"""The text-rule bench rows: the UCE baseline solves the same rules as ours, and the rows' numbers."""

from __future__ import annotations

import torch

from olam_edit.eval import bench_text
from olam_edit.eval.attention_stack import TINY_BLOCKS, attention_stack, projection_names


def test_uce_formula_gives_our_edited_weights() -> None:
    model = attention_stack(TINY_BLOCKS, 32, seed=4)
    layers = projection_names(model)
    c, t = bench_text.rule_tokens(6, 32, seed=9)
    dense = bench_text.uce_dense(model, layers, c, t)
    edit = bench_text.ours(model, layers, c, t)
    assert set(dense) == set(layers) == set(edit.deltas)
    assert bench_text.uce_gap(model, edit, dense) < 1e-4
    # the formula itself, in float64 from its definition: v_j = W0 t_j, sums over tokens
    W0 = model.get_submodule(layers[0]).weight.detach().double()
    cd, td, lam = c.double(), t.double(), bench_text.LAM
    mat1 = lam * W0 + sum(torch.outer(W0 @ td[j], cd[j]) for j in range(6))
    mat2 = lam * torch.eye(32, dtype=torch.float64) + sum(torch.outer(cd[j], cd[j]) for j in range(6))
    want = mat1 @ torch.linalg.inv(mat2)
    assert float((dense[layers[0]].double() - want).abs().max()) < 1e-4 * float(want.abs().max())
    # a different rule gives a different answer: the gap is not trivially small
    other = bench_text.ours(model, layers, *bench_text.rule_tokens(6, 32, seed=10))
    assert bench_text.uce_gap(model, other, dense) > 0.1


def test_rows_report_their_parts() -> None:
    solve = bench_text.bench_text_solve(quick=True, repeats=1)
    assert solve["text_solve_ratio"] == solve["text_solve_ours_s"] / solve["text_solve_uce_s"]  # one pair
    assert solve["text_solve_layers"] == 14 and solve["text_solve_tokens"] == 8 and solve["text_solve_cold_s"] > 0
    size = bench_text.bench_text_file(quick=True)
    assert size["text_file_ratio"] == size["text_file_bytes"] / size["text_file_dense_bytes"]
    assert size["text_file_dense_bytes"] == sum(4 * 32 * w for _, w in TINY_BLOCKS) * 2 and size["text_file_rank"] == 8
