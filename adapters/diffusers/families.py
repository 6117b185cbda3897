"""Pipeline families of the text rule: which linear layers read only the prompt, and what they read.

A text rule edits layers whose input is a pure function of the prompt (never of the image latent or
the timestep), so that its keys can be computed from the prompt alone. Each family says where those
layers are and how to compute their input from the pipeline's own ``encode_prompt``:

- ``unet`` (Stable Diffusion 1.x / 2.x / XL; component ``unet``): every cross-attention
  ``attn2.to_k`` / ``to_v``; they read encode_prompt's token embeddings as they are.
- ``cross_attention`` (PixArt-alpha / Sigma, Sana; component ``transformer``): every cross-attention
  ``attn2.to_k`` / ``to_v``; they read the caption: ``caption_projection`` (then Sana's
  ``caption_norm``) of encode_prompt's embeddings, the same for every block. Padding is masked out.
- ``joint`` (SD3 / SD3.5, Flux; component ``transformer``): ``context_embedder``, which reads
  encode_prompt's embeddings (SD3: CLIP then T5 positions; Flux: T5).
- ``qwenimage`` (Qwen-Image): ``txt_in`` over ``txt_norm`` of the embeddings (from embeddings only).

In joint-attention DiTs the later ``add_k_proj`` / ``add_v_proj`` of every block read the context
stream after earlier blocks mixed it with the image tokens and modulated it by the timestep, so they
are not prompt-only and are never edited. :data:`FAMILIES` is the extension point: append (or
:func:`register_family`) a :class:`Family` for another transformer. Nothing here imports diffusers:
families are recognised by class name and structure.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit.errors import UnsupportedModelError, explain


@dataclass(frozen=True)
class Segment:
    """A run of ``length`` positions of the sequence the layers read, written by one tokenizer: the
    prompt's token ``ids`` fill its first positions, padding the rest."""

    length: int
    ids: list[int]
    tokenizer: Any = None

    def names(self) -> list[str]:
        conv = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        return list(conv(list(self.ids))) if conv else [str(i) for i in self.ids]


def cross_attention_layers(model: nn.Module) -> list[str]:
    """Names of the ``to_k`` and ``to_v`` projections of every cross-attention module, in order."""
    names = []
    for name, m in model.named_modules():
        if getattr(m, "is_cross_attention", False) and isinstance(getattr(m, "to_k", None), nn.Linear):
            names += [f"{name}.to_k", f"{name}.to_v"]
    return names


def _linear(attr: str) -> Callable[[nn.Module], list[str]]:
    return lambda m: [attr] if isinstance(getattr(m, attr, None), nn.Linear) else []


def _identity(component: nn.Module, emb: Tensor) -> Tensor:
    return emb


def _caption(component: nn.Module, emb: Tensor) -> Tensor:
    """PixArt / Sana: ``caption_projection`` (an MLP over the text encoder's states), then ``caption_norm``."""
    x = emb
    for attr in ("caption_projection", "caption_norm"):
        layer = getattr(component, attr, None)
        x = layer(x) if isinstance(layer, nn.Module) else x  # [B, T, inner]
    return x


def _txt_norm(component: nn.Module, emb: Tensor) -> Tensor:
    return component.txt_norm(emb)  # [B, T, d]


def _no_norm_cross(m: nn.Module) -> bool:
    """Every cross-attention reads its context as given (no ``norm_cross`` before to_k / to_v)."""
    return all(getattr(a, "norm_cross", None) is None for a in m.modules() if getattr(a, "is_cross_attention", False))


@dataclass(frozen=True)
class Family:
    """One pipeline family: ``component`` (the pipeline attribute edited), ``classes`` (class names it
    recognises; empty: any module with the layers), ``layers`` (the prompt-only layers of a component),
    ``context`` (encode_prompt embeddings ``[B, T, e]`` -> the layers' input ``[B, T, d]``), ``outputs``
    (index in encode_prompt's result of the embeddings and of the attention mask, or None), ``segments``
    (a prompt's token runs, see :class:`Segment`) and ``masked`` (padding is masked out, never read)."""

    name: str
    component: str
    classes: tuple[str, ...]
    layers: Callable[[nn.Module], list[str]]
    context: Callable[[nn.Module, Tensor], Tensor]
    looked_for: str
    outputs: tuple[int, int | None] = (0, None)
    segments: Callable[[Any, str, int], list[Segment]] | None = None
    masked: bool = False
    check: Callable[[nn.Module], bool] = lambda m: True

    def detects(self, module: nn.Module) -> bool:
        named = not self.classes or type(module).__name__ in self.classes
        return named and bool(self.layers(module)) and self.check(module)


