"""The layer handle of StyleGAN2's modulated convolution (layout ``conv2d``, kind ``stylegan2_modconv``).

A key is the *modulated* input ``s (.) x`` at one pixel
(``[B, I, H, W]``, read from ``conv.key_tap``); the value is the demodulated convolution output
(after the up-sampling blur on up layers), before noise, bias and activation (``conv.value_tap``).
The effective weight is ``conv.scale * conv.weight``; edits are stored in those units.

Two things make this layer differ from a plain conv:

* **The value depends on the style, not only on the keys.** ``value = d(W, s) (.) conv(k, W)`` with
  the demodulation ``d[b, o] = 1 / ||W[o] (.) s[b]||`` (see ``ModulatedConv.demodulation``), and
  ``s`` cannot be recovered from ``k = s (.) x``. So every key map a hook of this handle delivers
  is recorded with the style of its batch in a small book per module, and :meth:`linear_op` looks
  the style up again by the key map's *content* (shape and 64 evenly spaced entries, compared
  exactly; a float64 copy of float32 keys matches). A *pinned* handle (``ModConvHandle(name,
  module, pin=True)``, which ``StyleGAN2Adapter.handle`` gives out) and ``capture_input`` pin
  their entries (the 256 latest are kept, enough for a rewrite's paste, copy and context samples
  while a statistics pass runs); the plain handle ``get_handle`` makes (statistics passes) keeps
  only the latest 4. A key map that no hook delivered raises RequestError.
* **The value is not linear in W.** Unfrozen, :meth:`linear_op` computes ``d`` from the ``w`` it is
  given: for the layer's current weight it reproduces the network's values (bit for bit in
  float64). The solver calls :meth:`freeze` with a weight; until ``freeze(None)``, ``d`` comes from
  that weight, which makes :meth:`linear_op` and :meth:`delta_response` linear in the weight
  (hold the demodulation fixed, solve, recompute it with W1, repeat: ``linear_in_weight`` is
  False, so the solver does this).

The solver's closed form shares one basis of responses across output channels, but a frozen ``d``
scales each output channel differently. :meth:`output_scale` and :meth:`unscaled_delta_response`
(hooks declared on ``LayerHandle``) expose that split, and the solver weights each output channel
by its own scale. Asked directly for ``delta_response`` with other than ``O`` output channels,
the handle scales by the mean of ``d`` over output channels instead: an approximation, exact only
when ``d`` is the same for every output channel.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from olam_edit.errors import RequestError, ShapeMismatchError, explain
from olam_edit.memory import layout as L
from olam_edit.memory.handles import LayerHandle

SIGNATURE_POINTS = 64
PINNED_STYLES = 256
RECENT_STYLES = 4

Signature = tuple[tuple[int, ...], tuple[float, ...]]


def key_signature(x: Tensor) -> Signature:
    """Shape and ``SIGNATURE_POINTS`` evenly spaced entries of ``x`` (as float64): how a key map is found."""
    flat = x.detach().reshape(-1)  # [B * I * H * W]
    n = min(SIGNATURE_POINTS, flat.numel())
    idx = torch.linspace(0, flat.numel() - 1, n, dtype=torch.float64).round().long().to(flat.device)
    return tuple(int(s) for s in x.shape), tuple(flat[idx].to(torch.float64).tolist())


class StyleBook:
    """Styles ``[B, I]`` of the key maps a module's hooks delivered, found again from the keys."""

    def __init__(self) -> None:
        self._pinned: OrderedDict[Signature, Tensor] = OrderedDict()
        self._recent: OrderedDict[Signature, Tensor] = OrderedDict()

    def add(self, keys: Tensor, style: Tensor, *, pinned: bool) -> None:
        """Record ``style`` [B, I] as the style of ``keys`` [B, I, H, W]."""
        book, cap = (self._pinned, PINNED_STYLES) if pinned else (self._recent, RECENT_STYLES)
        sig = key_signature(keys)
        book[sig] = style.detach()
        book.move_to_end(sig)
        while len(book) > cap:
            book.popitem(last=False)

    def find(self, x: Tensor, layer: str) -> Tensor:
        """The style ``[B, I]`` recorded for key map ``x``; RequestError when none was."""
        sig = key_signature(x)
        for book in (self._pinned, self._recent):
            if sig in book:
                return book[sig]
        raise RequestError(explain(
            f"layer {layer!r}: these keys were not captured from the model, so their style is unknown",
            got=f"a key map of shape {tuple(x.shape)}",
            expected="keys delivered by handle.capture_input() or generator.keys_and_values()",
            fix="A StyleGAN2 value depends on the style as well as the keys: capture the keys with the "
                "handle's hooks (and pass them on unmodified, any float dtype)."))


