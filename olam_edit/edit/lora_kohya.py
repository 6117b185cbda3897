"""Export an Edit as a kohya-style LoRA file, the single ``.safetensors`` A1111, ComfyUI and kohya's
sd-scripts load (and diffusers' ``load_lora_weights``, which converts such keys): exactly W0 + up down.

Keys: ``<prefix>_<module path with "." replaced by "_">`` then ``.lora_down.weight`` (our A = D),
``.lora_up.weight`` (our B = Lambda, times r / R) and ``.alpha``. Every module gets the same alpha R
(the most common LoRA rank of the file) and a layer of rank r has its up scaled by r / R, so the
delta alpha / r * up down is exactly B A in every reader: A1111, ComfyUI and kohya apply each module's
alpha, while diffusers' kohya conversion loses the alphas of attention projections (their converted
names miss its pattern) and gives them the file's most common alpha, which here is everyone's.
The prefix is ``lora_unet`` for UNet layers, ``lora_te`` / ``lora_te2`` for the text encoders
(``lora_te1`` / ``lora_te2`` on SDXL, as kohya names them). A k x k conv delta of rank r
is kohya's conv LoRA ("LoCon"): down is a k x k conv to r*k*k channels, up a 1x1 conv (see
:func:`olam_edit.edit.lora.lora_factors`), which every one of those readers multiplies out the same way.

Module paths use diffusers' UNet names (``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``),
not the original LDM / SGM ones (``input_blocks.4.1...``): kohya's scripts write these very names for
SD 1.x / 2.x (their UNet is diffusers-shaped), A1111 maps them to its LDM layout, ComfyUI maps them
through its diffusers-to-UNet table, and diffusers reads them without a block-number remap; the SGM
spelling would need the UNet's block layout to be rebuilt here, and gains no reader. Because "_" is
ambiguous once "." has become "_", readers rebuild the path from a fixed list of UNet and CLIP paths:
only layers on that list (:data:`UNET_PATH`, :data:`TEXT_PATH`) are written, any other layer is
refused with :class:`~olam_edit.errors.LoraExportError` naming it. Components other than the UNet and
the CLIP text encoders (a DiT's ``transformer``, a VAE) have no kohya spelling that diffusers' layout
gives: use the ``diffusers`` format for them.

The file's metadata carries what those tools read (kohya's own key names): ``ss_network_module``
(``networks.lora``), ``ss_network_dim`` / ``ss_network_alpha``, ``ss_network_args`` (``conv_dim`` /
``conv_alpha`` when convs are edited), ``ss_v2``, ``ss_base_model_version`` and ``ss_sd_model_name``
where the base model is known, and the edit's manifest (``olam_edit``).
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from olam_edit.errors import LoraExportError, explain
from olam_edit.files.atomic import atomic_save_safetensors

if TYPE_CHECKING:  # only for annotations
    from olam_edit.edit.core import Edit
    from olam_edit.edit.lora import LoraFactors

KOHYA_WEIGHTS = "lora.safetensors"
NETWORK_MODULE = "networks.lora"  # kohya's ss_network_module for its LoRA / LoCon network
SD1, SD2, SDXL = "sd_v1", "sd_v2", "sdxl_base_v1-0"  # kohya's ss_base_model_version values
BASE_VERSIONS = (SD1, SD2, "sd_v2_v", SDXL)
_ARCHITECTURE = {SD1: "stable-diffusion-v1", SD2: "stable-diffusion-v2-512", "sd_v2_v": "stable-diffusion-v2-768-v",
                 SDXL: "stable-diffusion-xl-v1-base"}  # SAI model spec names
_CONTEXT_WIDTH = {768: SD1, 1024: SD2, 2048: SDXL}  # cross-attention key width of each base family

_ATTENTION = r"(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))"
_RESNET = r"(conv1|conv2|conv_shortcut|time_emb_proj)"
UNET_PATH = re.compile(
    rf"((down_blocks|up_blocks)\.\d+|mid_block)\.(attentions\.\d+\.{_ATTENTION}|resnets\.\d+\.{_RESNET})"
    r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv"
    r"|conv_in|conv_out|time_embedding\.linear_[12]")
TEXT_PATH = re.compile(r"(text_model\.)?encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12])")


def base_version(edit: Edit, given: str | None = None) -> str | None:
    """kohya's ``ss_base_model_version`` of the edit's base: ``given``, else read off the width of an edited
    cross-attention ``to_k`` / ``to_v`` (768: SD 1.x, 1024: SD 2.x, 2048: SDXL), else None (unknown)."""
    if given is not None:
        if given not in BASE_VERSIONS:
            raise LoraExportError(explain("unknown base model version", got=repr(given),
                                          expected=" or ".join(BASE_VERSIONS)))
        return given
    for name, info in (edit.manifest.get("layers") or {}).items():
        shape = info.get("shape") or []
        if re.search(r"attn2\.to_[kv]$", name) and len(shape) == 2:
            return _CONTEXT_WIDTH.get(int(shape[1]))
    return None


def key_prefix(edit: Edit, version: str | None) -> str:
    """``lora_unet`` / ``lora_te`` / ``lora_te1`` / ``lora_te2`` for the edit's component (None: the UNet)."""
    component = edit.manifest.get("component") or "unet"
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if version == SDXL else "lora_te",
                "text_encoder_2": "lora_te2"}
    if component not in prefixes:
        raise LoraExportError(explain(
            f"an edit of the {component!r} cannot be written in the kohya format", got=f"component {component!r}",
            expected="an edit of a Stable Diffusion 1.x / 2.x / SDXL 'unet' or its CLIP text encoders",
            fix="Kohya keys name UNet and CLIP layers only; write this edit with format='diffusers' "
                f"(keys {component}.*, pipe.load_lora_weights reads them) or format='peft'."))
    return prefixes[component]


