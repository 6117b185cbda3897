"""Export an Edit as a LoRA that stock PEFT and diffusers load: exactly W0 + B A, alpha = rank.

- Linear (rank r): A = D ``[r, in]``, B = Lambda ``[out, r]``.
- Conv2d (rank r, kernel kh x kw): a rank r*kh*kw conv LoRA. A is a kh x kw conv from ``in`` to
  ``r*kh*kw`` channels with one-hot taps times D, A[(r,y,x), i, y', x'] = D[r,i] [y=y'][x=x'];
  B is a 1x1 conv holding Lambda, B[o, (r,y,x)] = Lambda[o,r,y,x]. PEFT's conv LoRA copies the
  base layer's kernel size, stride and padding to A (not its dilation: dilated convs are refused
  when the model is given).

Formats: ``peft`` writes ``adapter_model.safetensors`` (keys ``base_model.model.<layer>.lora_A.weight``)
and ``adapter_config.json`` (``rank_pattern`` / ``alpha_pattern`` where ranks differ); ``diffusers``
writes ``pytorch_lora_weights.safetensors`` with keys ``<prefix>.<layer>.lora_A.weight`` (prefix
``unet`` by default, else the edit's component: ``transformer`` for a DiT's edits, which
``pipe.load_lora_weights`` and ``transformer.load_lora_adapter(prefix="transformer")`` read) and the
``lora_adapter_metadata`` header diffusers reads; ``kohya`` writes one ``lora.safetensors`` with
``lora_unet_*`` / ``lora_te_*`` keys for A1111, ComfyUI and kohya's scripts (:mod:`.lora_kohya`).
Pure safetensors and JSON: neither peft nor diffusers is imported.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from olam_edit.edit.lora_kohya import write_kohya
from olam_edit.errors import LoraExportError, explain
from olam_edit.files.atomic import atomic_save_safetensors, atomic_write_bytes
from olam_edit.memory import layout as L
from olam_edit.memory.delta import Delta

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit

FORMATS = ("peft", "diffusers", "kohya")
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
EXPORTABLE_KINDS = {"linear": L.LINEAR, "conv2d": L.CONV2D}


@dataclass
class LoraFactors:
    """``A`` (lora_A weight) and ``B`` (lora_B weight) of one layer, with dW = B A (reshaped)."""

    A: Tensor
    B: Tensor

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def lora_factors(delta: Delta, dtype: torch.dtype = torch.float32) -> LoraFactors:
    """Exact LoRA factors of a Linear or Conv2d delta (its ``scale`` is folded into B)."""
    lam, D = delta.lam.detach().to(torch.float64).cpu() * delta.scale, delta.directions.detach().to(torch.float64).cpu()
    if delta.layout == L.LINEAR:
        return LoraFactors(D.to(dtype).contiguous(), lam.to(dtype).contiguous())
    if delta.layout != L.CONV2D:
        raise LoraExportError(explain("only Linear and Conv2d deltas export as LoRA", got=delta.layout,
                                      fix="Keep this edit in olam-edit's own format (Edit.save)."))
    n_out, r, kh, kw = lam.shape
    taps = torch.eye(kh * kw, dtype=torch.float64).reshape(kh * kw, kh, kw)  # one-hot kernels [t, kh, kw]
    A = torch.einsum("ri,tyx->rtiyx", D, taps).reshape(r * kh * kw, D.shape[1], kh, kw)  # [(r,t), in, kh, kw]
    B = lam.reshape(n_out, r * kh * kw, 1, 1)  # [out, (r,t), 1, 1], same (r, y, x) order
    return LoraFactors(A.to(dtype).contiguous(), B.to(dtype).contiguous())


def _check_exportable(edit: Edit, model: nn.Module | None) -> None:
    layers = edit.manifest.get("layers", {})
    for name, delta in edit.deltas.items():
        kind = layers.get(name, {}).get("kind", delta.layout)
        if EXPORTABLE_KINDS.get(kind) != delta.layout:
            raise LoraExportError(
                explain(f"layer {name!r} cannot be written as a LoRA", got=f"kind {kind!r}",
                        expected="an nn.Linear or nn.Conv2d layer",
                        fix="PEFT cannot wrap this layer (StyleGAN2 weights, transposed convs): use Edit.save()."))
        m = dict(model.named_modules()).get(name) if model is not None else None
        if isinstance(m, nn.Conv2d) and (tuple(m.dilation) != (1, 1) or m.groups != 1):
            raise LoraExportError(explain(f"conv {name!r} is dilated or grouped", got=f"dilation {m.dilation}",
                                          fix="PEFT's conv LoRA ignores dilation; keep this edit in Edit.save()."))


def _patterns(ranks: dict[str, int]) -> tuple[int, dict[str, int]]:
    """The most common rank and ``{^layer: rank}`` for the others (PEFT's pattern keys are regexes)."""
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    return r, {f"^{name}": k for name, k in ranks.items() if k != r}


def lora_config(edit: Edit, ranks: dict[str, int]) -> dict[str, Any]:
    """The LoraConfig fields: alpha equals rank everywhere, so each layer adds exactly B A."""
    r, pattern = _patterns(ranks)
    base = edit.manifest.get("base_model") or {}
    return {"peft_type": "LORA", "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "task_type": None, "modules_to_save": None, "base_model_name_or_path": base.get("id"),
            "revision": base.get("revision")}


def to_lora(edit: Edit, directory: str | Path, format: str = "peft", *, prefix: str | None = None,
            model: nn.Module | None = None, dtype: torch.dtype = torch.float32,
            base_version: str | None = None) -> Path:
    """Write ``edit`` as a LoRA folder in ``format`` (``"peft"``, ``"diffusers"`` or ``"kohya"``); returns
    the folder.

    ``prefix`` (diffusers format) defaults to the edit's component, else ``"unet"``. ``base_version``
    (kohya format: ``sd_v1``, ``sd_v2``, ``sd_v2_v``, ``sdxl_base_v1-0``) is written to the metadata,
    inferred from the edited layers when None. With ``model``, conv layers a LoRA cannot reproduce
    exactly (dilated, grouped) are refused. Nothing is written when the edit cannot be exported.
    """
    if format not in FORMATS:
        raise LoraExportError(explain("unknown LoRA format", got=repr(format), expected=" or ".join(FORMATS)))
    _check_exportable(edit, model)
    if format == "kohya":  # float64 factors: the kohya writer rescales up before casting to dtype
        exact = {name: lora_factors(d, torch.float64) for name, d in edit.deltas.items()}
        return write_kohya(edit, exact, directory, version=base_version, dtype=dtype)
    factors = {name: lora_factors(d, dtype) for name, d in edit.deltas.items()}
    ranks = {name: f.rank for name, f in factors.items()}
    config = lora_config(edit, ranks)
    out = Path(directory)
    meta = {"format": "pt", "olam_edit": json.dumps(edit.manifest, sort_keys=True)}
    if format == "peft":
        tensors = _state_dict(factors, "base_model.model.")
        atomic_save_safetensors(tensors, out / PEFT_WEIGHTS, meta)
        atomic_write_bytes(out / PEFT_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        return out
    prefix = prefix or edit.manifest.get("component") or "unet"
    packed = {f"{prefix}.{k}": v for k, v in config.items() if k not in ("peft_type", "task_type", "revision",
                                                                          "base_model_name_or_path")}
    meta[LORA_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True)
    atomic_save_safetensors(_state_dict(factors, f"{prefix}."), out / DIFFUSERS_WEIGHTS, meta)
    return out


def _state_dict(factors: dict[str, LoraFactors], prefix: str) -> dict[str, Tensor]:
    tensors = {}
    for name, f in factors.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = f.A
        tensors[f"{prefix}{name}.lora_B.weight"] = f.B
    return tensors
