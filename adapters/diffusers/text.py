"""Text rules on diffusers pipelines: "render SOURCE as DESTINATION" (TIME / UCE / MEMIT).

The rule edits the linear layers whose input is a pure function of the prompt: every cross-attention
``attn2.to_k`` / ``attn2.to_v`` of a UNet (Stable Diffusion 1.x / 2.x / XL) or of a cross-attention DiT
(PixArt, Sana), and the ``context_embedder`` of a joint-attention DiT (SD3, Flux); which, and what
they read, is the pipeline's family (:mod:`.families`). A rule such as "a rose" -> "a blue rose"
makes each source token's layer input k_j (a *key*) produce the value the layer gives the aligned
destination token: v*_j = W0 t_j. The closed form on those keys and values (prior, solve, factored
deltas, report) is framework-agnostic and lives in :mod:`olam_edit.rules.text.solve`; this module does
what needs a pipeline: it encodes and aligns the prompts, builds the corpus prior, and rebuilds the
keys of earlier text edits that a new one must keep (``preserve_edits=``).

Nothing here imports diffusers: a pipeline is anything with ``.unet`` or ``.transformer``, a
``.tokenizer`` and ``.encode_prompt`` (StableDiffusion(XL)Pipeline, PixArtSigmaPipeline, SanaPipeline,
StableDiffusion3Pipeline, FluxPipeline, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit.adapters.diffusers.families import (
    call_default,
    cross_attention_layers,
    encode_prompts,
    family_of,
    segments,
)
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
from olam_edit.files.validate import summary
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
def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Validate that every name is a prompt-only layer of ``model``'s family (:mod:`.families`)."""
    family, _ = family_of(model)
    allowed, modules = set(family.layers(model)), dict(model.named_modules())
    for name in layers:
        if name not in modules:
            get_handle(model, name)  # raises LayerNotFoundError with the closest names
        if name not in allowed:
            what = "a cross-attention key/value projection" if family.layers is cross_attention_layers else \
                "a layer that reads only the prompt"
            raise UnsupportedLayerError(
                explain(f"layer {name!r} is not {what}", got=type(modules[name]).__name__,
                        expected=f"one of the {family.name} family's prompt-only layers: {family.looked_for}",
                        fix=f"Leave layers=None for all of them, or pick from {sorted(allowed)[:4]}."))
    return list(layers)


def unet_of(model: Any) -> nn.Module:
    """The component a text rule edits: ``pipe.unet`` or ``pipe.transformer`` (a supported family), or
    ``model`` itself when it is such a UNet / transformer. Raises UnsupportedModelError otherwise."""
    return family_of(model)[1]


component_of = unet_of


# -- prompts -> keys ---------------------------------------------------------------------------------
def encode(pipe: Any, prompts: Sequence[str]) -> Tensor:
    """What the prompt-only layers read for ``prompts`` (``[B, T, d]``, float64), via ``pipe.encode_prompt``
    (then, for PixArt / Sana, the transformer's caption projection)."""
    return encode_prompts(pipe, prompts)[0]


