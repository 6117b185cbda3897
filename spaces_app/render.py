"""Renders of the shared model that need no lock: the chain renderer for models that are a plain chain
of layers (the embedded face DCGAN, any ``nn.Sequential``).

The core's preview swaps a layer's weight into the model for the length of a forward, so previews of
one model take turns (:func:`olam_edit.model_lock`): with eight visitors, eight renders queue behind one
lock however many cores there are. A chain can be run without touching the model at all: every layer
is called through its functional op with tensors taken from a snapshot, which is read under the
model's lock in microseconds (so it never sees another preview's swapped weight), and the edited
layers get the tensors :func:`olam_edit.edited_parameters` gives the preview. The images are the
preview's own, bit for bit: the same ops on the same tensors in the same batches.

The activations entering the first edited layer depend on the base model only, so they are cached
per batch of seeds and shared by every session: a render runs from the edited layer on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from olam_edit import Edit, edited_parameters, model_lock

BATCH = 16  # seeds per forward: the generator's own images() batch, so the pixels match it exactly
HEAD_CACHE_BYTES = 128 * 2**20  # activations kept for the heads of the chain (base model, shared)
PARAMETER_FREE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten, nn.Upsample, nn.SiLU, nn.GELU)
Snapshot = dict[str, Tensor]  # "layer.weight" -> tensor, as named in model.named_parameters() / buffers()


def chain_of(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model's layers in the order its forward runs them, or None when that order is not known.

    Known chains: an ``nn.Sequential``, and the face DCGAN (its forward is ``self.main(z)``). Every layer
    must be a supported leaf (linear, conv, transposed conv, batch norm in eval mode, or a layer without
    parameters or buffers); anything else (or a model in training mode) has no chain.
    """
    from olam_edit.adapters.face_dcgan.model import FaceDCGAN

    if type(model) is FaceDCGAN:
        prefix, seq = "main.", model.main
    elif type(model) is nn.Sequential:
        prefix, seq = "", model
    else:
        return None
    layers = [(prefix + name, m) for name, m in seq.named_children()]
    return layers if all(_supported(m) for _, m in layers) else None


def _supported(m: nn.Module) -> bool:
    if m.training or any(True for _ in m.children()):
        return False
    if type(m) in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d):
        return getattr(m, "padding_mode", "zeros") == "zeros"
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return m.running_mean is not None and m.running_var is not None
    return type(m) in PARAMETER_FREE and not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())


def run_layer(m: nn.Module, name: str, x: Tensor, p: Snapshot) -> Tensor:
    """``m(x)`` with its tensors from the snapshot ``p`` (the same functional op its forward calls)."""
    weight, bias = p.get(f"{name}.weight"), p.get(f"{name}.bias")
    if isinstance(m, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(m, nn.ConvTranspose2d):
        pad = m._output_padding(x, None, m.stride, m.padding, m.kernel_size, 2, m.dilation)  # type: ignore[arg-type]
        return F.conv_transpose2d(x, weight, bias, m.stride, m.padding, pad, m.groups, m.dilation)
    if isinstance(m, nn.Conv2d):
        return m._conv_forward(x, weight, bias)
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return F.batch_norm(x, p[f"{name}.running_mean"], p[f"{name}.running_var"], weight, bias, False, 0.0, m.eps)
    return m.forward(x)  # no parameters, no buffers: nothing to snapshot, and no hooks run


class ChainRenderer:
    """Lock-free previews of a chain model: ``images(z_key, z, edit, scale)`` is the model's output for
    latents ``z`` with ``edit`` at ``scale`` (None: the base model). The model is never changed.

    ``z_key`` names the latents (their seeds) for the head cache; the same key must always mean the
    same latents. The cache also keys on the head's tensor versions, so an in-place change of the base
    weights (which the Space never makes) is never served stale.
    """

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
        self.model, self.layers = model, layers
        self.index = {name: i for i, (name, _) in enumerate(layers)}
        self._heads: OrderedDict[tuple, Tensor] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, model: nn.Module) -> ChainRenderer | None:
        layers = chain_of(model)
        return None if layers is None else cls(model, layers)

    def supports(self, edit: Edit | None) -> bool:
        return edit is None or all(name in self.index for name in edit.deltas)

    def snapshot(self, edit: Edit | None, scale: float) -> Snapshot:
        """Every tensor of the chain, and the edited layers' tensors, read in one turn of the model's lock."""
        with model_lock(self.model):  # no preview is mid-swap while the references are taken
            tensors = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
            if edit is not None and scale != 0:
                tensors.update(edited_parameters(self.model, edit, scale))  # the preview's own tensors
            return {k: v.detach() for k, v in tensors.items()}

    @torch.no_grad()
    def images(self, z_key: tuple, z: Tensor, edit: Edit | None = None, scale: float = 1.0,
               tensors: Snapshot | None = None) -> Tensor:
        """The model's output ``[B, ...]`` for latents ``z`` as the preview of ``edit`` at ``scale`` gives
        it. ``tensors``: this edit's :meth:`snapshot`, when the caller took it already (one per render)."""
        p = tensors if tensors is not None else self.snapshot(edit, scale)
        edited = edit is not None and scale != 0
        start = min((self.index[n] for n in edit.deltas), default=len(self.layers)) if edited else len(self.layers)
        x = self._head(z_key, z, start, p)
        for name, m in self.layers[start:]:
            x = run_layer(m, name, x, p)
        return x

    def _head(self, z_key: tuple, z: Tensor, start: int, p: Snapshot) -> Tensor:
        """The activations entering layer ``start`` for ``z`` (base model; cached)."""
        names = [n for n, _ in self.layers[:start]]
        version = tuple(t._version for k, t in p.items() if k.rsplit(".", 1)[0] in names)
        key = (z_key, start, version)
        with self._lock:
            if key in self._heads:
                self._heads.move_to_end(key)
                return self._heads[key]
        x = z
        for name, m in self.layers[:start]:
            x = run_layer(m, name, x, p)
        with self._lock:
            self._heads[key] = x
            while sum(t.numel() * t.element_size() for t in self._heads.values()) > HEAD_CACHE_BYTES:
                self._heads.popitem(last=False)
        return x


def batched(seeds: Sequence[int], size: int = BATCH) -> list[list[int]]:
    """``seeds`` in consecutive batches of ``size`` (the last one shorter)."""
    return [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]


def render_seeds(generator: Any, renderer: ChainRenderer, seeds: Sequence[int], edit: Edit | None,
                 scale: float, finish: Callable[[Tensor], Tensor]) -> Tensor:
    """``generator.images(seeds, edit, scale)`` through ``renderer``: the same batches, latents and
    output mapping (``finish``, the generator's own), without the model's lock."""
    p = renderer.snapshot(edit, scale)  # once for every batch
    out = [finish(renderer.images(tuple(chunk), generator.latents(chunk).to(generator.device), edit, scale, p))
           for chunk in batched(seeds)]
    return torch.cat(out)  # [B, 3, H, W]
