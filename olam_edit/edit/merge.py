"""Edit.merge: several edits as one, whose per-layer delta is exactly the (scaled) sum of the parts.

Per layer, the parts' directions are stacked and re-orthonormalised (an SVD of the stacked rows; the
rank adds up, or less where the parts' spans overlap) and each part's Lambda is carried into the new
basis through the small ``[r_i, R]`` matrix D_i D^T, never through a dense weight:

    sum_i s_i dense(lam_i, D_i) = dense(sum_i s_i lam_i (D_i D^T), D)    (D^T D is the identity on span D_i)

Applying the merge equals applying the parts one after another up to float rounding: the sum is
formed in float64 and re-factored, and floating-point addition is not associative, so the two orders
round differently (about 1e-16 relative in float64, float32 round-off in float32).
The manifest records each part (fingerprint, scale, rule, recipe) and the recipe is of kind ``merged``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from olam_edit._version import __version__
from olam_edit.edit.files import SCHEMA_VERSION
from olam_edit.errors import BaseMismatchError, RequestError, explain
from olam_edit.files.validate import summary
from olam_edit.memory import layout as L
from olam_edit.memory.delta import Delta

if TYPE_CHECKING:
    from olam_edit.edit.core import Edit

SPAN_RTOL = 1e-10  # stacked directions below this fraction of the largest singular value add no rank
MAX_PARTS = 256


def check_parts(edits: Sequence[Edit], scales: Sequence[float] | None, edit_type: type) -> list[float]:
    """The scales (ones by default) after checking the parts are ``edit_type`` instances sharing a base
    model, a component and the base weight of every layer they share. RequestError / BaseMismatchError
    otherwise."""
    if not isinstance(edits, list | tuple) or not edits or not all(isinstance(e, edit_type) for e in edits):
        raise RequestError(explain("Edit.merge takes a non-empty list of Edits", got=summary(edits)))
    if len(edits) > MAX_PARTS:
        raise RequestError(explain("too many edits to merge", got=len(edits), expected=f"at most {MAX_PARTS}"))
    s = [1.0] * len(edits) if scales is None else list(scales) if isinstance(scales, list | tuple) else None
    if s is None or len(s) != len(edits):
        raise RequestError(explain("one scale per edit", got=summary(scales), expected=f"{len(edits)} numbers",
                                   fix="Pass scales=[1.0, 0.5, ...] in the order of the edits."))
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in s):
        raise RequestError(explain("scales must be finite numbers", got=summary(scales)))
    first = edits[0].manifest
    for i, e in enumerate(edits[1:], 2):
        for key in ("base_model", "component"):
            if e.manifest.get(key) != first.get(key):
                raise BaseMismatchError(explain(f"edit {i} was made for another {key.replace('_', ' ')}",
                                                got=_label(e.manifest.get(key)), expected=_label(first.get(key)),
                                                fix="Merge only edits of the same base model and component."))
    _check_layers(edits)
    return [float(x) for x in s]


def _label(value: Any) -> str:
    """A base model ``{"id", "revision"}`` as ``id@revision``, anything else as its summary."""
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"] + (f"@{value['revision']}" if isinstance(value.get("revision"), str) else "")
    return summary(value)


def _check_layers(edits: Sequence[Edit]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(edits, 1):
        for name, delta in e.deltas.items():
            info = dict(e.manifest.get("layers", {}).get(name) or {})
            info.setdefault("layout", delta.layout)
            info["weight_shape"] = delta.weight_shape()
            keys = ("fingerprint", "layout", "weight_shape")
            if name in seen and any(seen[name].get(k) != info.get(k) for k in keys):
                raise BaseMismatchError(explain(f"edit {i} changes {name!r} of another base weight",
                                                got=f"fingerprint {str(info.get('fingerprint'))[:16]}…",
                                                expected=f"fingerprint {str(seen[name].get('fingerprint'))[:16]}…",
                                                fix="Merge only edits made for the same base weights."))
            seen.setdefault(name, info)


def _to_basis(layout: str, lam: Tensor, T: Tensor) -> Tensor:
    """Lambda re-expressed on new directions: ``lam`` with its rank axis multiplied by T ``[r_i, R]``."""
    if layout == L.LINEAR:
        return lam @ T  # [out, R]
    if layout == L.CONV2D:
        return torch.einsum("oryx,rs->osyx", lam, T)  # [out, R, kh, kw]
    return torch.einsum("royx,rs->soyx", lam, T)  # [R, out, kh, kw]


def merge_layer(parts: Sequence[tuple[Delta, float]]) -> Delta:
    """One Delta equal to sum_i s_i * delta_i (each delta's own scale included), in float64 arithmetic."""
    Ds = [d.directions.to(torch.float64) for d, _ in parts]
    _, S, Vh = torch.linalg.svd(torch.cat(Ds), full_matrices=False)  # [sum r_i], [., in]
    D = Vh[: max(1, int((S > SPAN_RTOL * S[0]).sum()))]  # [R, in]
    layout = parts[0][0].layout
    lam = sum(_to_basis(layout, d.lam.to(torch.float64) * (d.scale * s), Di @ D.T)
              for (d, s), Di in zip(parts, Ds, strict=True))  # layout shape, rank R
    dtype = torch.float64 if all(d.lam.dtype == torch.float64 for d, _ in parts) else torch.float32
    return Delta(lam.to(dtype), D.to(dtype), layout)  # type: ignore[union-attr]


def merge_parts(edits: Sequence[Edit], scales: Sequence[float] | None, edit_type: type
                ) -> tuple[dict[str, Delta], dict[str, Any]]:
    """The merged deltas and manifest (see the module docstring); nothing is applied."""
    s = check_parts(edits, scales, edit_type)
    names = list(dict.fromkeys(n for e in edits for n in e.deltas))
    deltas = {n: merge_layer([(e.deltas[n], si) for e, si in zip(edits, s, strict=True) if n in e.deltas])
              for n in names}
    first = edits[0].manifest
    layers = {}
    for n in names:
        info = next(dict(e.manifest.get("layers", {}).get(n) or {}) for e in edits if n in e.deltas)
        layers[n] = {**info, "rank": deltas[n].rank, "scale": 1.0}
    parts = [{"fingerprint": e.fingerprint, "scale": si, "rule": e.manifest.get("rule"), "layers": e.layers,
              "recipe": e.manifest.get("recipe"), "stats_fingerprint": e.manifest.get("stats_fingerprint")}
             for e, si in zip(edits, s, strict=True)]
    rule = "; ".join(f"{p['rule'] or 'an edit'}" + ("" if p["scale"] == 1 else f" (x{p['scale']:g})") for p in parts)
    recipe = {"kind": "merged", "parts": parts, "summary": describe_merged({"parts": parts})}
    manifest = {"schema_version": SCHEMA_VERSION, "olam_edit_version": __version__,
                "base_model": first.get("base_model"), "component": first.get("component"), "layers": layers,
                "solver": {"method": "merge", "solve": "sum", "parts": len(edits),
                           "rank": max(d.rank for d in deltas.values())},
                "recipe": recipe, "rule": f"merge of {len(edits)} edits: {rule}", "license": first.get("license"),
                "created_with": f"olam-edit {__version__}"}
    return deltas, {k: v for k, v in manifest.items() if v is not None}


def describe_merged(recipe: Any) -> str:
    """How a merged edit was made (the ``describe`` of the ``"merged"`` rule kind)."""
    parts = recipe.get("parts") if isinstance(recipe, dict) else None
    parts = [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    listed = "; ".join(f"`{str(p.get('fingerprint'))[:12]}` ({p.get('rule') or 'an edit'}, scale {p.get('scale')})"
                       for p in parts[:20])
    return (f"A merge of {len(parts)} edits: each layer's update is the sum of the parts' updates times their "
            f"scales, re-factored on one orthonormal basis (the ranks add up). Parts: {listed}. Each part's "
            "fingerprint and recipe are in `edit_config.json` (`recipe.parts`).")
