"""Build a generator from a config and a state dict, refusing missing or unexpected keys."""

from __future__ import annotations

import torch

from olam_edit.adapters.stylegan2 import config as arch
from olam_edit.adapters.stylegan2.config import StyleGAN2Config, check_sizes
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.errors import ShapeMismatchError, WeightFileError, explain

FORMAT_NAME = "olam-edit-stylegan2"


FORMAT_VERSION = 1


WEIGHTS_NAME = "model.safetensors"


CONFIG_NAME = "config.json"


def build_generator(config: StyleGAN2Config, state: dict[str, torch.Tensor], *,
                    source: str) -> StyleGAN2Generator:
    """A generator of ``config`` holding exactly ``state`` (float32, eval mode, no grad).

    Raises WeightFileError on sizes beyond :func:`~olam_edit.adapters.stylegan2.config.check_sizes`'
    bounds or :data:`~olam_edit.adapters.stylegan2.config.MAX_PARAMETERS`, on missing or unexpected
    keys, and ShapeMismatchError on wrong shapes: all before any module is built (the expected shapes
    come from a copy of the network on the ``meta`` device, which allocates nothing).
    """
    check_config(config, source)
    with torch.device("meta"):
        expected = StyleGAN2Generator(config).state_dict()  # shapes only
    total = sum(ref.numel() for ref in expected.values())
    if total > arch.MAX_PARAMETERS:
        raise WeightFileError(explain(f"{source}: the network read from the file is too large", got=f"{total} values",
                                      expected=f"at most MAX_PARAMETERS = {arch.MAX_PARAMETERS}",
                                      fix="The file is damaged or was crafted; nothing was built."))
    _check_keys(set(expected), set(state), source)
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ShapeMismatchError(explain(
                f"{source}: tensor {key!r} has the wrong shape", got=tuple(state[key].shape),
                expected=tuple(ref.shape), fix="The file does not match the architecture read from it."))
    model = StyleGAN2Generator(config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval().requires_grad_(False)


def check_config(config: StyleGAN2Config, source: str) -> None:
    """Every size of ``config`` within the loader's bounds (WeightFileError otherwise)."""
    check_sizes(source, size=config.size, style_dim=config.style_dim, z_dim=config.z_dim, n_mlp=config.n_mlp,
                channels=list(config.channels.values()), img_channels=config.img_channels)


def _check_keys(expected: set[str], got: set[str], source: str) -> None:
    """Raise WeightFileError naming the missing and unexpected tensor names."""
    missing, extra = sorted(expected - got), sorted(got - expected)
    if missing or extra:
        raise WeightFileError(explain(
            f"{source}: tensors do not match a StyleGAN2 generator",
            got=f"missing {_short(missing)}, unexpected {_short(extra)}",
            fix="Pass an unmodified rosinality .pt, NVlabs .pkl or olam-edit model folder."))


def _short(names: list[str], limit: int = 6) -> str:
    """``[a, b, ... (+n more)]`` for error messages."""
    head = ", ".join(names[:limit]) or "none"
    return head + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")
