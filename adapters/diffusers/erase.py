"""Concept erasure and replacement on diffusers cross-attention (UCE-style, in olam-edit's closed form).

``text_erase(pipe, "van gogh", guide="a painting", preserve=[...])`` makes every layer that reads the
text embeddings (the UNet's ``attn2.to_k`` / ``attn2.to_v``) give the concept's tokens the values it
gives the guide's; ``text_replace(pipe, "snoopy", "a dog")`` is the same solve for any destination
(no containment needed, unlike :func:`~olam_edit.adapters.diffusers.text.text_edit`). Several
concepts go into one solve. The result is an ordinary text edit made by
:func:`~olam_edit.adapters.diffusers.text.text_edit_from_embeddings` (component, fingerprints, LoRA
export, card), its recipe saying erase / replace, the concepts, guides and preserve prompts.

**Which tokens, aligned how.** A causal text encoder (CLIP) writes a concept into its last token
*and* into every later position: the end-of-text token and the padding after it attend to the whole
concept, and carry most of it. So the keys are the concept prompt's embeddings at its last content
token and at every later position (``padding=False``: the end-of-text token only), as UCE does, and
each takes the guide prompt's embedding at the aligned position:

- the concept's last content token takes the guide's last content token (in a causal encoder both
  have read the whole prompt), whatever the two token counts are;
- the end-of-text and padding positions follow the guide's in order (the k-th after the concept's
  last token takes the k-th after the guide's), clipped at the context's end;
- a guide with no content tokens (``""``, erasing towards the unconditional prompt) puts its
  end-of-text position in place of its last content token.

The concept's earlier tokens are not keys by default, because a causal encoder's embedding of them
is the embedding of a *prefix*, shared with every prompt that starts the same way: the ``a`` of
``a cat`` is the ``a`` of every prompt starting with "a", the ``sno`` of ``snoopy`` that of "snow".
Moving them would move those prompts (and, with the hard fit, contradict a preserve prompt with the
same prefix). ``tokens="all"`` makes them keys anyway, right-aligned onto the guide's content tokens
(``van gogh`` -> ``a painting``: ``gogh`` -> ``painting``, ``van`` -> ``a``; a concept longer than
its guide sends its extra leading tokens to the guide's first content token): right alignment is
the identity when the counts agree and keeps the last tokens paired. The beginning-of-text token is
never a key: its embedding is the same for every prompt.

**Preserve prompts.** ``text_erase`` requires at least one: an erasure changes the concept wherever
it is read, and the preserve prompts are both what holds the neighbouring concepts (with
``prior="identity"``, UCE's choice, nothing else does) and what the report measures the collateral
change on. ``text_replace`` requires them only with ``prior="identity"``; with the corpus prior (the
default for both) the prior already weighs what ordinary prompts read.

Prompts go through one function, :func:`encode_prompts` (the tokenizer's ids and the embeddings the
edited layers read); a pipeline family with its own encoder replaces that step alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from olam_edit.adapters.diffusers.families import family_of
from olam_edit.edit.apply import check_base
from olam_edit.edit.core import Edit
from olam_edit.errors import (
    BaseMismatchError,
    EmptySelectionError,
    RequestError,
    TokenAlignmentError,
    UnsupportedModelError,
    explain,
)
from olam_edit.files.validate import summary
from olam_edit.rules.registry import kind_of
from olam_edit.rules.text.solve import TEXT_PRIOR_RIDGE

from . import text as _text
from .erase_report import ConceptReport, measure

ERASE_MODES = ("erase", "replace")
TOKEN_CHOICES = ("last", "all")  # which content tokens of a concept are keys


# -- prompts -> per-token embeddings (the one encode step) -----------------------------------------------
@dataclass
class EncodedPrompts:
    """Prompts as the edited layers read them: ``embeddings`` ``[B, T, d]`` (float64), each prompt's
    token ``ids`` (with the tokenizer's special tokens, no padding) and the ``special`` token ids."""

    embeddings: Tensor
    ids: list[list[int]]
    special: frozenset[int]


def encode_prompts(pipe: Any, prompts: Sequence[str], role: str = "prompt") -> EncodedPrompts:
    """Tokenise and encode ``prompts`` with the pipeline's own encoder(s): the single place this module
    turns prompts into keys. A prompt with more tokens than the encoder reads is refused (``role``
    names it in the error) before anything is encoded."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or not callable(getattr(pipe, "encode_prompt", None)):
        _text.encode(pipe, [])  # raises the adapter's UnsupportedModelError
    ids = [_text.token_ids(pipe, p) for p in prompts]
    length = int(getattr(tokenizer, "model_max_length", 0) or 0)
    for prompt, tok in zip(prompts, ids, strict=True):
        if length and len(tok) > length:
            raise TokenAlignmentError(explain(f"the {role} {prompt!r} is longer than the text encoder reads",
                                              got=f"{len(tok)} tokens", expected=f"at most {length}",
                                              fix="Shorten it; the encoder would silently cut it."))
    emb = _text.encode(pipe, list(prompts))  # [B, T, d]
    return EncodedPrompts(emb, ids, frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", [])))


# -- alignment -------------------------------------------------------------------------------------------
def concept_alignment(concept: Sequence[int], guide: Sequence[int], special: frozenset[int], length: int,
                      padding: bool = True, tokens: str = "last") -> list[tuple[int, int]]:
    """``(concept position, guide position)`` pairs for a concept's keys (see the module docstring): its
    last content token onto the guide's (``tokens="all"``: every content token, right-aligned onto the
    guide's), then the end-of-text / padding positions in order (only the end-of-text one without
    ``padding``), within ``length`` positions."""
    if tokens not in TOKEN_CHOICES:
        raise RequestError(explain("unknown tokens= choice", got=repr(tokens), expected=TOKEN_CHOICES))
    c_pos = [i for i, t in enumerate(concept) if t not in special]
    g_pos = [j for j, t in enumerate(guide) if t not in special] or [max(len(guide) - 1, 0)]
    c_pos = c_pos if tokens == "all" else c_pos[-1:]
    pairs = [(i, g_pos[max(len(g_pos) - len(c_pos) + k, 0)]) for k, i in enumerate(c_pos)]
    c_end, g_end = c_pos[-1] + 1, g_pos[-1] + 1
    tail = range(c_end, length if padding else min(c_end + 1, length))
    return pairs + [(i, min(g_end + i - c_end, length - 1)) for i in tail]


@dataclass
class ConceptKeys:
    """Keys ``[n, d]`` (concept embeddings), aligned ``targets`` ``[n, d]`` (guide embeddings), each
    concept's rows ``spans[i] = (start, stop)`` and its ``alignments`` (list of [concept, guide] positions)."""

    keys: Tensor
    targets: Tensor
    spans: list[tuple[int, int]]
    alignments: list[list[list[int]]]


