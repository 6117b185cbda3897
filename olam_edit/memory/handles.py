"""Layer handles: one editable layer seen as a linear associative memory, keys -> values.

A *key* is the input vector the layer reads at one position (a token, a pixel); the *value* is the
layer's own linear output there, before bias, normalisation and activation. Every edit has the shape
W1 = W0 + Lambda D, with D [r, in] acting on the input-channel axis only and shared by all kernel
taps. Lambda's layout depends on the layer (see :mod:`olam_edit.memory.layout`).

Built-in handles cover ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d``. Two extension points
make any other layer editable:

* a module that follows :class:`EditableModule` (it defines ``olam_handle(self, name) ->
  LayerHandle``, the attribute named by :data:`HANDLE_HOOK`) is its own layer: :func:`get_handle`
  asks it for its handle before looking at its type;
* a :class:`LayerHandle` subclass states the layer's keys, values and weight units. Its optional
  hooks have defaults that are right for a layer whose value is linear in the weight (see
  "Nonlinear layers" on the class); a layer that is not (StyleGAN2's demodulated conv) overrides them.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from olam_edit.errors import LayerNotFoundError, UnsupportedLayerError, explain
from olam_edit.memory import layout as L

HANDLE_HOOK = "olam_handle"  # the method a module defines to be its own editable layer


@runtime_checkable
class EditableModule(Protocol):
    """A module that is its own editable layer: ``olam_handle(name)`` returns its :class:`LayerHandle`.

    :func:`handle_for` asks such a module first, whatever its type (StyleGAN2's ``ModulatedConv``
    does this). ``name`` is the module's path in the model.
    """

    def olam_handle(self, name: str) -> LayerHandle: ...


class LayerHandle:
    """Base class: what every editable layer must tell the rest of the package.

    Subclasses set ``layout`` (one of ``layout.LAYOUTS``) and implement :meth:`linear_op`.
    ``effective_weight`` is the weight in the units ``linear_op`` uses; edits are stored in those
    units. ``param_name`` is the attribute of ``module`` that holds the stored weight.

    Nonlinear layers: the solver (:mod:`olam_edit.memory.solve`) calls :meth:`freeze`,
    :meth:`output_scale` and :meth:`unscaled_delta_response` on every handle. Their defaults say
    "the value is linear in the weight, with no per-output-channel factor", which is exact for the
    built-in handles. A layer whose value is not linear in the weight sets ``linear_in_weight =
    False`` and overrides :meth:`freeze` (hold the nonlinearity fixed so the map becomes linear); the
    solver then refines to a fixed point. If the held map scales each output channel by its own
    factor, the layer also overrides :meth:`output_scale` and :meth:`unscaled_delta_response`.
    """

    layout: str = ""
    kind: str = ""
    param_name: str = "weight"
    linear_in_weight: ClassVar[bool] = True  # False: linear_op is linear in w only while frozen

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

    # -- optional hooks for nonlinear layers (defaults: linear in the weight, no output factor) ---
    def freeze(self, w_eff: Tensor | None) -> None:
        """Hold the layer's nonlinearity at effective weight ``w_eff`` (None: release it).

        While frozen, :meth:`linear_op` and :meth:`delta_response` must be linear in the weight.
        Default: nothing to hold (the built-in layers are linear already).
        """

    @contextlib.contextmanager
    def frozen(self, w_eff: Tensor) -> Iterator[LayerHandle]:
        """``with handle.frozen(w):`` :meth:`freeze` at ``w`` for the block, released on exit (even on error).

        Not re-entrant: leaving the block releases the handle, whatever was frozen inside it.
        """
        self.freeze(w_eff)
        try:
            yield self
        finally:
            self.freeze(None)

    def output_scale(self, x: Tensor) -> Tensor | None:
        """``[B, out]``: a per-sample, per-output-channel factor of the (frozen) linear map, or None.

        A handle that returns a factor keeps ``delta_response(x, lam, D) == output_scale(x)[:, :,
        None, None] * unscaled_delta_response(x, lam, D)``; the solver then weights each output
        channel by its own factor. Default: None (no factor).
        """
        return None

    def unscaled_delta_response(self, x: Tensor, lam: Tensor, D: Tensor) -> Tensor:
        """:meth:`delta_response` without :meth:`output_scale`'s factor (linear in lam for any number of
        output channels). Default: :meth:`delta_response` itself (there is no factor)."""
        return self.delta_response(x, lam, D)

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

    module: nn.Conv2d

    @property
    def value_ratio(self) -> float:
        return 1.0 / float(self.module.stride[0])

    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        m = self.module
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation)  # [B, out, H', W']


class ConvTranspose2dHandle(LayerHandle):
    layout = L.CONV_TRANSPOSE2D
    kind = "conv_transpose2d"

    module: nn.ConvTranspose2d

    @property
    def value_ratio(self) -> float:
        return float(self.module.stride[0])

    def linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        m = self.module
        padding = cast(tuple[int, ...], m.padding)  # a transposed conv's padding is never a string
        return F.conv_transpose2d(x, w, None, m.stride, padding, m.output_padding, 1, m.dilation)  # [B, out, H', W']


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


def _check_conv(name: str, m: nn.Conv2d | nn.ConvTranspose2d) -> None:
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
    if isinstance(module, EditableModule):
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
            expected=f"nn.Linear, nn.Conv2d, nn.ConvTranspose2d or a module with {HANDLE_HOOK}() (EditableModule)",
            fix="Pick another layer (olam_edit.list_layers(model) lists the editable ones).",
        )
    )


def is_editable(module: nn.Module) -> bool:
    """Whether ``module`` has a handle (supported kind and settings)."""
    if not isinstance(module, EditableModule | nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
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