def token_ids(pipe: Any, prompt: str) -> list[int]:
    """The prompt's token ids at the first positions the layers read (with BOS/EOS, no padding); for SD3
    only its CLIP run (all runs: :func:`~.families.segments`)."""
    length = call_default(pipe, "max_sequence_length") or getattr(pipe.tokenizer, "model_max_length", 0)
    return segments(pipe, prompt, int(length))[0].ids


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
    """Source token embeddings and their aligned destination embeddings for every rule.

    Alignment runs per token run (:func:`~.families.segments`: SD3's CLIP and T5 positions separately).
    ``padding`` also takes the positions after the source's tokens, unless the family masks them out."""
    if len(sources) != len(destinations) or not sources:
        raise RequestError(explain("every source prompt needs one destination prompt",
                                   got=f"{len(sources)} sources, {len(destinations)} destinations"))
    emb, mask = encode_prompts(pipe, [*sources, *destinations])  # [2n, T, d], [2n, T] or None
    n, T = len(sources), emb.shape[1]
    padding = padding and mask is None
    keys, targets, aligns = [], [], []
    for i, (src, dst) in enumerate(zip(sources, destinations, strict=True)):
        idx, used, offset = [], [], 0
        for s_run, d_run in zip(segments(pipe, src, T), segments(pipe, dst, T), strict=True):
            run = align_tokens(s_run.ids, d_run.ids, s_run.length, (s_run.names(), d_run.names()))
            idx += [offset + j for j in run]
            used += [offset + p for p in range(s_run.length if padding else len(s_run.ids))]
            offset += s_run.length
        keys.append(emb[i, used])  # [u, d]
        targets.append(emb[n + i, [idx[p] for p in used]])  # [u, d]
        aligns.append(idx)
    return RuleKeys(torch.cat(keys), torch.cat(targets), aligns)


def prompt_tokens(pipe: Any, prompts: Sequence[str]) -> Tensor:
    """The keys ``[m, d]`` of the prompts' own tokens (every run's, no padding): what ``preserve`` keeps."""
    emb = encode(pipe, list(prompts))  # [B, T, d]
    rows = []
    for b, prompt in enumerate(prompts):
        offset = 0
        for run in segments(pipe, prompt, emb.shape[1]):
            rows.append(emb[b, offset : offset + len(run.ids)])
            offset += run.length
    return torch.cat(rows)


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
    """C = E[k k^T] over every token position the prompt-only layers read for the corpus prompts (float64;
    positions an attention mask hides are left out)."""
    prompts = corpus_prompts(corpus)
    sm: SecondMoment | None = None
    for i in range(0, len(prompts), batch_size):
        emb, mask = encode_prompts(pipe, prompts[i : i + batch_size])  # [b, T, d], [b, T] or None
        sm = sm or SecondMoment(emb.shape[-1])
        sm.add(emb[mask] if mask is not None else emb.reshape(-1, emb.shape[-1]))  # [m, d] positions read
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
    family, unet = family_of(pipe)
    comp, base, here = edit.manifest.get("component"), edit.manifest.get("base_model"), _name_of(pipe)
    base_id = base.get("id") if isinstance(base, dict) else base
    foreign = sorted(set(edit.deltas) - set(family.layers(unet)))
    if comp != family.component or foreign or (base_id and here and base_id != here):
        raise BaseMismatchError(explain("an edit in preserve_edits was made for another model",
                                        got=f"component {comp!r}, base {base_id!r}, layers not here {foreign[:3]}",
                                        expected=f"a text edit of this pipeline's {family.component} "
                                                 f"(base {here!r})",
                                        fix="Pass only edits made on this base model."))
    check_base(unet, edit)  # BaseMismatchError unless made for these base weights
    if not isinstance(recipe.get("source"), list) or not isinstance(recipe.get("destination"), list):
        raise RequestError(explain("this text edit records no prompts to rebuild its keys from",
                                   got=sorted(recipe)[:8], expected="a recipe with 'source' and 'destination'",
                                   fix="Pass the keys it was solved on as protect= instead."))
    sources, dests = recipe_prompts(recipe, "source"), recipe_prompts(recipe, "destination")
    return rule_keys(pipe, sources, dests, recipe_flag(recipe, "padding", True)).keys


MAX_RECIPE_PROMPTS = 10_000  # prompts a recipe read back from an edit file may name


def recipe_prompts(recipe: dict[str, Any], key: str) -> list[str]:
    """``recipe[key]`` as a non-empty list of at most MAX_RECIPE_PROMPTS strings (an edit file's recipe
    is untrusted input); RequestError otherwise."""
    value = recipe.get(key)
    if not isinstance(value, list) or not 0 < len(value) <= MAX_RECIPE_PROMPTS or \
            not all(isinstance(v, str) and len(v) <= 4096 for v in value):
        raise RequestError(explain(f"the edit's recipe has no valid {key!r} prompts", got=summary(value),
                                   expected=f"a list of 1 to {MAX_RECIPE_PROMPTS} strings"))
    return value