def _check_concepts(concepts: list[str], guides: list[str], enc: EncodedPrompts) -> None:
    n = len(concepts)
    for c, g, c_ids, g_ids in zip(concepts, guides, enc.ids[:n], enc.ids[n:], strict=True):
        if not [t for t in c_ids if t not in enc.special]:
            raise EmptySelectionError(explain(f"the concept {c!r} tokenises to nothing", got=f"token ids {c_ids}",
                                              expected="at least one token besides the special ones",
                                              fix="Pass the words of the concept, e.g. 'van gogh'."))
        if c_ids == g_ids:
            raise RequestError(explain(f"the guide of {c!r} is the concept itself", got=f"guide {g!r}",
                                       expected="a different prompt (its tokens differ from the concept's)",
                                       fix="Guide towards a neutral prompt, e.g. guide='a painting' or ''."))


def concept_keys(pipe: Any, concepts: Sequence[str], guides: Sequence[str], padding: bool = True,
                 tokens: str = "last") -> ConceptKeys:
    """The keys and guide targets of every concept (one row per aligned position), encoded together."""
    concepts, guides = list(concepts), list(guides)
    enc = encode_prompts(pipe, [*concepts, *guides], role="concept or guide")
    _check_concepts(concepts, guides, enc)
    n, T = len(concepts), enc.embeddings.shape[1]
    keys, targets, spans, aligns, start = [], [], [], [], 0
    for i in range(n):
        pairs = concept_alignment(enc.ids[i], enc.ids[n + i], enc.special, T, padding, tokens)
        keys.append(enc.embeddings[i, [p for p, _ in pairs]])  # [n_i, d]
        targets.append(enc.embeddings[n + i, [q for _, q in pairs]])  # [n_i, d]
        spans.append((start, start + len(pairs)))
        aligns.append([[p, q] for p, q in pairs])
        start += len(pairs)
    return ConceptKeys(torch.cat(keys), torch.cat(targets), spans, aligns)


def preserve_keys(pipe: Any, prompts: Sequence[str]) -> list[Tensor]:
    """Every token of each preserve prompt (special tokens included, no padding): one ``[m_i, d]`` each."""
    if not prompts:
        return []
    enc = encode_prompts(pipe, list(prompts), role="preserve prompt")
    return [enc.embeddings[i, : len(ids)] for i, ids in enumerate(enc.ids)]  # [m_i, d] each


