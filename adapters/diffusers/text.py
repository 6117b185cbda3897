"""Text rules on diffusers UNet cross-attention: "render SOURCE as DESTINATION" (TIME / UCE / MEMIT).

Every ``attn2.to_k`` / ``attn2.to_v`` of a ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x and
SDXL layouts) reads the text encoder's token embeddings. A rule such as "a rose" -> "a blue rose"
makes each source token k_j (a *key*) produce the value the layer gives the aligned destination
token: v*_j = W0 t_j. The closed form on those keys and values (prior, solve, factored deltas,
report) is framework-agnostic and lives in :mod:`olam_edit.rules.text.solve`; this module does what
needs a pipeline: it finds the layers, encodes and aligns the prompts, builds the corpus prior, and
rebuilds the keys of earlier text edits that a new one must keep (``preserve_edits=``).

Nothing here imports diffusers: a pipeline is anything with ``.unet``, ``.tokenizer`` and
``.encode_prompt`` (StableDiffusionPipeline, StableDiffusionXLPipeline, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit.edit.apply import check_base
from olam_edit.edit.core import Edit
from olam_edit.errors import (
    BaseMismatchError,
    EmptySelectionError,
    RequestError,
    ShapeMismatchError,
    TokenAlignmentError,
    UnsupportedLayerError,
    UnsupportedModelError,
    explain,
)
from olam_edit.files.fingerprint import json_fingerprint, tensor_fingerprint
from olam_edit.memory.handles import get_handle
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.registry import kind_of
from olam_edit.rules.text.solve import (
    DEFAULT_PRIOR_WEIGHT,
    TEXT_PRIOR_RIDGE,
    as_keys,
    prior_matrix,
    shared_directions,
    solve_map,
    solve_text_rule,
    text_rule_edit,
)

CORPUS_PATH = Path(__file__).parent / "data" / "prompts.txt"


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


# -- earlier edits -> protected keys ---------------------------------------------------------------------
def edit_keys(pipe: Any, edit: Edit) -> Tensor:
    """The source keys ``[n, d]`` an earlier text edit was fitted on, rebuilt from its recipe (prompts and
    padding) with this pipeline's encoder. The edit must be a text edit for this pipeline's UNet."""
    if not isinstance(edit, Edit):
        raise RequestError(explain("preserve_edits takes olam-edit Edits", got=type(edit).__name__,
                                   expected="Edit objects returned by text_edit() or Edit.load()"))
    recipe = edit.manifest.get("recipe") if isinstance(edit.manifest.get("recipe"), dict) else {}
    if kind_of(recipe) != "text":
        raise RequestError(explain("an edit in preserve_edits is not a text edit", got=kind_of(recipe),
                                   expected="an edit made by text_edit()",
                                   fix="Protect spatial edits with the Rewriter's keep=, or drop it from the list."))
    unet = unet_of(pipe)
    comp, base, here = edit.manifest.get("component"), edit.manifest.get("base_model"), _name_of(pipe)
    base_id = base.get("id") if isinstance(base, dict) else base
    foreign = sorted(set(edit.deltas) - set(cross_attention_layers(unet)))
    if comp != "unet" or foreign or (base_id and here and base_id != here):
        raise BaseMismatchError(explain("an edit in preserve_edits was made for another model",
                                        got=f"component {comp!r}, base {base_id!r}, layers not here {foreign[:3]}",
                                        expected=f"a text edit of this pipeline's UNet (base {here!r})",
                                        fix="Pass only edits made on this base model."))
    check_base(unet, edit)  # BaseMismatchError unless made for these base weights
    if not isinstance(recipe.get("source"), list) or not isinstance(recipe.get("destination"), list):
        raise RequestError(explain("this text edit records no prompts to rebuild its keys from",
                                   got=sorted(recipe)[:8], expected="a recipe with 'source' and 'destination'",
                                   fix="Pass the keys it was solved on as protect= instead."))
    return rule_keys(pipe, recipe["source"], recipe["destination"], bool(recipe.get("padding", True))).keys


def protected_keys(pipe: Any, edits: Edit | Sequence[Edit], protect: Tensor | None = None
                   ) -> tuple[Tensor | None, list[str]]:
    """The keys a new update must leave unchanged: ``protect`` ``[p, d]`` and the keys of every earlier
    edit (:func:`edit_keys`), stacked; and the fingerprints of those edits (for the manifest)."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    if edits and not callable(getattr(pipe, "encode_prompt", None)):
        raise UnsupportedModelError(explain("preserve_edits needs the pipeline, to re-encode the earlier edits' "
                                            "prompts", got=type(pipe).__name__,
                                            fix="Pass the pipeline, or the earlier edits' keys as protect=."))
    parts = ([as_keys(protect)] if protect is not None else []) + [edit_keys(pipe, e) for e in edits]
    dims = sorted({int(p.shape[1]) for p in parts})
    if len(dims) > 1:
        raise ShapeMismatchError(explain("protected keys of different dimensions", got=dims,
                                         fix="Encode every protected key with this model's text encoder(s)."))
    return (torch.cat(parts) if parts else None), [e.fingerprint for e in edits]


