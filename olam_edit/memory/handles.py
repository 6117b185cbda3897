"""Layer handles: one editable layer seen as a linear associative memory, keys -> values.

A *key* is the input vector the layer reads at one position (a token, a pixel); the *value* is the
layer's own linear output there, before bias, normalisation and activation. Every edit has the shape
W1 = W0 + Lambda D, with D [r, in] acting on the input-channel axis only and shared by all kernel
taps. Lambda's layout depends on the layer (see :mod:`olam_edit.memory.layout`).

Built-in handles cover ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d``. A custom layer
(StyleGAN2's modulated conv, say) becomes editable by defining ``olam_handle(self, name) ->
LayerHandle``; :func:`get_handle` finds it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from olam_edit.errors import LayerNotFoundError, UnsupportedLayerError, explain
from olam_edit.memory import layout as L


class LayerHandle:
    """Base class: what every editable layer must tell the rest of the package.

    Subclasses set ``layout`` (one of ``layout.LAYOUTS``) and implement :meth:`linear_op`.
    ``effective_weight`` is the weight in the units ``linear_op`` uses; edits are stored in those
    units. ``param_name`` is the attribute of ``module`` that holds the stored weight.
    """

    layout: str = ""
    kind: str = ""
    param_name: str = "weight"

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module

    # -- weights -------------------------------------------------------------------------------
    @property
    def parameter(self) -> Tensor:
        """The stored weight tensor (what is fingerprinted and restored on revert)."""
        return getattr(self.module, self.param_name)

    def effective_weight(self) -> Tensor:
        """The weight in effective units (stored units times any run-time scale)."""
        return self.parameter

    def stored_from_effective(self, w_eff: Tensor) -> Tensor:
        """Convert an effective weight back to stored units (inverse of :meth:`effective_weight`)."""
        return w_eff

    def write_effective_weight(self, w_eff: Tensor) -> None:
        """Overwrite the stored weight in place from an effective weight (dtype follows the param)."""
        p = self.parameter
        with torch.no_grad():
            p.copy_(self.stored_from_effective(w_eff).to(dtype=p.dtype, device=p.device).reshape(p.shape))

    @property
    def key_dim(self) -> int:
        return L.key_dim(self.layout, self.effective_weight().shape)

    @property
    def out_dim(self) -> int:
        return L.out_dim(self.layout, self.effective_weight().shape)

    @property
    def taps(self) -> int:
        """Number of kernel taps (1 for Linear)."""
        return L.taps(self.layout, self.effective_weight().shape)

    @property
    def value_ratio(self) -> float:
        """Value-grid resolution over key-grid resolution (2 for a stride-2 up-sampling layer)."""
        return 1.0

    # -- keys and values -----------------------------------------------------------------------
    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        """The layer's linear operation on an input map ``x`` with effective weight ``w`` (no bias)."""
        raise NotImplementedError

    def keys_of(self, x: Tensor) -> Tensor:
        """Flatten a layer input to one key per position: ``[N, key_dim]``."""
        return L.flatten_keys(self.layout, x)

    def values_of(self, x: Tensor, w: Tensor | None = None) -> Tensor:
        """The layer's value map for input ``x`` (current weight unless ``w`` is given)."""
        return self.linear_op(x, self.effective_weight() if w is None else w)

    def project_input(self, x: Tensor, D: Tensor) -> Tensor:
        """Project every key of ``x`` on the rows of D: the input-channel axis becomes ``r``."""
        return L.project_input(self.layout, x, D)

    def delta_response(self, x: Tensor, lam: Tensor, D: Tensor) -> Tensor:
        """Change of the value map caused by dW = dense(lam, D): ``op(D x, lam)``, linear in lam."""
        return self.linear_op(self.project_input(x, D), lam)

    def dense(self, lam: Tensor, D: Tensor) -> Tensor:
        """dW in effective units for factors (lam, D)."""
        return L.dense(self.layout, lam, D)

    def lam_of(self, dW: Tensor, D: Tensor) -> Tensor:
        """The factor lam with dense(lam, D) = dW D^T D (the part of dW in span(D))."""
        return L.lam_of(self.layout, dW, D)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly facts about the layer, recorded in manifests."""
        p = self.parameter
        return {"kind": self.kind, "layout": self.layout, "shape": list(p.shape), "dtype": str(p.dtype)}

    def register_key_hook(self, fn: Callable[[Tensor], Any]) -> RemovableHandle:
        """Call ``fn(x)`` with the layer's key map (its input, in key space) on every forward.

        Custom layers whose key is not the raw input (StyleGAN2: the modulated input) override this.
        """
        return self.module.register_forward_pre_hook(lambda _m, args: fn(args[0]))

    def capture_input(self) -> _InputCapture:
        """Context manager that records the layer's key map on every forward (``.inputs``)."""
        return _InputCapture(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.kind}, key_dim={self.key_dim})"