def recipe_flag(recipe: dict[str, Any], key: str, default: bool) -> bool:
    """``recipe[key]`` when it is a bool, ``default`` when absent; RequestError for anything else."""
    value = recipe.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(explain(f"the edit's recipe field {key!r} is not true / false", got=summary(value)))
    return value


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
    """The text rule for given ``keys`` and aligned ``targets`` (``[n, d]`` or ``[B, T, d]``: the inputs
    of the family's prompt-only layers) on a UNet or DiT.

    ``unet`` may also be a pipeline (its ``.unet`` / ``.transformer`` is used). ``prior``: ``"identity"``,
    a SecondMoment or a ``[d, d]`` tensor; ``prior_weight`` (default :data:`DEFAULT_PRIOR_WEIGHT`) weighs it in the
    soft rule (``lam=`` is its deprecated old name). ``recipe`` holds the rule's own recipe fields
    (stamped by the ``"text"`` rule kind). ``protect`` keys ``[p, d]`` and the keys of the
    ``preserve_edits`` (earlier text edits; ``unet`` must then be the pipeline) keep their current values
    exactly (dW k = 0; :mod:`olam_edit.rules.text.maps`). Returns an :class:`~olam_edit.Edit` for the
    family's component (``"unet"`` or ``"transformer"``).
    """
    weight = _prior_weight(prior_weight, lam)
    Ko, protected = protected_keys(unet, preserve_edits, protect)  # [p, d]
    family, unet = family_of(unet)
    names = check_layers(unet, family.layers(unet) if layers is None else layers)
    if not names:
        raise UnsupportedModelError(explain(f"no layer to edit in this {type(unet).__name__}",
                                            expected=family.looked_for))
    fit = solve_text_rule(unet, names, keys, targets, prior=prior, prior_weight=weight, hard=hard,
                          preserve=preserve, ridge=ridge, protect=Ko)
    fit.settings["protected_edits"] = protected
    return text_rule_edit(unet, fit, fields=recipe, component=family.component,
                          base_model=base_model or _name_of(unet),
                          revision=revision, rule=rule, stats_fingerprint=stats_fingerprint)


def text_edit(pipe: Any, source: str | Sequence[str], destination: str | Sequence[str], *, prior: Any = "corpus",
              prior_weight: float | None = None, hard: bool = False, layers: Sequence[str] | None = None,
              preserve: Sequence[str] = (), padding: bool | None = None,
              corpus: str | Path | Sequence[str] | None = None, ridge: float = TEXT_PRIOR_RIDGE,
              base_model: str | None = None, revision: str | None = None, lam: float | None = None,
              preserve_edits: Edit | Sequence[Edit] = ()) -> Edit:
    """Solve "render ``source`` as ``destination``" on every prompt-only layer of the pipeline's family.

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
    unet_of(pipe)  # a clear error for pipelines of no known family, before any encoding
    rk = rule_keys(pipe, sources, dests, padding)
    stats_fp, label = None, prior if isinstance(prior, str) else None
    if isinstance(prior, str) and prior == "corpus":
        prior = prompt_moment(pipe, corpus)
        stats_fp = prior.manifest["fingerprint"]
    P = prompt_tokens(pipe, preserve) if preserve else None  # [m, d]
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
           "check_layers", "component_of", "corpus_prompts", "cross_attention_layers", "edit_keys", "encode",
           "family_of", "prior_matrix", "prompt_moment", "prompt_tokens", "protected_keys", "rule_keys",
           "shared_directions", "solve_map", "text_edit",
           "text_edit_from_embeddings", "token_ids", "unet_of"]
