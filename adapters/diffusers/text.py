"""Text rules on diffusers UNet cross-attention: "render SOURCE as DESTINATION" (TIME / UCE / MEMIT).

Every ``attn2.to_k`` / ``attn2.to_v`` of a ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x and
SDXL layouts) reads the text encoder's token embeddings. A rule such as "a rose" -> "a blue rose"
makes each source token k_j (a *key*) produce the value the layer gives the aligned destination
token: v*_j = W0 t_j. With the residual R = V* - W0 K and a prior C over keys (the second moment of
token embeddings over a prompt corpus, or I), the closed form of DESIGN section 4 is

    soft:  dW = R K^T (lam C + K K^T)^{-1}        (fit + lam * E_k ||dW k||^2, minimised)
    hard:  dW = R (K^T C^{-1} K)^{-1} K^T C^{-1}  (dW K = R exactly, least E_k ||dW k||^2)

Both are dW = R X^T with X [d, n] independent of the layer, so every layer shares one orthonormal
basis D of span(X) and stores dW = (dW D^T) D: a factored delta of rank <= the number of keys.
Keys k with K^T C^{-1} k = 0 (orthogonal to the rule in the prior's metric) are left unchanged.

Nothing here imports diffusers: a pipeline is anything with ``.unet``, ``.tokenizer`` and
``.encode_prompt`` (StableDiffusionPipeline, StableDiffusionXLPipeline, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit import Delta, SecondMoment
from olam_edit._version import __version__
from olam_edit.edit.core import Edit
from olam_edit.errors import (
    EmptySelectionError,
    RequestError,
    ShapeMismatchError,
    SingularStatisticError,
    TokenAlignmentError,
    UnsupportedLayerError,
    UnsupportedModelError,
    explain,
)
from olam_edit.files.fingerprint import json_fingerprint, tensor_fingerprint
from olam_edit.memory.handles import get_handle
from olam_edit.memory.layout import LINEAR

DEFAULT_LAMBDA = 0.1  # TIME's default weight of the prior
DEFAULT_RIDGE = 1e-3  # added to a data prior C (scaled to mean eigenvalue 1): bounds dW where C is tiny
CORPUS_PATH = Path(__file__).parent / "data" / "prompts.txt"
_RANK_RTOL = 1e-10  # directions of X below this relative size carry no update


# -- layers ----------------------------------------------------------------------------------------
def cross_attention_layers(unet: nn.Module) -> list[str]:
    """Names of the ``to_k`` and ``to_v`` projections of every cross-attention module, in order."""
    names = []
    for name, m in unet.named_modules():
        if getattr(m, "is_cross_attention", False) and isinstance(getattr(m, "to_k", None), nn.Linear):
            names += [f"{name}.to_k", f"{name}.to_v"]
    return names


def check_layers(unet: nn.Module, layers: Sequence[str]) -> list[str]:
    """Validate that every name is a key/value projection of a cross-attention module."""
    allowed, modules = set(cross_attention_layers(unet)), dict(unet.named_modules())
    for name in layers:
        if name not in modules:
            get_handle(unet, name)  # raises LayerNotFoundError with the closest names
        if name not in allowed:
            raise UnsupportedLayerError(
                explain(f"layer {name!r} is not a cross-attention key/value projection",
                        got=type(modules[name]).__name__,
                        expected="an '...attn2.to_k' or '...attn2.to_v' nn.Linear that reads text embeddings",
                        fix="Leave layers=None for all of them, or pick from cross_attention_layers(unet)."))
    return list(layers)


def unet_of(model: Any) -> nn.Module:
    """``pipe.unet``, or ``model`` itself when it is a UNet with cross-attention."""
    unet = getattr(model, "unet", None)
    if isinstance(unet, nn.Module):
        return unet
    if isinstance(model, nn.Module) and cross_attention_layers(model):
        return model
    comps = sorted(getattr(model, "components", {}) or {})
    raise UnsupportedModelError(
        explain(f"text rules need a UNet with cross-attention, and this {type(model).__name__} has none",
                got=f"components {comps}" if comps else type(model).__name__,
                expected="a pipeline with .unet (Stable Diffusion 1.x / 2.x / SDXL) or a UNet2DConditionModel",
                fix="Transformer-based pipelines (SD3, Flux) are not supported by text rules yet."))


# -- prompts -> keys ---------------------------------------------------------------------------------
def encode(pipe: Any, prompts: Sequence[str]) -> Tensor:
    """The embeddings the UNet reads for ``prompts`` (``[B, T, d]``, float64), via ``pipe.encode_prompt``."""
    if not callable(getattr(pipe, "encode_prompt", None)) or getattr(pipe, "tokenizer", None) is None:
        raise UnsupportedModelError(
            explain("cannot encode prompts with this object", got=type(pipe).__name__,
                    expected="a diffusers pipeline with a tokenizer and encode_prompt()",
                    fix="Pass the pipeline, or use text_edit_from_embeddings(unet, keys, targets)."))
    device = getattr(pipe, "_execution_device", None) or next(unet_of(pipe).parameters()).device
    with torch.no_grad():
        out = pipe.encode_prompt(prompt=list(prompts), device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
    return out[0].detach().to(torch.float64)


def token_ids(pipe: Any, prompt: str) -> list[int]:
    """The prompt's token ids as the pipeline's tokenizer writes them (with BOS/EOS, no padding)."""
    return list(pipe.tokenizer(prompt, truncation=False).input_ids)


def _token_names(pipe: Any, ids: Sequence[int]) -> list[str]:
    conv = getattr(getattr(pipe, "tokenizer", None), "convert_ids_to_tokens", None)
    return list(conv(list(ids))) if conv else [str(i) for i in ids]


def align_tokens(source: Sequence[int], destination: Sequence[int], length: int,
                 names: tuple[Sequence[str], Sequence[str]] | None = None) -> list[int]:
    """For each of the ``length`` source positions, the destination position whose embedding it takes.

    Source tokens are matched in order to equal destination tokens (``a rose`` in ``a blue rose``);
    positions after the source's last token (padding) follow the destination's, as TIME does.
    """
    if len(source) > length or len(destination) > length:
        raise TokenAlignmentError(
            explain("a prompt is longer than the text encoder's context", got=f"{len(source)} and "
                    f"{len(destination)} tokens", expected=f"at most {length}", fix="Shorten the prompt."))
    idx, j = [], 0
    for i, tok in enumerate(source):
        while j < len(destination) and destination[j] != tok:
            j += 1
        if j == len(destination):
            src, dst = names or ([str(t) for t in source], [str(t) for t in destination])
            raise TokenAlignmentError(
                explain(f"source token {src[i]!r} (position {i}) has no match in the destination after "
                        f"position {idx[-1] if idx else 0}", got=f"source {list(src)}, destination {list(dst)}",
                        expected="the source's tokens, in order, inside the destination",
                        fix="Write the destination as the source with words added, e.g. 'a rose' -> 'a blue rose'."))
        idx.append(j)
        j += 1
    return idx + [min(j + k, length - 1) for k in range(length - len(idx))]


@dataclass
class RuleKeys:
    """Keys of a set of text rules: source embeddings ``keys`` [n, d], aligned destination embeddings
    ``targets`` [n, d] (the layer's value of each is its target), and ``alignments`` per rule."""

    keys: Tensor
    targets: Tensor
    alignments: list[list[int]]


def rule_keys(pipe: Any, sources: Sequence[str], destinations: Sequence[str], padding: bool = True) -> RuleKeys:
    """Source token embeddings and their aligned destination embeddings for every rule."""
    if len(sources) != len(destinations) or not sources:
        raise RequestError(explain("every source prompt needs one destination prompt",
                                   got=f"{len(sources)} sources, {len(destinations)} destinations"))
    emb = encode(pipe, [*sources, *destinations])  # [2n, T, d]
    n, T = len(sources), emb.shape[1]
    keys, targets, aligns = [], [], []
    for i, (src, dst) in enumerate(zip(sources, destinations, strict=True)):
        s_ids, d_ids = token_ids(pipe, src), token_ids(pipe, dst)
        idx = align_tokens(s_ids, d_ids, T, (_token_names(pipe, s_ids), _token_names(pipe, d_ids)))
        used = T if padding else len(s_ids)
        keys.append(emb[i, :used])
        targets.append(emb[n + i, idx[:used]])
        aligns.append(idx)
    return RuleKeys(torch.cat(keys), torch.cat(targets), aligns)


# -- the prior -----------------------------------------------------------------------------------------
def corpus_prompts(corpus: str | Path | Sequence[str] | None = None) -> list[str]:
    """Prompts of a corpus: the shipped one (None), a text file (one a line, ``#`` comments) or a list."""
    if corpus is None or isinstance(corpus, str | Path):
        path = Path(corpus) if corpus is not None else CORPUS_PATH
        if not path.is_file():
            raise RequestError(explain(f"no prompt corpus at {path}", fix="Pass a text file with one prompt a line."))
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    else:
        prompts = [str(p) for p in corpus]
    if not prompts:
        raise EmptySelectionError(explain("the prompt corpus is empty", fix="Give at least one prompt."))
    return prompts


def prompt_moment(pipe: Any, corpus: str | Path | Sequence[str] | None = None, batch_size: int = 16) -> SecondMoment:
    """C = E[k k^T] over every token position the UNet reads for the corpus prompts (float64)."""
    prompts = corpus_prompts(corpus)
    sm: SecondMoment | None = None
    for i in range(0, len(prompts), batch_size):
        emb = encode(pipe, prompts[i : i + batch_size])  # [b, T, d]
        sm = sm or SecondMoment(emb.shape[-1])
        sm.add(emb.reshape(-1, emb.shape[-1]))
    content = {"prompts": prompts, "moment": tensor_fingerprint(sm.sum), "count": sm.count}  # what C is made of
    sm.manifest = {"fingerprint": json_fingerprint(content), "kind": "text_prompt_corpus", "prompts": len(prompts),
                   "base_model": _name_of(pipe)}
    return sm


def prior_matrix(prior: Any, dim: int, ridge: float = DEFAULT_RIDGE) -> Tensor:
    """C as a float64 matrix from ``"identity"``, a SecondMoment or a tensor.

    A data prior is scaled to mean eigenvalue 1 (so ``lam`` weighs it as much as TIME's ``lam I``,
    only shaped by the data) and gets ``ridge`` added to its diagonal; the identity is used as is.
    """
    if isinstance(prior, str) and prior == "identity":
        return torch.eye(dim, dtype=torch.float64)
    if isinstance(prior, str) and prior == "corpus":
        raise RequestError(explain("prior='corpus' needs the pipeline's text encoder",
                                   fix="Use text_edit(pipe, ...), or pass prior=prompt_moment(pipe, corpus)."))
    if isinstance(prior, SecondMoment):
        C = prior.moment()
    elif isinstance(prior, Tensor):
        C = prior.detach().to(torch.float64).cpu()
    else:
        raise RequestError(explain("unknown prior", got=repr(prior)[:80], expected="'identity', 'corpus' (with a "
                                   "pipeline), a SecondMoment or a [d, d] tensor"))
    if C.shape != (dim, dim) or not torch.isfinite(C).all() or float(C.diagonal().mean()) <= 0:
        raise ShapeMismatchError(explain("the prior is not a finite [d, d] second moment of the keys",
                                         got=tuple(C.shape), expected=(dim, dim)))
    C = C / C.diagonal().mean()
    return C + ridge * torch.eye(dim, dtype=torch.float64) if ridge > 0 else C


# -- the closed form ---------------------------------------------------------------------------------
def _cholesky(A: Tensor, what: str) -> Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise SingularStatisticError(
            explain(f"{what} is singular or not positive definite",
                    fix="Pass a larger ridge (e.g. 1e-2), use prior='identity', or a larger prompt corpus."))
    return L


def solve_map(keys: Tensor, C: Tensor, lam: float, hard: bool, preserve: Tensor | None = None) -> Tensor:
    """X ``[d, n]`` with dW = R X^T for residuals R ``[out, n]`` of the ``n`` keys (float64).

    ``preserve`` keys ``[m, d]`` keep their values (zero residual) in both variants.
    """
    K = keys.to(torch.float64).T  # [d, n]
    P = (preserve.to(torch.float64).T if preserve is not None and preserve.numel() else K[:, :0])  # [d, m]
    if not hard:
        if lam <= 0:
            raise RequestError(explain("the soft rule needs lam > 0", got=lam, fix="Pass hard=True for an exact fit."))
        L = _cholesky(lam * C + K @ K.T + P @ P.T, "lam C + K K^T")
        return torch.cholesky_solve(K, L)  # (lam C + K K^T)^{-1} K
    L = _cholesky(C, "the prior C")
    Kw = torch.linalg.solve_triangular(L, torch.cat([K, P], 1), upper=False)  # [d, n+m] whitened keys
    G = Kw.T @ Kw  # K^T C^{-1} K
    eye = torch.eye(G.shape[0], K.shape[1], dtype=G.dtype)
    Z = torch.linalg.lstsq(G, eye, driver="gelsd").solution  # G^+ restricted to the edited keys
    return torch.linalg.solve_triangular(L.T, Kw @ Z, upper=True)  # C^{-1} K_all G^+ [:, :n]


def shared_directions(X: Tensor) -> Tensor:
    """Orthonormal rows spanning the column space of X (numerical rank): D ``[r, d]``."""
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    r = int((S > S.max() * _RANK_RTOL).sum()) if S.numel() and float(S.max()) > 0 else 0
    if r == 0:
        raise EmptySelectionError(explain("the rule's keys are all zero", fix="Check the prompts and embeddings."))
    return U[:, :r].T.contiguous()


@dataclass
class LayerFit:
    delta: Delta
    relative_norm: float
    residual_before: float
    residual_after: float


def fit_layer(weight: Tensor, keys: Tensor, targets: Tensor, X: Tensor, D: Tensor) -> LayerFit:
    """The delta of one projection: R = W0 (targets - keys)^T, dW = R X^T, lam = dW D^T."""
    W = weight.detach().to(torch.float64).cpu()  # [out, d]
    R = W @ (targets - keys).T  # [out, n]
    dW = R @ X.T  # [out, d]
    lam = dW @ D.T  # [out, r]
    dense = lam @ D
    scale = float((W @ targets.T).norm().clamp_min(1e-300))
    after = float((R - dense @ keys.T).norm()) / scale
    delta = Delta(lam.to(torch.float32), D.to(torch.float32), LINEAR)
    return LayerFit(delta, float(dense.norm() / W.norm().clamp_min(1e-300)), float(R.norm()) / scale, after)


# -- public entry points ---------------------------------------------------------------------------------
def text_edit_from_embeddings(unet: Any, keys: Tensor, targets: Tensor, *, prior: Any = "identity",
                              lam: float = DEFAULT_LAMBDA, hard: bool = False, layers: Sequence[str] | None = None,
                              preserve: Tensor | None = None, ridge: float = DEFAULT_RIDGE,
                              base_model: str | None = None, revision: str | None = None,
                              recipe: dict[str, Any] | None = None,
                              rule: str | None = None, stats_fingerprint: str | None = None) -> Edit:
    """The text rule for given ``keys`` and aligned ``targets`` (``[n, d]`` or ``[B, T, d]``) on a UNet.

    ``unet`` may also be a pipeline (its ``.unet`` is used). ``prior``: ``"identity"``, a SecondMoment
    or a ``[d, d]`` tensor. Returns an :class:`~olam_edit.Edit` for component ``"unet"``.
    """
    unet = unet_of(unet)
    K, T = _as_keys(keys), _as_keys(targets)
    if K.shape != T.shape:
        raise ShapeMismatchError(explain("keys and targets must pair up", got=f"{tuple(K.shape)} and {tuple(T.shape)}"))
    names = check_layers(unet, cross_attention_layers(unet) if layers is None else layers)
    if not names:
        raise UnsupportedModelError(explain("the UNet has no cross-attention layers", got=type(unet).__name__))
    _check_dim(unet, names, K.shape[1])
    C = prior_matrix(prior, K.shape[1], ridge)
    P = _as_keys(preserve) if preserve is not None else None
    X = solve_map(K, C, lam, hard, P)
    D = shared_directions(X)
    fits = {n: fit_layer(get_handle(unet, n).parameter, K, T, X, D) for n in names}
    metrics = {"relative_norm": max(f.relative_norm for f in fits.values()),
               "residual_before": max(f.residual_before for f in fits.values()),
               "residual_after": max(f.residual_after for f in fits.values()), "keys": int(K.shape[0])}
    solver = {"method": "text_rule_hard" if hard else "text_rule", "lambda": lam, "ridge": ridge,
              "prior": prior if isinstance(prior, str) else type(prior).__name__, "rank": int(D.shape[0]),
              "value_space": "layer_output", "solve": "closed_form", "preserve_keys": 0 if P is None else len(P)}
    return Edit.create(unet, {n: f.delta for n, f in fits.items()}, base_model=base_model or _name_of(unet),
                       revision=revision, component="unet", solver=solver, recipe=recipe or {"type": "text_rule"},
                       rule=rule, metrics=metrics, stats_fingerprint=stats_fingerprint,
                       created_with=f"olam-edit {__version__}")


def text_edit(pipe: Any, source: str | Sequence[str], destination: str | Sequence[str], *, prior: Any = "corpus",
              lam: float = DEFAULT_LAMBDA, hard: bool = False, layers: Sequence[str] | None = None,
              preserve: Sequence[str] = (), padding: bool | None = None,
              corpus: str | Path | Sequence[str] | None = None, ridge: float = DEFAULT_RIDGE,
              base_model: str | None = None, revision: str | None = None) -> Edit:
    """Solve "render ``source`` as ``destination``" on every cross-attention ``to_k`` / ``to_v``.

    ``source`` and ``destination`` are prompts (or equal-length lists of prompts, one rule each).
    ``prior="corpus"`` uses C = E[k k^T] over ``corpus`` (default: the shipped prompt list);
    ``"identity"`` gives TIME / UCE. ``preserve`` prompts keep their values. ``padding`` also edits
    the padding positions after the source's last token, aligned to the destination's as TIME does
    (default: on for the soft rule; off for the hard one, whose exact fit of the nearly collinear
    padding keys would need a huge update).
    """
    padding = not hard if padding is None else padding
    sources = [source] if isinstance(source, str) else list(source)
    dests = [destination] if isinstance(destination, str) else list(destination)
    unet_of(pipe)  # a clear error for pipelines without a UNet, before any encoding
    rk = rule_keys(pipe, sources, dests, padding)
    stats_fp = None
    if isinstance(prior, str) and prior == "corpus":
        prior = prompt_moment(pipe, corpus)
        stats_fp = prior.manifest["fingerprint"]
    P = torch.cat([encode(pipe, [p])[0, : len(token_ids(pipe, p))] for p in preserve]) if preserve else None
    recipe = {"type": "text_rule", "source": sources, "destination": dests, "preserve": list(preserve),
              "padding": padding, "alignments": rk.alignments,
              "corpus": None if corpus is None else (str(corpus) if isinstance(corpus, str | Path) else len(corpus))}
    rule = "; ".join(f"render {s!r} as {d!r}" for s, d in zip(sources, dests, strict=True))
    return text_edit_from_embeddings(pipe, rk.keys, rk.targets, prior=prior, lam=lam, hard=hard, layers=layers,
                                     preserve=P, ridge=ridge, base_model=base_model or _name_of(pipe),
                                     revision=revision, recipe=recipe, rule=rule, stats_fingerprint=stats_fp)


# -- helpers ---------------------------------------------------------------------------------------------
def _as_keys(t: Tensor) -> Tensor:
    t = torch.as_tensor(t).detach().to(torch.float64).cpu()
    if t.ndim not in (2, 3) or not torch.isfinite(t).all():
        raise ShapeMismatchError(explain("keys must be finite [n, d] or [B, T, d] embeddings", got=tuple(t.shape)))
    return t.reshape(-1, t.shape[-1])


def _check_dim(unet: nn.Module, names: Sequence[str], dim: int) -> None:
    for name in names:
        got = get_handle(unet, name).key_dim
        if got != dim:
            raise ShapeMismatchError(explain(f"{name} reads {got}-dimensional embeddings",
                                             got=f"keys of dimension {dim}", expected=got,
                                             fix="Encode the prompts with this model's text encoder(s)."))


def _name_of(obj: Any) -> str | None:
    cfg = getattr(obj, "config", None)
    name = getattr(cfg, "_name_or_path", None) if cfg is not None else None
    if name is None and isinstance(cfg, dict):
        name = cfg.get("_name_or_path")
    return name or getattr(obj, "name_or_path", None) or None


__all__ = ["CORPUS_PATH", "DEFAULT_LAMBDA", "DEFAULT_RIDGE", "RuleKeys", "align_tokens", "check_layers",
           "corpus_prompts", "cross_attention_layers", "encode", "prior_matrix", "prompt_moment", "rule_keys",
           "shared_directions", "solve_map", "text_edit", "text_edit_from_embeddings", "token_ids", "unet_of"]
