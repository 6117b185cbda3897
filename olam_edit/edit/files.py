"""Edit folders: ``edit.safetensors`` (factors + manifest in its metadata) and ``edit_config.json``.

Loading validates everything before returning: the file parses, the tensor names are exactly those
the manifest announces, dtypes are float32, shapes agree with the manifest's layer shapes and ranks,
values are finite, and the schema is one this version understands. Unknown manifest keys are
dropped with a warning naming them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from olam_edit.errors import (
    DTypeMismatchError,
    EditFileError,
    NonFiniteError,
    SchemaVersionError,
    ShapeMismatchError,
    explain,
)
from olam_edit.files.atomic import atomic_save_safetensors, atomic_write_bytes
from olam_edit.files.fingerprint import tensor_fingerprint
from olam_edit.memory import layout as L
from olam_edit.memory.delta import Delta

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit

SCHEMA_VERSION = 1  # of the manifest; files from a newer schema load with a warning


def content_fingerprint(deltas: dict[str, Delta]) -> str:
    """sha256 over the layer names, layouts, scales and factor bytes: identifies an edit's content."""
    h = hashlib.sha256()
    for name in sorted(deltas):
        d = deltas[name]
        h.update(f"{name}|{d.layout}|{d.scale}|".encode())
        h.update(tensor_fingerprint(d.lam).encode() + tensor_fingerprint(d.directions).encode())
    return h.hexdigest()

WEIGHTS_NAME = "edit.safetensors"
CONFIG_NAME = "edit_config.json"
METADATA_KEY = "olam_edit"
KNOWN_KEYS = {"schema_version", "olam_edit_version", "base_model", "component", "layers", "solver", "recipe",
              "stats_fingerprint", "rule", "metrics", "license", "description", "tags", "created_with"}


def save_edit(edit: Edit, directory: str | Path) -> Path:
    """Write the edit folder; each file is written to a temporary name and renamed into place."""
    out = Path(directory)
    tensors = {}
    for name, d in edit.deltas.items():
        tensors[f"{name}.lambda"] = d.lam.detach().to(torch.float32).cpu().contiguous()
        tensors[f"{name}.directions"] = d.directions.detach().to(torch.float32).cpu().contiguous()
    meta = _with_scales(edit)
    atomic_save_safetensors(tensors, out / WEIGHTS_NAME, {METADATA_KEY: json.dumps(meta, sort_keys=True),
                                                          "format": "pt"})
    atomic_write_bytes(out / CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out


def _with_scales(edit: Edit) -> dict[str, Any]:
    """The manifest with each layer's current delta scale (so a scaled edit saves as scaled)."""
    meta = copy.deepcopy(edit.manifest)
    for name, d in edit.deltas.items():
        meta.setdefault("layers", {}).setdefault(name, {})["scale"] = d.scale
    return meta


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not path.is_file():
        raise EditFileError(explain(f"no {WEIGHTS_NAME} in {path.parent}",
                                    fix="Point at a folder written by Edit.save() or olam-edit rewrite."))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise EditFileError(explain(f"{path} is not a readable safetensors file (truncated or corrupted?)",
                                    got=str(e)[:200])) from e
    if METADATA_KEY not in meta:
        raise EditFileError(explain(f"{path} has no olam-edit manifest", got=sorted(meta),
                                    expected=f"metadata key {METADATA_KEY!r}"))
    try:
        return json.loads(meta[METADATA_KEY]), tensors
    except json.JSONDecodeError as e:
        raise EditFileError(explain(f"the manifest in {path} is not valid JSON", got=str(e))) from e


def _check_manifest(manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), dict):
        raise EditFileError(explain("the edit manifest has no 'layers' table", got=type(manifest).__name__))
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise SchemaVersionError(explain("the edit was written with a newer file schema", got=version,
                                         expected=f"<= {SCHEMA_VERSION}", fix="pip install -U olam-edit"))
    unknown = sorted(set(manifest) - KNOWN_KEYS)
    if unknown:
        warnings.warn(f"olam-edit: ignoring unknown manifest keys {unknown} (written by a newer version?)",
                      stacklevel=3)
    return {k: v for k, v in manifest.items() if k in KNOWN_KEYS}


def _check_names(manifest: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    want = {f"{n}.{part}" for n in manifest["layers"] for part in ("lambda", "directions")}
    missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or extra:
        raise EditFileError(explain("the edit file's tensors do not match its manifest",
                                    got=f"missing {missing}, unexpected {extra}",
                                    expected=f"exactly {sorted(want)}"))


def _delta(name: str, info: dict[str, Any], lam: Tensor, D: Tensor) -> Delta:
    for part, t in (("lambda", lam), ("directions", D)):
        if t.dtype != torch.float32:
            raise DTypeMismatchError(explain(f"{name}.{part} has the wrong dtype", got=t.dtype, expected="float32"))
        if not torch.isfinite(t).all():
            raise NonFiniteError(explain(f"{name}.{part} contains NaN or Inf", fix="The file is corrupted."))
    layout, shape, rank = info.get("layout"), info.get("shape"), info.get("rank")
    if layout not in L.LAYOUTS or not isinstance(shape, list) or not isinstance(rank, int):
        raise EditFileError(explain(f"manifest entry of {name!r} is incomplete", got=info,
                                    expected="layout, shape and rank"))
    key_dim = L.key_dim(layout, torch.Size(shape))
    want_lam = L.lam_shape(layout, torch.Size(shape), rank)
    if tuple(D.shape) != (rank, key_dim) or tuple(lam.shape) != want_lam:
        raise ShapeMismatchError(explain(f"factors of {name!r} do not fit its layer",
                                         got=f"lambda {tuple(lam.shape)}, directions {tuple(D.shape)}",
                                         expected=f"lambda {want_lam}, directions {(rank, key_dim)}"))
    return Delta(lam, D, layout, float(info.get("scale", 1.0)))


def read_edit(directory: str | Path) -> tuple[dict[str, Delta], dict[str, Any]]:
    """The deltas and manifest of an edit folder, after validating names, dtypes, shapes, finiteness
    and schema (``Edit.load`` builds the edit from them)."""
    folder = Path(directory)
    raw, tensors = _read(folder / WEIGHTS_NAME)
    manifest = _check_manifest(raw)
    _check_names(manifest, tensors)
    deltas = {n: _delta(n, info, tensors[f"{n}.lambda"], tensors[f"{n}.directions"])
              for n, info in manifest["layers"].items()}
    _check_config(folder / CONFIG_NAME, raw)
    return deltas, manifest


def _check_config(path: Path, manifest: dict[str, Any]) -> None:
    """edit_config.json, when present, must describe the same layers as the weights file."""
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EditFileError(explain(f"{path} is not valid JSON", got=str(e))) from e
    if config.get("layers") != manifest.get("layers"):
        raise EditFileError(explain(f"{path.name} and {WEIGHTS_NAME} describe different edits",
                                    fix="Re-save the edit; the folder mixes files of two edits."))