# -- public entry points ---------------------------------------------------------------------------------
def text_edit_from_embeddings(unet: Any, keys: Tensor, targets: Tensor, *, prior: Any = "identity",
                              prior_weight: float | None = None, hard: bool = False,
                              layers: Sequence[str] | None = None, preserve: Tensor | None = None,
                              ridge: float = TEXT_PRIOR_RIDGE, base_model: str | None = None,
                              revision: str | None = None, recipe: dict[str, Any] | None = None,
                              rule: str | None = None, stats_fingerprint: str | None = None,
                              lam: float | None = None, protect: Tensor | None = None,
                              preserve_edits: Edit | Sequence[Edit] = ()) -> Edit:
    """The text rule for given ``keys`` and aligned ``targets`` (``[n, d]`` or ``[B, T, d]``) on a UNet.

    ``unet`` may also be a pipeline (its ``.unet`` is used). ``prior``: ``"identity"``, a SecondMoment
    or a ``[d, d]`` tensor; ``prior_weight`` (default :data:`DEFAULT_PRIOR_WEIGHT`) weighs it in the
    soft rule (``lam=`` is its deprecated old name). ``recipe`` holds the rule's own recipe fields
    (stamped by the ``"text"`` rule kind). ``protect`` keys ``[p, d]`` and the keys of the
    ``preserve_edits`` (earlier text edits; ``unet`` must then be the pipeline) keep their current values
    exactly (dW k = 0; :mod:`olam_edit.rules.text.maps`). Returns an :class:`~olam_edit.Edit` for ``"unet"``.
    """
    weight = _prior_weight(prior_weight, lam)
    Ko, protected = protected_keys(unet, preserve_edits, protect)  # [p, d]
    unet = unet_of(unet)
    names = check_layers(unet, cross_attention_layers(unet) if layers is None else layers)
    if not names:
        raise UnsupportedModelError(explain("the UNet has no cross-attention layers", got=type(unet).__name__))
    fit = solve_text_rule(unet, names, keys, targets, prior=prior, prior_weight=weight, hard=hard,
                          preserve=preserve, ridge=ridge, protect=Ko)
    fit.settings["protected_edits"] = protected
    return text_rule_edit(unet, fit, fields=recipe, component="unet", base_model=base_model or _name_of(unet),
                          revision=revision, rule=rule, stats_fingerprint=stats_fingerprint)


