"""NVlabs stylegan2-ada / stylegan3 ``.pkl`` files (``G_ema``) mapped onto our network."""

from __future__ import annotations

import math
import os

import torch

from olam_edit.adapters.stylegan2.build import build_generator
from olam_edit.adapters.stylegan2.config import StyleGAN2Config, check_sizes, default_channels
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.adapters.stylegan2.rosinality import _describe
from olam_edit.adapters.stylegan2.safety import exception_text, summary
from olam_edit.adapters.stylegan2.unpickle import PersistentRecord, safe_unpickle
from olam_edit.errors import OlamEditError, WeightFileError, explain


def load_nvlabs_pickle(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load ``G_ema`` of an NVlabs stylegan2-ada-pytorch / stylegan3 pickle, executing nothing.

    A TensorFlow-era pickle raises TensorFlowPickleError (convert it with NVlabs' ``legacy.py``);
    attributes of the wrong type raise WeightFileError, never a traceback.
    """
    with open(path, "rb") as handle:
        data = safe_unpickle(handle, source=str(path))
    g_ema = data.get("G_ema") if isinstance(data, dict) else data
    if not isinstance(g_ema, PersistentRecord) or g_ema.class_name != "Generator":
        raise WeightFileError(explain(f"{path}: no NVlabs generator in the pickle", got=_describe(data),
                                      expected='a dict with "G_ema" (a persistent Generator)'))
    try:
        return from_nvlabs(g_ema, source=str(path))
    except OlamEditError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        raise WeightFileError(explain(f"{path}: malformed NVlabs generator", got=exception_text(exc),
                                      expected="a stylegan2-ada-pytorch / stylegan3 G_ema")) from exc


def from_nvlabs(g_ema: PersistentRecord, *, source: str = "NVlabs pickle") -> StyleGAN2Generator:
    """Convert a ``Generator`` record (StyleGAN2, skip architecture, no labels) to our generator."""
    synthesis, mapping = g_ema.child("synthesis"), g_ema.child("mapping")
    _refuse_unsupported(g_ema, synthesis, source)
    config = nvlabs_config(g_ema, synthesis, mapping, source)
    state = _nvlabs_mapping_state(mapping, config)
    for res in config.resolutions:
        state |= _nvlabs_block_state(synthesis.child(f"b{res}"), res)
    return build_generator(config, state, source=source)


def _refuse_unsupported(g_ema: PersistentRecord, synthesis: PersistentRecord, source: str) -> None:
    """Raise WeightFileError for StyleGAN3 synthesis, conditional models and non-skip generators."""
    if synthesis.has_child("input") or not synthesis.has_child("b4"):
        raise WeightFileError(explain(f"{source}: a StyleGAN3 (alias-free) generator", expected="StyleGAN2",
                                      fix="Only StyleGAN2 networks (stylegan2-ada-pytorch, or stylegan3's "
                                          "--cfg=stylegan2) can be loaded."))
    if int(g_ema.state.get("c_dim", 0) or 0) > 0:
        raise WeightFileError(explain(f"{source}: a class-conditional generator",
                                      got=f"c_dim={summary(g_ema.state['c_dim'])}", expected="c_dim=0",
                                      fix="Conditional StyleGAN2 models are not supported."))
    block = synthesis.child("b4")
    if block.state.get("architecture", "skip") != "skip":
        raise WeightFileError(explain(f"{source}: unsupported generator architecture",
                                      got=summary(block.state.get("architecture")), expected="skip"))


def nvlabs_config(g_ema: PersistentRecord, synthesis: PersistentRecord, mapping: PersistentRecord,
                  source: str = "NVlabs pickle") -> StyleGAN2Config:
    """Architecture of an NVlabs StyleGAN2 generator, from its records' attributes and shapes.

    Every size is checked against :func:`~olam_edit.adapters.stylegan2.config.check_sizes`' bounds
    (WeightFileError) before anything is derived from it.
    """
    sizes = {"size": int(g_ema.state["img_resolution"]), "style_dim": int(g_ema.state["w_dim"]),
             "z_dim": int(g_ema.state["z_dim"]), "n_mlp": int(mapping.state["num_layers"]),
             "img_channels": int(g_ema.state.get("img_channels", 3))}
    check_sizes(source, **sizes)
    size = sizes["size"]
    res_list = [2**i for i in range(2, int(math.log2(size)) + 1)]
    channels = {res: int(synthesis.child(f"b{res}").child("conv1").tensors()["weight"].shape[0])
                for res in res_list}
    check_sizes(source, channels=list(channels.values()))
    fc0 = mapping.child("fc0")
    clamp = synthesis.child("b4").child("conv1").state.get("conv_clamp")
    multiplier = next((m for m in (1, 2, 4) if default_channels(size, m) == channels), 2)
    return StyleGAN2Config(**sizes, channel_multiplier=multiplier, channels=channels,
                           lr_mlp=float(fc0.state.get("bias_gain", 0.01)),
                           conv_clamp=None if clamp is None else float(clamp), flavor="nvlabs")


def _nvlabs_mapping_state(mapping: PersistentRecord, config: StyleGAN2Config) -> dict[str, torch.Tensor]:
    """Mapping weights and ``w_avg`` in our names."""
    state = {}
    for i in range(config.n_mlp):
        fc = mapping.child(f"fc{i}")
        if fc.state.get("activation", "lrelu") != "lrelu":
            raise WeightFileError(explain("unsupported mapping activation", got=summary(fc.state.get("activation")),
                                          expected="lrelu"))
        state |= {f"mapping.fc{i}.{k}": v for k, v in fc.tensors().items()}
    avg = mapping.tensors().get("w_avg")
    state["mapping.w_avg"] = torch.zeros(config.style_dim) if avg is None else avg
    return state


def _nvlabs_block_state(block: PersistentRecord, res: int) -> dict[str, torch.Tensor]:
    """One synthesis block (``b{res}``) in our names: const, conv0 / conv1 layers, toRGB."""
    n = 2 * int(math.log2(res)) - 3
    state = {}
    if res == 4:
        state["const"] = block.tensors()["const"]
    else:
        state |= _nvlabs_layer_state(block.child("conv0"), f"layers.layer{n}")
    state |= _nvlabs_layer_state(block.child("conv1"), f"layers.layer{n + 1}")
    rgb = block.child("torgb").tensors()
    prefix = f"to_rgbs.rgb{res}"
    state |= {f"{prefix}.conv.weight": rgb["weight"], f"{prefix}.bias": rgb["bias"]}
    affine = block.child("torgb").child("affine").tensors()
    state |= {f"{prefix}.conv.affine.{k}": v for k, v in affine.items()}
    return state


def _nvlabs_layer_state(layer: PersistentRecord, prefix: str) -> dict[str, torch.Tensor]:
    """One ``SynthesisLayer`` in our names; a layer without noise gets zero strength."""
    if layer.state.get("activation", "lrelu") != "lrelu":
        raise WeightFileError(explain(f"{prefix}: unsupported activation", got=summary(layer.state.get("activation")),
                                      expected="lrelu"))
    own = layer.tensors()
    res = int(layer.state.get("resolution", own["weight"].shape[-1]))
    const = own.get("noise_const", torch.zeros(res, res))
    state = {f"{prefix}.conv.weight": own["weight"], f"{prefix}.bias": own["bias"],
             f"{prefix}.noise_strength": own.get("noise_strength", torch.zeros(())).reshape(()),
             f"{prefix}.noise_const": const.reshape(1, 1, *const.shape[-2:])}
    return state | {f"{prefix}.conv.affine.{k}": v for k, v in layer.child("affine").tensors().items()}
