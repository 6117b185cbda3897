"""apply_edit / revert_edit / edited(): change a model's weights by an Edit, exactly reversibly.

Everything is validated before anything is written: layer names, shapes, the base fingerprint and
finiteness of the result. The original tensors of edited layers are kept (only those) and restored
bit-for-bit on revert. Edits stack: revert them in the reverse order. :func:`edited_parameters` and
:func:`preview` give the edited weights without touching the model (for per-user previews).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from olam_edit.errors import BaseMismatchError, EditStateError, NonFiniteError, ShapeMismatchError, explain
from olam_edit.files.fingerprint import tensor_fingerprint
from olam_edit.files.validate import summary
from olam_edit.memory.handles import LayerHandle, get_handle

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit


@dataclass
class _Applied:
    fingerprint: str
    originals: dict[str, Tensor]


_STACKS: weakref.WeakKeyDictionary[nn.Module, list[_Applied]] = weakref.WeakKeyDictionary()


def target_module(model: Any, edit: Edit) -> nn.Module:
    """The module an edit applies to: ``model`` itself, or its ``component`` (``pipe.unet``)."""
    comp = edit.manifest.get("component")
    if isinstance(model, nn.Module) and (not comp or _has_layers(model, edit)):
        return model
    sub = getattr(model, comp, None) if comp else None
    if isinstance(sub, nn.Module):
        return sub
    raise EditStateError(explain(f"cannot apply an edit to a {type(model).__name__}",
                                 expected=f"a torch.nn.Module{f' or an object with .{comp}' if comp else ''}",
                                 fix="Pass the module the edit was made for."))


def _has_layers(model: nn.Module, edit: Edit) -> bool:
    names = dict(model.named_modules())
    return all(n in names for n in edit.deltas)


def base_tensor(model: nn.Module, handle: LayerHandle) -> Tensor:
    """The layer's weight before any applied edit (the first kept original), else the current one."""
    for applied in _STACKS.get(model, []):
        if handle.name in applied.originals:
            return applied.originals[handle.name]
    return handle.parameter


def check_base(model: Any, edit: Edit) -> None:
    """Raise BaseMismatchError unless every layer of ``edit`` has the base weight it was made for.

    Nothing is changed; use it to vet an edit (an upload, say) before offering to apply it.
    """
    module = target_module(model, edit)
    for name in edit.deltas:
        _check_base(module, edit, get_handle(module, name))


def _check_base(model: nn.Module, edit: Edit, handle: LayerHandle) -> None:
    """The layer's base weight must have the fingerprint the manifest records; a missing one is refused."""
    layers = edit.manifest.get("layers")
    info = layers.get(handle.name) if isinstance(layers, dict) else None
    expected = info.get("fingerprint") if isinstance(info, dict) else None
    if not isinstance(expected, str):
        raise BaseMismatchError(explain(f"the edit records no base fingerprint for layer {handle.name!r}",
                                        got=summary(expected), expected="the sha256 of the base layer weight",
                                        fix="Without it the edit cannot be checked against this model; pass "
                                            "force=True (--force) to apply it anyway."))
    got = tensor_fingerprint(base_tensor(model, handle))
    if got != expected:
        raise BaseMismatchError(
            explain(f"layer {handle.name!r} is not the weight this edit was made for",
                    got=f"fingerprint {got[:16]}…", expected=f"fingerprint {expected[:16]}…",
                    fix="Load the base model named in the edit's manifest, or pass force=True to apply anyway.")
        )


def _check_shape(handle: LayerHandle, edit: Edit) -> None:
    got, want = edit.deltas[handle.name].weight_shape(), tuple(handle.effective_weight().shape)
    if tuple(got) != want:
        raise ShapeMismatchError(explain(f"the delta for {handle.name!r} does not fit the layer",
                                         got=got, expected=want))


def _new_weight(handle: LayerHandle, edit: Edit, scale: float) -> Tensor:
    """The layer's new stored weight: computed in float64, cast to the parameter's dtype, and refused
    (NonFiniteError) unless finite in that dtype, so a scale or factor that overflows float32 never lands."""
    _check_shape(handle, edit)
    delta = edit.deltas[handle.name]
    w = handle.effective_weight().detach()
    scale = float(scale)
    if not math.isfinite(scale) or not math.isfinite(delta.scale):
        raise NonFiniteError(explain(f"the strength for {handle.name!r} is not finite", got=f"{scale} x {delta.scale}",
                                     expected="a finite number"))
    dW = delta.dense(torch.float64).to(w.device) * scale  # [*w.shape]
    w1 = handle.stored_from_effective(w.to(torch.float64) + dW)
    new = w1.to(handle.parameter.dtype).reshape(handle.parameter.shape)
    if not (torch.isfinite(w1).all() and torch.isfinite(new).all()):
        raise NonFiniteError(explain(f"applying the edit makes {handle.name!r} non-finite in "
                                     f"{str(handle.parameter.dtype).removeprefix('torch.')}",
                                     got=f"scale {scale:g} x {delta.scale:g}",
                                     expected="weights that fit the parameter's dtype",
                                     fix="Use a smaller strength, or check the edit file; it may be corrupted."))
    return new