# -- token runs ---------------------------------------------------------------------------------------
def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt, truncation=False).input_ids)


def _one_run(attr: str) -> Callable[[Any, str, int], list[Segment]]:
    def runs(pipe: Any, prompt: str, length: int) -> list[Segment]:
        tok = getattr(pipe, attr)
        return [Segment(length, _ids(tok, prompt), tok)]
    return runs


def call_default(pipe: Any, name: str) -> Any:
    """The default of ``pipe.__call__``'s argument ``name`` (what a generation uses), else None."""
    param = inspect.signature(type(pipe).__call__).parameters.get(name) if callable(pipe) else None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _sana_runs(pipe: Any, prompt: str, length: int) -> list[Segment]:
    """Sana prepends its complex human instruction (the generation default) and keeps the first
    position and the last ``length - 1`` of the padded sequence; this replays that on the token ids."""
    tok, chi = pipe.tokenizer, call_default(pipe, "complex_human_instruction")
    text, total = prompt, length
    if chi:
        head = "\n".join(chi)
        text, total = head + prompt, len(tok.encode(head)) + length - 2
    enc = tok(text, padding="max_length", max_length=max(total, len(_ids(tok, text))), truncation=False)
    ids, mask = list(enc.input_ids), list(enc.attention_mask)
    keep = [0, *range(len(ids) - length + 1, len(ids))]
    return [Segment(length, [ids[i] for i in keep if mask[i]], tok)]


def _sd3_runs(pipe: Any, prompt: str, length: int) -> list[Segment]:
    """SD3: the two CLIPs' tokens (concatenated on features, zero-padded), then T5's."""
    clip = int(pipe.tokenizer.model_max_length)
    t5 = getattr(pipe, "tokenizer_3", None) if getattr(pipe, "text_encoder_3", None) is not None else None
    return [Segment(clip, _ids(pipe.tokenizer, prompt), pipe.tokenizer),
            Segment(length - clip, _ids(t5, prompt) if t5 is not None else [], t5)]


UNET = Family("unet", "unet", (), cross_attention_layers, _identity, "cross-attention attn2.to_k / attn2.to_v",
              segments=_one_run("tokenizer"))
FAMILIES: list[Family] = [
    Family("cross_attention", "transformer", ("PixArtTransformer2DModel", "Transformer2DModel"),
           cross_attention_layers, _caption, "cross-attention attn2.to_k / attn2.to_v (PixArt)",
           outputs=(0, 1), segments=_one_run("tokenizer"), masked=True, check=_no_norm_cross),
    Family("cross_attention", "transformer", ("SanaTransformer2DModel",), cross_attention_layers, _caption,
           "cross-attention attn2.to_k / attn2.to_v (Sana)", outputs=(0, 1), segments=_sana_runs, masked=True,
           check=_no_norm_cross),
    Family("joint", "transformer", ("SD3Transformer2DModel",), _linear("context_embedder"), _identity,
           "context_embedder (SD3)", segments=_sd3_runs),
    Family("joint", "transformer", ("FluxTransformer2DModel",), _linear("context_embedder"), _identity,
           "context_embedder (Flux)", segments=_one_run("tokenizer_2")),
    Family("qwenimage", "transformer", ("QwenImageTransformer2DModel",), _linear("txt_in"), _txt_norm,
           "txt_in after txt_norm (Qwen-Image)"),
]


def register_family(family: Family) -> None:
    """Add a family for another transformer; it is tried before the shipped ones."""
    FAMILIES.insert(0, family)