# -- earlier erase / replace edits -> protected keys -------------------------------------------------------
def is_concept_edit(edit: Any) -> bool:
    """Whether ``edit`` is an erase / replace edit (a text edit whose recipe's ``mode`` says so)."""
    recipe = edit.manifest.get("recipe") if isinstance(edit, Edit) else None
    return isinstance(recipe, dict) and kind_of(recipe) == "text" and recipe.get("mode") in ERASE_MODES


def concept_edit_keys(pipe: Any, edit: Edit) -> ConceptKeys:
    """The keys an erase / replace ``edit`` was solved on, rebuilt from its recipe with this pipeline's
    encoder (pass ``.keys`` as ``protect=`` to keep them); BaseMismatchError for another model's edit."""
    if not is_concept_edit(edit):
        raise RequestError(explain("not an erase / replace edit", got=type(edit).__name__,
                                   expected="an Edit made by text_erase() or text_replace()"))
    recipe = edit.manifest["recipe"]
    foreign = sorted(set(edit.deltas) - set(_text.cross_attention_layers(_text.unet_of(pipe))))
    if edit.manifest.get("component") != "unet" or foreign:
        raise BaseMismatchError(explain("the erase / replace edit was made for another model",
                                              got=f"component {edit.manifest.get('component')!r}, layers not "
                                                  f"here {foreign[:3]}", expected="a text edit of this UNet",
                                              fix="Pass only edits made on this base model."))
    check_base(_text.unet_of(pipe), edit)
    concepts, guides = _text.recipe_prompts(recipe, "concepts"), recipe.get("guides")
    if not isinstance(guides, list) or len(guides) != len(concepts) or not all(isinstance(g, str) for g in guides):
        raise RequestError(explain("the erase / replace recipe's guides do not pair with its concepts",
                                   got=summary(guides), expected=f"{len(concepts)} strings"))
    tokens = recipe.get("tokens", "last")
    if tokens not in ("last", "all"):
        raise RequestError(explain("the recipe's tokens field is unknown", got=summary(tokens),
                                   expected="'last' or 'all'"))
    return concept_keys(pipe, concepts, guides, _text.recipe_flag(recipe, "padding", True), tokens)


def _protection(pipe: Any, edits: Edit | Sequence[Edit]) -> tuple[Tensor | None, list[Edit], list[str]]:
    """Keys of the earlier erase / replace edits (protect=), the other earlier edits (preserve_edits=),
    and the erase / replace edits' fingerprints."""
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    ours = [e for e in edits if is_concept_edit(e)]
    keys = [concept_edit_keys(pipe, e).keys for e in ours]
    return (torch.cat(keys) if keys else None), [e for e in edits if not is_concept_edit(e)], \
        [e.fingerprint for e in ours]


# -- public entry points -------------------------------------------------------------------------------
def _as_list(value: str | Sequence[str], what: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(v, str) for v in items):
        raise RequestError(explain(f"{what} must be a prompt or a non-empty list of prompts",
                                   got=repr(value)[:80], expected="str or list[str]"))
    return items


def _pair(concepts: str | Sequence[str], guides: str | Sequence[str], names: tuple[str, str]
          ) -> tuple[list[str], list[str]]:
    """Concepts and one guide each (a single guide serves every concept)."""
    cs, gs = _as_list(concepts, names[0]), _as_list(guides, names[1])
    if len(gs) == 1:
        gs = gs * len(cs)
    if len(gs) != len(cs):
        raise RequestError(explain(f"every {names[0][:-1]} needs one {names[1][:-1]} (or pass one for all)",
                                   got=f"{len(cs)} {names[0]}, {len(gs)} {names[1]}"))
    return cs, gs


def _check_preserve(mode: str, preserve: list[str], prior: Any, concepts: list[str]) -> None:
    needed = mode == "erase" or (isinstance(prior, str) and prior == "identity")
    if needed and not preserve:
        why = "an erasure" if mode == "erase" else "a replacement with prior='identity'"
        raise RequestError(explain(f"{why} needs preserve prompts: they hold the neighbouring concepts and "
                                   "measure the collateral change", got="preserve=[]",
                                   expected="at least one prompt that must keep its values",
                                   fix="Pass preserve=['a photo of a dog', 'a landscape', ...] (prompts unlike "
                                       "the concept)."))
    for p in preserve:
        if p.strip().lower() in {c.strip().lower() for c in concepts}:
            raise RequestError(explain(f"the preserve prompt {p!r} is a concept being changed", got=p,
                                       fix="Drop it from preserve= (it cannot both change and stay)."))