def apply_edit(model: Any, edit: Edit, *, scale: float = 1.0, force: bool = False) -> None:
    """Apply ``edit`` (times ``scale``) to ``model`` in place, after validating every layer.

    Raises ShapeMismatchError for a delta that does not fit its layer, BaseMismatchError if a layer's
    base weight differs from the one the edit was made for or the manifest records no fingerprint for it
    (unless ``force``), NonFiniteError if a new weight would not be finite in the parameter's dtype, and
    EditStateError if this edit is already applied. Nothing is changed on error.
    """
    module = target_module(model, edit)
    stack = _STACKS.setdefault(module, [])
    fp = edit.fingerprint
    if any(a.fingerprint == fp for a in stack):
        raise EditStateError(explain("this edit is already applied to the model",
                                     fix="Revert it first, or use a scaled copy (edit.scaled(s)) to change strength."))
    handles = [get_handle(module, name) for name in edit.deltas]
    for h in handles:
        _check_shape(h, edit)
    if not force:
        for h in handles:
            _check_base(module, edit, h)
    if not force:
        _warn_unapplied_prerequisites(module, edit)
    new = {h.name: _new_weight(h, edit, scale) for h in handles}
    originals = {h.name: h.parameter.detach().clone() for h in handles}
    with torch.no_grad():
        for h in handles:
            h.parameter.copy_(new[h.name])
    stack.append(_Applied(fp, originals))


class SolvedOnOtherEditsWarning(UserWarning):
    """An edit solved on a model carrying other edits (``keep=`` / ``preserve_edits=``) is applied
    without them: it still leaves their keys alone, but its targets were fitted with them applied."""


def _warn_unapplied_prerequisites(module: nn.Module, edit: Edit) -> None:
    solver = edit.manifest.get("solver")
    solver = solver if isinstance(solver, dict) else {}
    named = [*(solver.get("kept_edits") or []), *(solver.get("protected_edits") or [])]
    wanted = [fp for fp in named if isinstance(fp, str)][:64]
    applied = {a.fingerprint for a in _STACKS.get(module, [])}
    missing = [fp[:12] for fp in wanted if fp not in applied]
    if missing:
        warnings.warn(f"this edit was solved on a model carrying edits {missing} that are not applied here; it "
                      "leaves their keys unchanged, but its targets were fitted with them applied (apply them first, "
                      "or Edit.merge them into one)", SolvedOnOtherEditsWarning, stacklevel=3)


def revert_edit(model: Any, edit: Edit) -> None:
    """Restore the layers ``edit`` changed, bit-for-bit; it must be the last edit applied."""
    module = target_module(model, edit)
    stack = _STACKS.get(module, [])
    fp = edit.fingerprint
    if not stack or stack[-1].fingerprint != fp:
        applied = any(a.fingerprint == fp for a in stack)
        raise EditStateError(explain("cannot revert this edit",
                                     got="it is applied, but later edits are too" if applied else "it is not applied",
                                     fix="Revert edits in the reverse order they were applied." if applied else None))
    top = stack.pop()
    with torch.no_grad():
        for name, original in top.originals.items():
            get_handle(module, name).parameter.copy_(original)


def applied_edits(model: nn.Module) -> list[str]:
    """Fingerprints of the edits applied to ``model``, oldest first."""
    return [a.fingerprint for a in _STACKS.get(model, [])]


@contextlib.contextmanager
def edited(model: Any, edit: Edit, scale: float = 1.0, *, force: bool = False) -> Iterator[Any]:
    """``with edited(model, edit):`` applies the edit and reverts it on exit, even on an exception."""
    apply_edit(model, edit, scale=scale, force=force)
    try:
        yield model
    finally:
        revert_edit(model, edit)


def edited_parameters(model: nn.Module, edit: Edit, scale: float = 1.0) -> dict[str, Tensor]:
    """``{parameter name: edited tensor}`` for the layers of ``edit``; the model is not changed."""
    out = {}
    for name in edit.deltas:
        h = get_handle(model, name)
        out[f"{name}.{h.param_name}"] = _new_weight(h, edit, scale)
    return out


def preview(model: nn.Module, edit: Edit | None, *args: Any, scale: float = 1.0, **kwargs: Any) -> Any:
    """Run ``model(*args, **kwargs)`` as if ``edit`` were applied, without mutating the model.

    Safe to call from several threads at once on a shared model: ``functional_call`` swaps the
    parameters in place for the duration of the call, so calls on one model take turns (a lock per
    model), and each sees only its own edit.
    """
    with _lock_for(model):
        if edit is None or scale == 0:
            return model(*args, **kwargs)
        return functional_call(model, edited_parameters(model, edit, scale), args, kwargs, strict=False)


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that previews of ``model`` take; hold it to run hooks on the shared model safely."""
    return _lock_for(model)


def _lock_for(model: nn.Module) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())