def text_edit(pipe: Any, source: str | Sequence[str], destination: str | Sequence[str], *, prior: Any = "corpus",
              prior_weight: float | None = None, hard: bool = False, layers: Sequence[str] | None = None,
              preserve: Sequence[str] = (), padding: bool | None = None,
              corpus: str | Path | Sequence[str] | None = None, ridge: float = TEXT_PRIOR_RIDGE,
              base_model: str | None = None, revision: str | None = None, lam: float | None = None,
              preserve_edits: Edit | Sequence[Edit] = ()) -> Edit:
    """Solve "render ``source`` as ``destination``" on every cross-attention ``to_k`` / ``to_v``.

    ``source`` and ``destination`` are prompts (or equal-length lists of prompts, one rule each).
    ``prior="corpus"`` uses C = E[k k^T] over ``corpus`` (default: the shipped prompt list);
    ``"identity"`` gives TIME / UCE. ``prior_weight`` (default :data:`DEFAULT_PRIOR_WEIGHT`) weighs the
    prior in the soft rule; ``lam=`` is its deprecated old name. ``preserve`` prompts keep their values.
    ``padding`` also edits the padding positions after the source's last token, aligned to the
    destination's as TIME does (default: on for the soft rule; off for the hard one, whose exact fit
    of the nearly collinear padding keys would need a huge update). ``preserve_edits``: earlier text
    edits whose source keys (rebuilt from their recipes) keep their current values exactly.
    """
    weight = _prior_weight(prior_weight, lam)
    padding = not hard if padding is None else padding
    sources = [source] if isinstance(source, str) else list(source)
    dests = [destination] if isinstance(destination, str) else list(destination)
    unet_of(pipe)  # a clear error for pipelines without a UNet, before any encoding
    rk = rule_keys(pipe, sources, dests, padding)
    stats_fp, label = None, prior if isinstance(prior, str) else None
    if isinstance(prior, str) and prior == "corpus":
        prior = prompt_moment(pipe, corpus)
        stats_fp = prior.manifest["fingerprint"]
    P = torch.cat([encode(pipe, [p])[0, : len(token_ids(pipe, p))] for p in preserve]) if preserve else None
    fields = {"source": sources, "destination": dests, "preserve": list(preserve), "padding": padding,
              "alignments": rk.alignments, **({"prior": label} if label else {}),
              "corpus": None if corpus is None else (str(corpus) if isinstance(corpus, str | Path) else len(corpus))}
    rule = "; ".join(f"render {s!r} as {d!r}" for s, d in zip(sources, dests, strict=True))
    return text_edit_from_embeddings(pipe, rk.keys, rk.targets, prior=prior, prior_weight=weight, hard=hard,
                                     layers=layers, preserve=P, ridge=ridge, base_model=base_model or _name_of(pipe),
                                     revision=revision, recipe=fields, rule=rule, stats_fingerprint=stats_fp,
                                     preserve_edits=preserve_edits)


# -- helpers ---------------------------------------------------------------------------------------------
def _prior_weight(prior_weight: float | None, lam: float | None) -> float:
    """The prior's weight from ``prior_weight=`` or the deprecated ``lam=`` (which in the core names Lambda)."""
    if lam is None:
        return DEFAULT_PRIOR_WEIGHT if prior_weight is None else float(prior_weight)
    if prior_weight is not None:
        raise RequestError(explain("both prior_weight= and its deprecated name lam= were given",
                                   got=f"prior_weight={prior_weight}, lam={lam}", fix="Pass prior_weight= only."))
    warnings.warn("text_edit(..., lam=) is deprecated: pass prior_weight= (the prior's weight; lam names an "
                  "edit's Lambda factor elsewhere in olam-edit)", DeprecationWarning, stacklevel=3)
    return float(lam)

def _name_of(obj: Any) -> str | None:
    cfg = getattr(obj, "config", None)
    name = getattr(cfg, "_name_or_path", None) if cfg is not None else None
    if name is None and isinstance(cfg, dict):
        name = cfg.get("_name_or_path")
    return name or getattr(obj, "name_or_path", None) or None


__all__ = ["CORPUS_PATH", "DEFAULT_PRIOR_WEIGHT", "TEXT_PRIOR_RIDGE", "RuleKeys", "align_tokens", "as_keys",
           "check_layers", "corpus_prompts", "cross_attention_layers", "edit_keys", "encode", "prior_matrix",
           "prompt_moment", "protected_keys", "rule_keys", "shared_directions", "solve_map", "text_edit",
           "text_edit_from_embeddings", "token_ids", "unet_of"]