def _rule(mode: str, concepts: list[str], guides: list[str]) -> str:
    if mode == "replace":
        return "; ".join(f"replace {c!r} with {g!r}" for c, g in zip(concepts, guides, strict=True))
    return "; ".join(f"erase {c!r} (guide {g!r})" if g else f"erase {c!r} (guide: the empty prompt)"
                     for c, g in zip(concepts, guides, strict=True))


@dataclass
class _Settings:
    """The solve options shared by text_erase and text_replace (see their docstrings)."""

    prior: Any = "corpus"
    prior_weight: float | None = None
    hard: bool = False
    padding: bool | None = None
    layers: Sequence[str] | None = None
    corpus: str | Path | Sequence[str] | None = None
    ridge: float = TEXT_PRIOR_RIDGE
    scale: float = 1.0
    base_model: str | None = None
    revision: str | None = None
    preserve_edits: Edit | Sequence[Edit] = ()
    verbose: bool = False
    tokens: str = "last"


def _recipe(mode: str, concepts: list[str], guides: list[str], preserve: list[str], ck: ConceptKeys,
            names: list[str], padding: bool, s: _Settings) -> dict[str, Any]:
    """The rule's own recipe fields (the ``"text"`` kind stamps kind and summary)."""
    corpus = None if s.corpus is None else (str(s.corpus) if isinstance(s.corpus, str | Path) else len(s.corpus))
    return {"mode": mode, "concepts": concepts, "guides": guides, "preserve": preserve, "padding": padding,
            "tokens": s.tokens, "alignments": ck.alignments, "layers": names, "scale": s.scale,
            **({"prior": s.prior} if isinstance(s.prior, str) else {}), "corpus": corpus}


def _check_unet_family(pipe: Any) -> None:
    """Erase / replace align tokens as a causal CLIP encoder writes them (last token, then end-of-text
    and padding); DiT families (T5 / Gemma encoders, masked padding, several token runs) are refused."""
    family, comp = family_of(pipe)
    if family.component != "unet":
        raise UnsupportedModelError(explain(
            "text_erase / text_replace support UNet pipelines (Stable Diffusion 1.x / 2.x / XL)",
            got=f"a {type(comp).__name__} ({family.name} family)", expected="a pipeline with .unet",
            fix="On a DiT, use text_edit(pipe, source, destination) or text_edit_from_embeddings."))


def _solve(pipe: Any, mode: str, concepts: list[str], guides: list[str], preserve: list[str], s: _Settings) -> Edit:
    """Encode, align, solve through text_edit_from_embeddings, scale, and write the report into the manifest."""
    unet = _text.unet_of(pipe)  # a clear error for pipelines of no known family, before any encoding
    _check_unet_family(pipe)
    _check_preserve(mode, preserve, s.prior, concepts)
    names = _text.check_layers(unet, _text.cross_attention_layers(unet) if s.layers is None else s.layers)
    padding = not s.hard if s.padding is None else bool(s.padding)
    ck = concept_keys(pipe, concepts, guides, padding, s.tokens)
    kept = list(zip(preserve, preserve_keys(pipe, preserve), strict=True))
    protect, others, protected = _protection(pipe, s.preserve_edits)
    prior, stats_fp = s.prior, None
    if isinstance(prior, str) and prior == "corpus":
        prior = _text.prompt_moment(pipe, s.corpus)
        stats_fp = prior.manifest["fingerprint"]
    edit = _text.text_edit_from_embeddings(
        pipe, ck.keys, ck.targets, prior=prior, prior_weight=s.prior_weight, hard=s.hard, layers=names,
        preserve=torch.cat([k for _, k in kept]) if kept else None, ridge=s.ridge,
        base_model=s.base_model or _text._name_of(pipe), revision=s.revision,
        recipe=_recipe(mode, concepts, guides, preserve, ck, names, padding, s), rule=_rule(mode, concepts, guides),
        stats_fingerprint=stats_fp, protect=protect, preserve_edits=others)
    edit = edit.scaled(s.scale) if s.scale != 1.0 else edit
    report = measure(unet, edit, ck, list(zip(concepts, guides, strict=True)), kept)
    edit.manifest["metrics"] = {**edit.manifest.get("metrics", {}), **report.dict()}
    if protected:
        solver = edit.manifest["solver"]
        edit.manifest["solver"] = {**solver, "protected_edits": [*solver.get("protected_edits", []), *protected]}
    if s.verbose:
        print(report)
    return edit


