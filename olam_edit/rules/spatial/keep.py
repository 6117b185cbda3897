"""Which keys a new spatial edit must leave unchanged: those of earlier edits (``keep=``) and the
user's own (``protect=``), gathered as one matrix ``[m, in]`` for :func:`olam_edit.memory.protect.free_basis`.

- An earlier rewrite keeps the keys that feed its fit box on its paste sample (so every value it was
  fitted to keeps its edited value); an earlier erase keeps its context keys (they stay erased).
  Its rules are rebuilt from its recipe on the model as it is now (the keys of a layer do not depend
  on that layer's weight, so they are the keys it was fitted on).
- ``protect`` is a list of seeds (every key of those samples), a list of Selections (the keys under
  their masks) or a tensor of keys ``[m, in]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from olam_edit.edit.apply import applied_edits, check_base, target_module
from olam_edit.edit.core import Edit
from olam_edit.errors import BaseMismatchError, RequestError, explain
from olam_edit.files.validate import summary
from olam_edit.memory.protect import keys_feeding, row_space
from olam_edit.rules.spatial.joint import requests_of
from olam_edit.rules.spatial.request import Selection

if TYPE_CHECKING:
    from olam_edit.rules.spatial.rewriter import Rewriter

Protect = Sequence[int] | Sequence[Selection] | Tensor | None
MAX_PROTECT_SEEDS = 1000


def check_kept(rw: Rewriter, edit: Any) -> Edit:
    """``edit`` if it is an Edit of this layer, applied to the generator's model and made for its base."""
    if not isinstance(edit, Edit):
        raise RequestError(explain("keep= takes Edits", got=type(edit).__name__, fix="Pass the edits you applied."))
    model = rw.generator.model
    if edit.fingerprint not in applied_edits(target_module(model, edit)):
        raise BaseMismatchError(explain("an edit in keep= is not applied to this model", got=repr(edit),
                                        expected="an edit applied to the generator's model",
                                        fix="Apply it first (edit.apply(generator.model)), or leave it out."))
    check_base(model, edit)  # BaseMismatchError: made for another base
    if rw.layer not in edit.deltas:
        raise RequestError(explain("keep= protects edits of this layer", got=f"an edit of {edit.layers}",
                                   expected=f"an edit of {rw.layer!r}",
                                   fix="Edits of other layers are not changed by this one; leave it out."))
    return edit


def kept_keys(rw: Rewriter, edits: Sequence[Any]) -> Tensor:
    """Keys ``[m, in]`` the earlier ``edits`` were fitted on at this layer (see the module docstring)."""
    parts = [torch.zeros(0, rw.handle.key_dim, dtype=torch.float64)]
    for edit in edits:
        for request, method in requests_of(check_kept(rw, edit).manifest.get("recipe")):
            if request.layer != rw.layer:
                continue
            _, rules = rw.example_tensors(request)
            for rule in rules[:1] if method == "erase" else rules:  # an erase's keys are its context's
                keys = rule.context_keys if method == "erase" else keys_feeding(rw.handle, rule.x_paste, rule.fit_mask)
                parts.append(keys.to(torch.float64).cpu())
    return torch.cat(parts)  # [m, in]


def protected_keys(rw: Rewriter, protect: Protect) -> tuple[Tensor, int]:
    """The keys named by ``protect`` (see the module docstring) as a matrix with their row space
    (``[m, in]``, or at most ``[in, in]`` for many seeds) and how many keys they are; RequestError for
    anything else."""
    dim = rw.handle.key_dim
    if protect is None:
        return torch.zeros(0, dim, dtype=torch.float64), 0
    if isinstance(protect, Tensor):
        if protect.ndim != 2 or protect.shape[1] != dim or not torch.isfinite(protect).all():
            raise RequestError(explain("protect= keys must be a finite [m, d] tensor of this layer's keys",
                                       got=tuple(protect.shape), expected=f"[m, {dim}]"))
        return protect.detach().to(torch.float64).cpu(), int(protect.shape[0])
    items = list(protect) if isinstance(protect, list | tuple) else None
    if items is not None and all(isinstance(s, int) and not isinstance(s, bool) for s in items):
        if len(items) > MAX_PROTECT_SEEDS:
            raise RequestError(explain("too many seeds to protect", got=len(items), expected=f"<= {MAX_PROTECT_SEEDS}"))
        return _seed_keys(rw, items)
    if items is not None and all(isinstance(s, Selection) for s in items):
        keys, _ = rw.context_keys(items) if items else (torch.zeros(0, dim), None)
        return keys.to(torch.float64).cpu(), int(keys.shape[0])
    raise RequestError(explain("protect= takes seeds, Selections or a [m, d] key tensor", got=summary(protect),
                               fix="e.g. protect=[10, 11, 12] keeps every key of those samples."))


def _seed_keys(rw: Rewriter, seeds: list[int], batch: int = 16) -> tuple[Tensor, int]:
    """Every key of the samples ``seeds``, reduced batch by batch to its row space (at most ``[in, in]``:
    all that the protection needs, whatever the number of seeds), and the number of keys."""
    R, count = torch.zeros(0, rw.handle.key_dim, dtype=torch.float64), 0
    for i in range(0, len(seeds), batch):
        x, _ = rw.generator.keys_and_values(rw.layer, rw.generator.latents(seeds[i : i + batch]))
        keys = x.detach().to(torch.float64).movedim(1, -1).reshape(-1, rw.handle.key_dim).cpu()  # [B*h*w, in]
        R, count = row_space(torch.cat([R, keys])), count + int(keys.shape[0])
    return R, count


__all__ = ["MAX_PROTECT_SEEDS", "Protect", "check_kept", "kept_keys", "protected_keys"]