def check_paths(edit: Edit, prefix: str) -> None:
    """Every edited layer must be on the path list the kohya readers rebuild names from."""
    pattern = UNET_PATH if prefix == "lora_unet" else TEXT_PATH
    for name in edit.deltas:
        if not pattern.fullmatch(name):
            raise LoraExportError(explain(
                f"layer {name!r} cannot be written in the kohya format",
                got=kohya_key(prefix, name),
                expected="a cross-attention, transformer-block, resnet, sampler conv, conv_in / conv_out or "
                         "time-embedding layer of a diffusers UNet" if prefix == "lora_unet"
                         else "a self-attention or MLP projection of a CLIP text encoder",
                fix="Kohya keys turn '.' into '_', so A1111, ComfyUI and diffusers rebuild the layer's name from "
                    "a fixed list of UNet / CLIP paths and this one is not on it: use format='diffusers' or 'peft'."))


def kohya_key(prefix: str, name: str) -> str:
    """``prefix`` + the module path with "." -> "_"; CLIP paths always as ``text_model.encoder...`` (the
    spelling of kohya's files and of transformers 4, which A1111 and ComfyUI match; diffusers maps it onto
    transformers 5's encoders, whose path has no ``text_model.``)."""
    if prefix != "lora_unet" and not name.startswith("text_model."):
        name = f"text_model.{name}"
    return f"{prefix}_{name.replace('.', '_')}"


def common_rank(factors: dict[str, LoraFactors]) -> int:
    """R, the most common LoRA rank (the first of equals): every module's alpha."""
    return collections.Counter(f.rank for f in factors.values()).most_common(1)[0][0]


def _dim(ranks: set[int]) -> str | None:
    """kohya's dim field: the rank when all agree, ``Dynamic`` (as its resize script writes) otherwise."""
    return None if not ranks else str(ranks.pop()) if len(ranks) == 1 else "Dynamic"


def _metadata(edit: Edit, factors: dict[str, LoraFactors], version: str | None) -> dict[str, str]:
    """kohya's ``ss_*`` fields (dim: the linear / conv rank, alpha: R), the SAI model spec where the base
    is known, and the edit's manifest."""
    alpha = str(float(common_rank(factors)))
    conv = _dim({f.rank for f in factors.values() if f.A.ndim == 4})
    dim = _dim({f.rank for f in factors.values() if f.A.ndim == 2}) or conv
    args = {"conv_dim": conv, "conv_alpha": alpha} if conv is not None else {}
    meta = {"format": "pt", "ss_network_module": NETWORK_MODULE, "ss_network_dim": str(dim),
            "ss_network_alpha": alpha, "ss_network_args": json.dumps(args),
            "olam_edit": json.dumps(edit.manifest, sort_keys=True)}
    base = (edit.manifest.get("base_model") or {}).get("id")
    if base:
        meta["ss_sd_model_name"] = str(base)
    if version is not None:
        meta |= {"ss_base_model_version": version, "ss_v2": str(version.startswith("sd_v2")),
                 "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{_ARCHITECTURE[version]}/lora",
                 "modelspec.implementation": "diffusers", "modelspec.title": str(edit.manifest.get("rule") or
                                                                                   base or "olam-edit edit")}
    return meta


def write_kohya(edit: Edit, factors: dict[str, LoraFactors], directory: str | Path, *,
                version: str | None = None, dtype: torch.dtype = torch.float32, filename: str = KOHYA_WEIGHTS) -> Path:
    """Write ``directory/filename`` (default ``lora.safetensors``) in the kohya layout; returns the folder.

    ``factors`` are the exact LoRA factors of every delta (:func:`olam_edit.edit.lora.lora_factors`,
    float64 best: the r / R scaling happens before the cast to ``dtype``); ``version`` is kohya's base
    model version (:data:`BASE_VERSIONS`), inferred when None. Raises LoraExportError, writing nothing,
    for a component or a layer the format cannot hold.
    """
    version = base_version(edit, version)
    prefix = key_prefix(edit, version)
    check_paths(edit, prefix)
    R = common_rank(factors)
    tensors: dict[str, Tensor] = {}
    for name, f in factors.items():
        key = kohya_key(prefix, name)
        tensors[f"{key}.lora_down.weight"] = f.A.to(dtype).contiguous()  # [r, in] or [r, in, kh, kw]
        tensors[f"{key}.lora_up.weight"] = (f.B * (f.rank / R)).to(dtype).contiguous()  # [out, r(, 1, 1)]
        tensors[f"{key}.alpha"] = torch.tensor(float(R), dtype=dtype)  # (R / r) (r / R) B A = B A
    out = Path(directory)
    atomic_save_safetensors(tensors, out / filename, _metadata(edit, factors, version))
    return out


__all__ = ["BASE_VERSIONS", "KOHYA_WEIGHTS", "NETWORK_MODULE", "TEXT_PATH", "UNET_PATH", "base_version",
           "check_paths", "common_rank", "key_prefix", "kohya_key", "write_kohya"]