def text_erase(pipe: Any, concepts: str | Sequence[str], guide: str | Sequence[str] = "", *,
               preserve: str | Sequence[str] = (), prior: Any = "corpus", prior_weight: float | None = None,
               hard: bool = False, padding: bool | None = None, layers: Sequence[str] | None = None,
               corpus: str | Path | Sequence[str] | None = None, ridge: float = TEXT_PRIOR_RIDGE,
               scale: float = 1.0, base_model: str | None = None, revision: str | None = None,
               preserve_edits: Edit | Sequence[Edit] = (), verbose: bool = False, tokens: str = "last") -> Edit:
    """Erase ``concepts`` (a prompt or a list, one solve): their last token and the positions after it
    take the values of ``guide`` (one prompt for all, or one each; default ``""``, the unconditional
    prompt); ``tokens="all"`` also edits the concept's earlier tokens (see the module docstring).

    ``preserve`` (required, at least one prompt) keep their values. ``prior`` / ``prior_weight`` /
    ``hard`` / ``corpus`` / ``ridge`` / ``layers`` / ``preserve_edits`` are those of
    :func:`~olam_edit.adapters.diffusers.text.text_edit`; ``padding`` (default: on for the soft rule)
    also edits the padding positions, else only the end-of-text one. ``scale`` returns
    ``edit.scaled(scale)``. The manifest's ``metrics`` gain ``concepts`` (per concept ``residual_before``
    / ``residual_after``: ||W K^T - W0 T^T|| / ||W0 T^T|| to the guide's values, largest over the
    layers) and ``preserve_change`` (per prompt ||dW P^T|| / ||W0 P^T||), of the returned (scaled) edit;
    ``verbose`` prints them. Errors (nothing is solved or applied): a concept that tokenises to nothing
    (EmptySelectionError) or past the encoder's length (TokenAlignmentError), a guide equal to its
    concept or no preserve prompt (RequestError)."""
    cs, gs = _pair(concepts, guide, ("concepts", "guides"))
    settings = _Settings(prior, prior_weight, hard, padding, layers, corpus, ridge, scale, base_model, revision,
                         preserve_edits, verbose, tokens)
    return _solve(pipe, "erase", cs, gs, _as_list(preserve, "preserve") if preserve else [], settings)


def text_replace(pipe: Any, source: str | Sequence[str], destination: str | Sequence[str], *,
                 preserve: str | Sequence[str] = (), prior: Any = "corpus", prior_weight: float | None = None,
                 hard: bool = False, padding: bool | None = None, layers: Sequence[str] | None = None,
                 corpus: str | Path | Sequence[str] | None = None, ridge: float = TEXT_PRIOR_RIDGE,
                 scale: float = 1.0, base_model: str | None = None, revision: str | None = None,
                 preserve_edits: Edit | Sequence[Edit] = (), verbose: bool = False, tokens: str = "last") -> Edit:
    """Render ``source`` as any ``destination`` ("snoopy" -> "a dog"): the solve of :func:`text_erase`
    with the destination as the guide, for prompts that need not contain each other. ``preserve`` is
    optional, except with ``prior="identity"`` (then nothing else holds the other prompts). Options,
    report and errors as :func:`text_erase`."""
    cs, gs = _pair(source, destination, ("sources", "destinations"))
    settings = _Settings(prior, prior_weight, hard, padding, layers, corpus, ridge, scale, base_model, revision,
                         preserve_edits, verbose, tokens)
    return _solve(pipe, "replace", cs, gs, _as_list(preserve, "preserve") if preserve else [], settings)


def concept_report(pipe: Any, edit: Edit) -> ConceptReport:
    """Recompute the report of an erase / replace ``edit`` (e.g. of ``edit.scaled(s)``) on ``pipe``, whose
    UNet must not carry the edit (its current weights are the W0 the report compares with)."""
    ck = concept_edit_keys(pipe, edit)
    recipe = edit.manifest["recipe"]
    preserve = list(recipe.get("preserve") or [])
    kept = list(zip(preserve, preserve_keys(pipe, preserve), strict=True))
    return measure(_text.unet_of(pipe), edit, ck, list(zip(recipe["concepts"], recipe["guides"], strict=True)), kept)


__all__ = ["ERASE_MODES", "ConceptKeys", "ConceptReport", "EncodedPrompts", "concept_alignment", "concept_edit_keys",
           "concept_keys", "concept_report", "encode_prompts", "is_concept_edit", "measure", "preserve_keys",
           "text_erase", "text_replace"]
