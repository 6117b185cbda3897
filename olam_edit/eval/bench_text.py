"""Bench rows: the text rule against UCE's published closed form, in time and in file size.

Setting: the 32 cross-attention ``to_k`` / ``to_v`` projections of a Stable Diffusion 1.5-shaped UNet
(768 -> 320 / 640 / 1280, random float32 weights: :mod:`olam_edit.eval.attention_stack`, the only
layers the rule reads and writes), and a rule set of :data:`TOKENS` source embeddings c_j with the
destination embeddings t_j they should act like (random, seeded). Both sides solve the same rules:
the soft rule with the identity prior and weight lam (:data:`LAM`, TIME / UCE's lambda).

UCE (Gandikota et al. 2024) writes each layer's new weight densely,

    W = (lam W0 + sum_j v_j c_j^T) (lam I + sum_j c_j c_j^T)^{-1},   v_j = W0 t_j,

in float32, forming and inverting ``lam I + sum c c^T`` in its loop over layers: :func:`uce_dense`
is that formula written out (one matrix product per sum; UCE's own code sums per-token outer
products, which is slower, so this baseline is the faster of the two). W - W0 equals our dW exactly
in exact arithmetic (:func:`uce_gap` measures how close the two are here).

``text_solve_ratio`` = seconds of our whole path to an :class:`~olam_edit.Edit`
(:func:`~olam_edit.rules.text.solve.solve_text_rule` + :func:`~olam_edit.rules.text.solve.text_rule_edit`,
float64, with the report and the base-weight fingerprints) / seconds of :func:`uce_dense`, the
median of per-pair ratios of back-to-back runs on one thread, after one untimed run of each. The
fingerprints of unchanged base weights are cached (:func:`olam_edit.files.fingerprint.cached_fingerprint`),
so the untimed first solve hashes them and is reported apart (``text_solve_cold_s``).

``text_file_ratio`` = bytes of our edit folder (``edit.safetensors`` + ``edit_config.json``) for
:data:`FILE_TOKENS` tokens / bytes of the float32 edited weights UCE saves for the same layers
(UCE saves the whole UNet; counting only the edited layers is the smaller, harder denominator).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from olam_edit.edit.core import Edit
from olam_edit.eval.attention_stack import SD15_BLOCKS, SD15_TEXT_DIM, TINY_BLOCKS, attention_stack, projection_names
from olam_edit.eval.timing import seconds, threads
from olam_edit.memory.handles import get_handle
from olam_edit.rules.text.solve import DEFAULT_PRIOR_WEIGHT, solve_text_rule, text_rule_edit

TOKENS = 77  # a full CLIP prompt: UCE edits every position of the concept's 77-token embedding
FILE_TOKENS = 8
LAM = DEFAULT_PRIOR_WEIGHT
SEED = 1917


def rule_tokens(tokens: int, dim: int, seed: int = SEED) -> tuple[Tensor, Tensor]:
    """Source embeddings c_j and destinations t_j, ``[tokens, dim]`` float32 each (as a text encoder gives)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(tokens, dim, generator=g)  # [n, d]
    return c, c + 0.5 * torch.randn(c.shape, generator=g)  # [n, d] each


def weight(model: nn.Module, name: str) -> Tensor:
    """The weight ``[out, d]`` of the projection ``name`` (detached)."""
    return get_handle(model, name).parameter.detach()


def uce_dense(model: nn.Module, layers: list[str], c: Tensor, t: Tensor, lam: float = LAM) -> dict[str, Tensor]:
    """UCE's closed form, per layer, dense, float32: W = (lam W0 + sum v c^T)(lam I + sum c c^T)^{-1}."""
    eye = torch.eye(c.shape[1], dtype=torch.float32)  # [d, d]
    out = {}
    for name in layers:
        W0 = weight(model, name)  # [out, d]
        V = t @ W0.T  # [n, out] v_j = W0 t_j
        mat1 = lam * W0 + V.T @ c  # [out, d] lam W0 + sum v c^T
        mat2 = lam * eye + c.T @ c  # [d, d] lam I + sum c c^T
        out[name] = mat1 @ torch.inverse(mat2)  # [out, d]
    return out


def ours(model: nn.Module, layers: list[str], c: Tensor, t: Tensor, lam: float = LAM) -> Edit:
    """Our path from the rule to an Edit (solve, report, manifest with the base fingerprints)."""
    fit = solve_text_rule(model, layers, c, t, prior_weight=lam)
    return text_rule_edit(model, fit, component="unet", base_model="bench/sd15-shaped-cross-attention")


def uce_gap(model: nn.Module, edit: Edit, dense: dict[str, Tensor]) -> float:
    """max over layers of ||(W0 + dW) - W_uce|| / ||W_uce - W0|| (float64 norms): both solve one problem."""
    gaps = []
    for name, W in dense.items():
        W0 = weight(model, name).double()  # [out, d]
        ours_W = W0 + edit.deltas[name].dense().double()  # [out, d]
        gaps.append(float((ours_W - W.double()).norm() / (W.double() - W0).norm().clamp_min(1e-300)))
    return max(gaps)


def bench_text_solve(quick: bool = False, repeats: int = 3, tokens: int = TOKENS) -> dict[str, float]:
    """``text_solve_ratio`` and the seconds behind it (see the module docstring)."""
    blocks, dim = (TINY_BLOCKS, 32) if quick else (SD15_BLOCKS, SD15_TEXT_DIM)
    tokens = min(tokens, 8) if quick else tokens
    model = attention_stack(blocks, dim, seed=0)
    layers = projection_names(model)
    c, t = rule_tokens(tokens, dim)
    with threads(1):
        cold = seconds(lambda: ours(model, layers, c, t))  # hashes the base weights once
        dense = uce_dense(model, layers, c, t)  # untimed: one-off set-up
        ratios, t_ours, t_uce = [], [], []
        for _ in range(repeats):
            t_ours.append(seconds(lambda: ours(model, layers, c, t)))
            t_uce.append(seconds(lambda: uce_dense(model, layers, c, t)))
            ratios.append(t_ours[-1] / t_uce[-1])
    return {"text_solve_ratio": statistics.median(ratios), "text_solve_ours_s": statistics.median(t_ours),
            "text_solve_uce_s": statistics.median(t_uce), "text_solve_cold_s": cold,
            "text_solve_uce_gap": uce_gap(model, ours(model, layers, c, t), dense),
            "text_solve_tokens": float(tokens), "text_solve_layers": float(len(layers))}


def bench_text_file(quick: bool = False, tokens: int = FILE_TOKENS) -> dict[str, float]:
    """``text_file_ratio``: our edit folder's bytes over the float32 edited weights UCE saves."""
    blocks, dim = (TINY_BLOCKS, 32) if quick else (SD15_BLOCKS, SD15_TEXT_DIM)
    model = attention_stack(blocks, dim, seed=0)
    layers = projection_names(model)
    edit = ours(model, layers, *rule_tokens(tokens, dim))
    with tempfile.TemporaryDirectory() as tmp:
        folder = edit.save(Path(tmp))
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    dense = sum(weight(model, n).numel() * 4 for n in layers)
    return {"text_file_ratio": size / dense, "text_file_bytes": float(size), "text_file_dense_bytes": float(dense),
            "text_file_tokens": float(tokens), "text_file_rank": float(max(d.rank for d in edit.deltas.values()))}


__all__ = ["FILE_TOKENS", "LAM", "TOKENS", "bench_text_file", "bench_text_solve", "ours", "rule_tokens", "uce_dense",
           "uce_gap", "weight"]