_BOOKS: weakref.WeakKeyDictionary[nn.Module, StyleBook] = weakref.WeakKeyDictionary()


def style_book(module: nn.Module) -> StyleBook:
    """The StyleBook of ``module`` (made on first use; shared by every handle of the module)."""
    book = _BOOKS.get(module)
    if book is None:
        book = _BOOKS[module] = StyleBook()
    return book


class _HookPair:
    """The style and key hooks of one :meth:`ModConvHandle.register_key_hook` call; ``remove()`` drops both."""

    def __init__(self, hooks: list[RemovableHandle]) -> None:
        self.hooks = hooks

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


class _PinnedCapture:
    """``capture_input`` whose key maps stay findable (pinned in the StyleBook): ``.inputs`` [B, I, H, W]."""

    def __init__(self, handle: ModConvHandle) -> None:
        self.handle = handle
        self.inputs: list[Tensor] = []
        self._hook: _HookPair | None = None

    def __enter__(self) -> _PinnedCapture:
        self._hook = self.handle.register_key_hook(self.inputs.append, pin=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook is not None:
            self._hook.remove()


class ModConvHandle(LayerHandle):
    """Handle of a ``ModulatedConv`` (see the module docstring for keys, values, styles and freezing)."""

    layout = L.CONV2D
    kind = "stylegan2_modconv"
    linear_in_weight = False  # the demodulation depends on W: the solver freezes it and refines

    def __init__(self, name: str, module: nn.Module, *, pin: bool = False) -> None:
        super().__init__(name, module)
        self.pin = pin  # record the styles of the key maps this handle's hooks deliver as pinned
        self._frozen: Tensor | None = None  # [O, I, k, k] weight the demodulation is held at

    def pinned(self) -> ModConvHandle:
        """The same layer's handle with ``pin=True`` (what the StyleGAN2 adapter hands out)."""
        return ModConvHandle(self.name, self.module, pin=True)

    # -- weights ---------------------------------------------------------------------------------
    def effective_weight(self) -> Tensor:
        """``scale * weight`` in float64 ``[O, I, k, k]``: effective -> stored -> effective is exact.

        (In float32, ``fl32(scale * W) / scale`` does not always round back to ``W``, which would
        make an edit with dW = 0 on some entries change them.)
        """
        return self.parameter.to(torch.float64) * self.module.scale

    def stored_from_effective(self, w_eff: Tensor) -> Tensor:
        """``w_eff / scale`` (the core reshapes and casts to the parameter's dtype)."""
        return w_eff / self.module.scale

    @property
    def value_ratio(self) -> float:
        """2 on up-sampling layers (values at twice the key resolution), else 1."""
        return 2.0 if self.module.up else 1.0

    # -- styles and demodulation -----------------------------------------------------------------
    def style_of(self, x: Tensor) -> Tensor:
        """The style ``[B, I]`` of a captured key map ``x`` ``[B, I, H, W]``, in x's dtype and device."""
        if x.ndim != 4 or x.shape[1] != self.module.in_channels:
            raise ShapeMismatchError(explain(f"layer {self.name!r} needs a key map", got=tuple(x.shape),
                                             expected=f"[B, {self.module.in_channels}, H, W]"))
        return style_book(self.module).find(x, self.name).to(x.device, x.dtype)

    def freeze(self, w_eff: Tensor | None) -> None:
        """Hold the demodulation at effective weight ``w_eff`` ``[O, I, k, k]`` (None: follow ``w`` again)."""
        self._frozen = None if w_eff is None else w_eff.detach()

    def _demod(self, x: Tensor, w: Tensor) -> Tensor | None:
        """``[B, O]`` demodulation of key map x's style at ``w``, or at the frozen weight; None if off."""
        ref = w if self._frozen is None else self._frozen
        return self.module.demodulation(ref.to(x.dtype), self.style_of(x))

    def output_scale(self, x: Tensor) -> Tensor | None:
        """``[B, O]``: the per-sample, per-output-channel factor of the (frozen) linear map.

        Frozen: the demodulation at the frozen weight; unfrozen: at the layer's current weight.
        ``delta_response(x, lam, D) == output_scale(x)[:, :, None, None] * unscaled_delta_response(...)``.
        """
        return self._demod(x, self.effective_weight().to(x.device))

    # -- keys and values -------------------------------------------------------------------------
    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        """The value map ``[B, O, H', W']`` of key map ``x`` ``[B, I, H, W]`` under effective weight ``w``.

        Unfrozen, the demodulation follows ``w`` (the network's own value for the current weight);
        frozen, it is held at the frozen weight, so the map is linear in ``w``.
        """
        return self.module.conv_value(x, w.to(x.dtype), self._demod(x, w))

    def unscaled_delta_response(self, x: Tensor, lam: Tensor, D: Tensor) -> Tensor:
        """``conv(D x, lam)`` (blur included on up layers), without demodulation: linear, any out channels."""
        return self.module.conv_value(self.project_input(x, D), lam.to(x.dtype))  # [B, O', H', W']

    def delta_response(self, x: Tensor, lam: Tensor, D: Tensor) -> Tensor:
        """Change of the value map for dW = dense(lam, D) with the demodulation held fixed.

        Held at the frozen weight (the layer's current weight when unfrozen), so it is linear in lam.
        For lam with other than ``O`` output channels (the present core's shared basis responses)
        the mean demodulation over output channels scales it (see the module docstring).
        """
        raw = self.unscaled_delta_response(x, lam, D)  # [B, O', H', W']
        scale = self.output_scale(x)  # [B, O] or None
        if scale is None:
            return raw
        if lam.shape[0] != scale.shape[1]:
            scale = scale.mean(dim=1, keepdim=True)  # [B, 1]
        return raw * scale[:, :, None, None]

    def register_key_hook(self, fn: Callable[[Tensor], Any], *, pin: bool | None = None) -> _HookPair:
        """Call ``fn(keys)`` with the key map ``s (.) x`` ``[B, I, H, W]`` on every forward.

        The batch's style is recorded with the keys first (so ``fn`` may raise to stop the forward,
        as statistics passes do); ``pin`` (default: the handle's own ``pin``) keeps the record among
        the 256 pinned ones. ``fn``'s return value is ignored (the keys are never replaced).
        """
        book, seen = style_book(self.module), {}
        pinned = self.pin if pin is None else pin

        def on_style(_m: nn.Module, _args: Any, style: Tensor) -> None:
            seen["style"] = style.detach()  # [B, I]

        def on_keys(_m: nn.Module, _args: Any, keys: Tensor) -> None:
            book.add(keys, seen["style"], pinned=pinned)
            fn(keys)

        return _HookPair([self.module.style_tap.register_forward_hook(on_style),
                          self.module.key_tap.register_forward_hook(on_keys)])

    def capture_input(self) -> _PinnedCapture:
        """Context manager recording the key maps of every forward (``.inputs``), styles pinned."""
        return _PinnedCapture(self)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "up": bool(self.module.up), "demodulate": bool(self.module.demodulate)}