def family_of(model: Any) -> tuple[Family, nn.Module]:
    """The family of a pipeline (or of a bare UNet / transformer) and the component it edits.

    Raises UnsupportedModelError naming the layers it looked for when no family has prompt-only layers."""
    for attr in ("unet", "transformer"):
        comp = getattr(model, attr, None)
        if isinstance(comp, nn.Module):
            return _family_of_module(comp, attr, model)
    if isinstance(model, nn.Module):
        return _family_of_module(model, None, model)
    comps = sorted(getattr(model, "components", {}) or {})
    raise UnsupportedModelError(
        explain(f"text rules need a UNet or a transformer, and this {type(model).__name__} has neither",
                got=f"components {comps}" if comps else type(model).__name__,
                expected="a pipeline with .unet or .transformer, or the UNet / transformer itself",
                fix="Pass the diffusers pipeline."))


def _family_of_module(module: nn.Module, attr: str | None, model: Any) -> tuple[Family, nn.Module]:
    candidates = [f for f in FAMILIES if attr in (None, f.component)] + ([UNET] if attr in (None, "unet") else [])
    for family in candidates:
        if family.detects(module):
            return family, module
    looked = "; ".join(dict.fromkeys(f.looked_for for f in candidates))
    comps = sorted(getattr(model, "components", {}) or {})
    raise UnsupportedModelError(
        explain(f"no prompt-only layer found in this {type(module).__name__}",
                got=f"{type(module).__name__}" + (f" in components {comps}" if comps else ""),
                expected=f"one of: {looked}",
                fix="Use a supported pipeline (Stable Diffusion 1.x/2.x/XL, PixArt, Sana, SD3, Flux), or "
                    "register_family() a Family for this transformer."))


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
    """What the prompt-only layers read for ``prompts`` (``[B, T, d]`` float64) and, for families whose
    padding is masked out, the attention mask ``[B, T]`` (bool); via the pipeline's own encode_prompt."""
    family, comp = family_of(pipe)
    fn = getattr(pipe, "encode_prompt", None)
    if not callable(fn) or getattr(pipe, "tokenizer", None) is None or family.segments is None:
        raise UnsupportedModelError(
            explain("cannot encode prompts with this object", got=type(pipe).__name__,
                    expected="a diffusers pipeline with a tokenizer and encode_prompt() of a supported family",
                    fix="Pass the pipeline, or use text_edit_from_embeddings(model, keys, targets)."))
    params = inspect.signature(fn).parameters
    device = getattr(pipe, "_execution_device", None) or next(comp.parameters()).device
    kw: dict[str, Any] = {"prompt": list(prompts), "prompt_2": None, "prompt_3": None, "device": device,
                          "num_images_per_prompt": 1, "do_classifier_free_guidance": False}
    kw |= {k: call_default(pipe, k) for k in ("max_sequence_length", "complex_human_instruction")}
    with torch.no_grad():
        out = fn(**{k: v for k, v in kw.items() if k in params and (v is not None or k.startswith("prompt_"))})
        emb = out[family.outputs[0]]  # [B, T, e]
        keys = family.context(comp, emb.to(next(comp.parameters()).dtype))  # [B, T, d]
    m = family.outputs[1]
    mask = out[m].to(torch.bool).cpu() if m is not None and family.masked else None  # [B, T]
    return keys.detach().to(torch.float64).cpu(), mask


def segments(pipe: Any, prompt: str, length: int) -> list[Segment]:
    """The prompt's token runs over the ``length`` positions the layers read (see :class:`Segment`)."""
    family, _ = family_of(pipe)
    if family.segments is None:
        raise UnsupportedModelError(explain(f"the {family.name} family cannot tokenise prompts yet",
                                            fix="Use text_edit_from_embeddings(model, keys, targets)."))
    return family.segments(pipe, as_encoded(pipe, prompt), length)


def as_encoded(pipe: Any, prompt: str) -> str:
    """``prompt`` as the pipeline's encode_prompt sees it before tokenising: PixArt and Sana lower-case
    and strip it (``_text_preprocessing``, with encode_prompt's default ``clean_caption=False``), and
    their T5 / Gemma tokenisers are case-sensitive, so token ids must come from the same text."""
    pre = getattr(pipe, "_text_preprocessing", None)
    if not callable(pre):
        return prompt
    out = pre(prompt, clean_caption=False)
    return str(out[0]) if isinstance(out, list | tuple) and out else prompt


__all__ = [
    "FAMILIES",
    "UNET",
    "Family",
    "Segment",
    "as_encoded",
    "call_default",
    "cross_attention_layers",
    "encode_prompts",
    "family_of",
    "register_family",
    "segments",
]