class LinearHandle(LayerHandle):
    layout = L.LINEAR
    kind = "linear"

    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w)  # [..., out]


class Conv2dHandle(LayerHandle):
    layout = L.CONV2D
    kind = "conv2d"

    @property
    def value_ratio(self) -> float:
        return 1.0 / float(self.module.stride[0])

    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        m = self.module
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation)  # [B, out, H', W']


class ConvTranspose2dHandle(LayerHandle):
    layout = L.CONV_TRANSPOSE2D
    kind = "conv_transpose2d"

    @property
    def value_ratio(self) -> float:
        return float(self.module.stride[0])

    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        m = self.module
        return F.conv_transpose2d(x, w, None, m.stride, m.padding, m.output_padding, 1, m.dilation)


class _InputCapture:
    """Records the key map of a layer on each forward while active."""

    def __init__(self, handle: LayerHandle) -> None:
        self.handle = handle
        self.inputs: list[Tensor] = []
        self._hook: Any = None

    def __enter__(self) -> _InputCapture:
        self._hook = self.handle.register_key_hook(self.inputs.append)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


def _check_conv(name: str, m: nn.Module) -> None:
    problems = []
    if m.groups != 1:
        problems.append(f"groups={m.groups}")
    if m.padding_mode != "zeros":
        problems.append(f"padding_mode={m.padding_mode!r}")
    if len(m.kernel_size) != 2:
        problems.append(f"kernel_size={m.kernel_size}")
    if problems:
        raise UnsupportedLayerError(
            explain(
                f"layer {name!r} ({type(m).__name__}) cannot be edited",
                got=", ".join(problems),
                expected="groups=1, padding_mode='zeros', a 2-D kernel",
                fix="Pick another layer (olam_edit.list_layers(model) lists the editable ones).",
            )
        )


def handle_for(name: str, module: nn.Module) -> LayerHandle:
    """The handle of ``module`` or :class:`UnsupportedLayerError` saying why it has none."""
    if hasattr(module, "olam_handle"):
        return module.olam_handle(name)
    if isinstance(module, nn.Linear):
        return LinearHandle(name, module)
    if isinstance(module, nn.ConvTranspose2d):
        _check_conv(name, module)
        return ConvTranspose2dHandle(name, module)
    if isinstance(module, nn.Conv2d):
        _check_conv(name, module)
        return Conv2dHandle(name, module)
    raise UnsupportedLayerError(
        explain(
            f"layer {name!r} is a {type(module).__name__}, which has no editable weight",
            expected="nn.Linear, nn.Conv2d, nn.ConvTranspose2d or a module with olam_handle()",
            fix="Pick another layer (olam_edit.list_layers(model) lists the editable ones).",
        )
    )


def is_editable(module: nn.Module) -> bool:
    """Whether ``module`` has a handle (supported kind and settings)."""
    if not (hasattr(module, "olam_handle") or isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)):
        return False
    try:
        handle_for("", module)
    except UnsupportedLayerError:
        return False
    return True


def list_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that have a handle (in definition order)."""
    return [n for n, m in model.named_modules() if n and is_editable(m)]


def get_handle(model: nn.Module, name: str) -> LayerHandle:
    """The handle of layer ``name`` in ``model``; a wrong name suggests the closest ones."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        close = difflib.get_close_matches(name, list_layers(model), n=3, cutoff=0.3)
        raise LayerNotFoundError(
            explain(
                f"no layer {name!r} in {type(model).__name__}",
                expected=f"one of the closest names {close}" if close else "an editable layer name",
                fix="olam_edit.list_layers(model) lists every editable layer.",
            )
        )
    return handle_for(name, modules[name])
