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

from olam_edit.edit import schema as S
from olam_edit.edit.schema import KNOWN_KEYS, SCHEMA_VERSION
from olam_edit.errors import (
    DTypeMismatchError,
    EditFileError,
    NonFiniteError,
    OlamEditError,
    ShapeMismatchError,
    explain,
)
from olam_edit.files import validate as V
from olam_edit.files.atomic import atomic_save_safetensors, atomic_write_bytes
from olam_edit.files.fingerprint import tensor_fingerprint
from olam_edit.memory import layout as L
from olam_edit.memory.delta import Delta

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit

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
DIGEST_KEY = "olam_edit_digest"
__all__ = ["CONFIG_NAME", "DIGEST_KEY", "KNOWN_KEYS", "METADATA_KEY", "SCHEMA_VERSION", "WEIGHTS_NAME",
           "content_fingerprint", "read_edit", "save_edit"]


def save_edit(edit: Edit, directory: str | Path) -> Path:
    """Write the edit folder; each file is written to a temporary name and renamed into place.

    The weights file's metadata carries the manifest and its content digest (:func:`schema.content_digest`
    over that manifest text and every tensor), which :func:`read_edit` checks.
    """
    out = Path(directory)
    tensors = {}
    for name, d in edit.deltas.items():
        tensors[f"{name}.lambda"] = d.lam.detach().to(torch.float32).cpu().contiguous()
        tensors[f"{name}.directions"] = d.directions.detach().to(torch.float32).cpu().contiguous()
    meta = _with_scales(edit)
    text = json.dumps(meta, sort_keys=True)
    digest = json.dumps(S.content_digest(text, tensors), sort_keys=True)
    atomic_save_safetensors(tensors, out / WEIGHTS_NAME, {METADATA_KEY: text, DIGEST_KEY: digest, "format": "pt"})
    atomic_write_bytes(out / CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out


def _with_scales(edit: Edit) -> dict[str, Any]:
    """The manifest with each layer's current delta scale (so a scaled edit saves as scaled)."""
    meta = copy.deepcopy(edit.manifest)
    for name, d in edit.deltas.items():
        meta.setdefault("layers", {}).setdefault(name, {})["scale"] = d.scale
    return meta


def _header(f: Any, path: Path) -> tuple[str, dict[str, Any]]:
    """The manifest text and the validated manifest stored in an open safetensors file."""
    meta = dict(f.metadata() or {})
    if METADATA_KEY not in meta:
        raise EditFileError(explain(f"{path} has no olam-edit manifest", got=sorted(meta)[:10],
                                    expected=f"metadata key {METADATA_KEY!r}"))
    text = meta[METADATA_KEY]
    raw = V.parse_json(text, EditFileError, where=f"the manifest in {path}")
    return text, S.check_manifest(raw, f"the manifest in {path.name}")


def _want(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` the manifest announces (lambda and directions of each layer)."""
    want = {}
    for n, info in manifest["layers"].items():
        w_shape = torch.Size(info["shape"])
        want[f"{n}.lambda"] = L.lam_shape(info["layout"], w_shape, info["rank"])
        want[f"{n}.directions"] = (info["rank"], L.key_dim(info["layout"], w_shape))
    return want


def _tensors(f: Any, manifest: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors, after checking names, dtypes and shapes from the header (before reading any data)."""
    want = _want(manifest)
    names = set(f.keys())
    missing, extra = sorted(set(want) - names), sorted(names - set(want))
    if missing or extra:
        raise EditFileError(explain("the edit file's tensors do not match its manifest",
                                    got=f"missing {missing[:10]}, unexpected {extra[:10]}",
                                    expected=f"exactly {sorted(want)[:10]}"))
    for k, shape in want.items():
        sl = f.get_slice(k)
        dtype, got = sl.get_dtype(), tuple(sl.get_shape())
        if dtype != "F32":
            raise DTypeMismatchError(explain(f"{k} has the wrong dtype", got=dtype, expected="float32 (F32)"))
        if got != tuple(shape):
            raise ShapeMismatchError(explain(f"factors of {k.rsplit('.', 1)[0]!r} do not fit its layer",
                                             got=f"{k.rsplit('.', 1)[1]} {got[:V.MAX_DIMS]}",
                                             expected=f"{k.rsplit('.', 1)[1]} {tuple(shape)}"))
    return {k: f.get_tensor(k) for k in want}


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The validated manifest and tensors of ``path``, the content digest checked (when present)."""
    if not path.exists() and not path.is_symlink():
        raise EditFileError(explain(f"no {WEIGHTS_NAME} in {path.parent}",
                                    fix="Point at a folder written by Edit.save() or olam-edit rewrite."))
    V.regular_file(path, EditFileError)  # a FIFO would block the open below forever
    try:
        with safe_open(str(path), framework="pt") as f:
            text, manifest = _header(f, path)
            tensors = _tensors(f, manifest)
            stored = (f.metadata() or {}).get(DIGEST_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, OlamEditError):
            raise
        raise EditFileError(explain(f"{path} is not a readable safetensors file (truncated or corrupted?)",
                                    got=str(e)[:200])) from e
    if stored is None:
        warnings.warn(f"olam-edit: {path} carries no content digest (written by an older version); its tensors "
                      "are validated but cannot be checked for corruption. Re-save it to add one.", stacklevel=4)
    else:
        S.check_digest(V.parse_json(stored, EditFileError, where=f"the digest in {path}"), text, tensors, str(path))
    return manifest, tensors


def _delta(name: str, info: dict[str, Any], lam: Tensor, D: Tensor) -> Delta:
    for part, t in (("lambda", lam), ("directions", D)):
        if not torch.isfinite(t).all():
            raise NonFiniteError(explain(f"{name}.{part} contains NaN or Inf", fix="The file is corrupted."))
    S.check_orthonormal(name, D)
    return Delta(lam, D, info["layout"], info["scale"])


def read_edit(directory: str | Path) -> tuple[dict[str, Delta], dict[str, Any]]:
    """The deltas and manifest of an edit folder, after validating the manifest schema
    (:func:`olam_edit.edit.schema.check_manifest`), names, dtypes, shapes, the content digest,
    finiteness and orthonormal directions (``Edit.load`` builds the edit from them)."""
    folder = Path(directory)
    manifest, tensors = _read(folder / WEIGHTS_NAME)
    deltas = {n: _delta(n, info, tensors[f"{n}.lambda"], tensors[f"{n}.directions"])
              for n, info in manifest["layers"].items()}
    _check_config(folder / CONFIG_NAME, manifest)
    return deltas, manifest


def _check_config(path: Path, manifest: dict[str, Any]) -> None:
    """edit_config.json, when present, must describe the same layers as the weights file."""
    if not path.exists() and not path.is_symlink():
        return
    raw = V.read_json(path, EditFileError)
    if not isinstance(raw, dict) or raw.get("layers") is None:
        raise V.fail(EditFileError, path.name, raw, "an edit manifest (a JSON object with 'layers')")
    config = S.check_manifest(raw, path.name)
    if config.get("layers") != manifest.get("layers"):
        raise EditFileError(explain(f"{path.name} and {WEIGHTS_NAME} describe different edits",
                                    fix="Re-save the edit; the folder mixes files of two edits."))
