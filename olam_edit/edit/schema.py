"""The schema of the files an edit folder holds, checked in one place before anything uses them.

:func:`check_manifest` validates an edit manifest (the one stored in ``edit.safetensors`` and its
readable copy ``edit_config.json``), :func:`check_checksums` a ``checksums.json`` record. Both take
what :func:`olam_edit.files.validate.parse_json` returned and either give it back normalised or raise
an :class:`~olam_edit.errors.EditFileError` (:class:`~olam_edit.errors.SchemaVersionError` for a newer
schema) naming the field, what it holds and what was expected. Nothing else reads a manifest field
that was not checked here.

:func:`content_digest` is the digest ``save`` writes into the edit's own file: sha256 over the stored
manifest text and over each tensor's dtype, shape and bytes, kept per part so a mismatch names what
differs. :func:`check_orthonormal` bounds ``D D^T - I`` by :data:`ORTHONORMAL_TOL`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from typing import Any

import torch
from torch import Tensor

from olam_edit.errors import ChecksumMismatchError, EditFileError, SchemaVersionError, explain
from olam_edit.files import validate as V
from olam_edit.files.fingerprint import tensor_fingerprint
from olam_edit.memory import layout as L

SCHEMA_VERSION = 1  # of the manifest
HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_LAYERS = 1024  # layers one edit may change
MAX_RANK = 65536  # rank bound before the layer's own key dimension is known
MAX_SCALE = 1e6  # |strength| a manifest may record (1 is the solved edit; 1e39 only overflows)
ORTHONORMAL_TOL = 1e-3  # max |D D^T - I| entry accepted for stored directions (float32 QR gives ~1e-6)
LAYOUT_DIMS = {L.LINEAR: 2, L.CONV2D: 4, L.CONV_TRANSPOSE2D: 4}
MAX_CHECKED_FILES = 64
KNOWN_KEYS = {"schema_version", "olam_edit_version", "base_model", "component", "layers", "solver", "recipe",
              "stats_fingerprint", "rule", "metrics", "license", "description", "tags", "created_with"}
_TEXT_KEYS = ("olam_edit_version", "component", "stats_fingerprint", "rule", "license", "description",
              "created_with")
_TABLE_KEYS = ("solver", "recipe", "metrics")
RESAVE = "Re-save the edit with Edit.save(), or fetch the folder again if it was altered."


def _bad(where: str, value: object, expected: str) -> EditFileError:
    return V.fail(EditFileError, where, value, expected, RESAVE)  # type: ignore[return-value]


def hex_digest(value: object, where: str) -> str:
    """``value`` if it is a lowercase sha256 hex digest."""
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise _bad(where, value, "a sha256 hex digest (64 lowercase hex characters)")
    return value


def _optional_text(obj: dict[str, Any], key: str, where: str) -> None:
    if obj.get(key) is not None:
        V.text(obj[key], EditFileError, where=f"{where}.{key}", allow_empty=True, max_len=64 * 1024)


def _check_base_model(value: object, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _bad(where, value, 'an object {"id": name or null, "revision": name or null}')
    for key in ("id", "revision"):
        if value.get(key) is not None:
            V.text(value[key], EditFileError, where=f"{where}.{key}")


def check_layer(name: object, info: object, where: str) -> dict[str, Any]:
    """One ``layers`` entry: layout, shape (as many sizes as the layout has), rank <= key dim, a finite
    scale within +-:data:`MAX_SCALE` (1.0 when absent) and a sha256 base fingerprint. Returns the entry
    with ``scale`` filled in."""
    V.text(name, EditFileError, where=f"{where} layer name", max_len=512)
    at = f"{where}[{name!r}]"
    if not isinstance(info, dict):
        raise _bad(at, info, "an object with layout, shape, rank, scale and fingerprint")
    layout = info.get("layout")
    if not isinstance(layout, str) or layout not in LAYOUT_DIMS:
        raise _bad(f"{at}.layout", layout, f"one of {sorted(LAYOUT_DIMS)}")
    dims = LAYOUT_DIMS[layout]
    shape = V.shape(info.get("shape"), EditFileError, where=f"{at}.shape")
    if len(shape) != dims:
        raise _bad(f"{at}.shape", info.get("shape"), f"{dims} sizes for a {layout} layer")
    key_dim = L.key_dim(layout, torch.Size(shape))
    rank = V.number(info.get("rank"), EditFileError, where=f"{at}.rank", lo=1, hi=min(key_dim, MAX_RANK),
                    integer=True)
    scale = V.number(info.get("scale", 1.0), EditFileError, where=f"{at}.scale", lo=-MAX_SCALE, hi=MAX_SCALE)
    if "fingerprint" not in info or info["fingerprint"] is None:
        raise EditFileError(explain(f"{at} has no base fingerprint", expected="the sha256 of the base layer weight",
                                    fix="Every layer needs one, or the base check is off; re-create the edit "
                                        "with Edit.create()."))
    hex_digest(info["fingerprint"], f"{at}.fingerprint")
    return {**info, "shape": list(shape), "rank": int(rank), "scale": float(scale)}


def check_manifest(raw: object, where: str = "the edit manifest") -> dict[str, Any]:
    """The validated manifest (unknown keys dropped with a warning); see the module docstring."""
    if not isinstance(raw, dict):
        raise _bad(where, raw, "a JSON object")
    version = V.number(raw.get("schema_version"), EditFileError, where=f"{where}.schema_version", lo=1,
                       integer=True)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(explain("the edit was written with a newer file schema", got=version,
                                         expected=f"<= {SCHEMA_VERSION}", fix="pip install -U olam-edit"))
    layers = raw.get("layers")
    if not isinstance(layers, dict) or not 1 <= len(layers) <= MAX_LAYERS:
        raise _bad(f"{where}.layers", layers, f"an object of 1 to {MAX_LAYERS} layers")
    for key in _TEXT_KEYS:
        _optional_text(raw, key, where)
    for key in _TABLE_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise _bad(f"{where}.{key}", raw[key], "a JSON object")
    tags = raw.get("tags")
    if tags is not None and (not isinstance(tags, list) or len(tags) > 64
                             or not all(isinstance(t, str) and len(t) <= 128 for t in tags)):
        raise _bad(f"{where}.tags", tags, "a list of at most 64 short strings")
    _check_base_model(raw.get("base_model"), f"{where}.base_model")
    checked = {name: check_layer(name, info, f"{where}.layers") for name, info in layers.items()}
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        warnings.warn(f"olam-edit: ignoring unknown manifest keys {[k[:40] for k in unknown[:10]]} (written by a "
                      "newer version?)", stacklevel=4)
    return {**{k: v for k, v in raw.items() if k in KNOWN_KEYS}, "layers": checked}


def check_checksums(record: object, where: str, weights_name: str) -> dict[str, Any]:
    """A ``checksums.json`` record: ``algorithm`` "sha256", ``files`` {plain file name: hex digest} naming
    ``weights_name``, and an optional ``edit_fingerprint`` (a hex digest)."""
    expected = '{"algorithm": "sha256", "files": {name: hex}, "edit_fingerprint": hex}'
    if not isinstance(record, dict) or record.get("algorithm") != "sha256":
        raise EditFileError(explain(f"{where} is not an olam-edit checksum record", got=V.summary(record),
                                    expected=expected))
    files = record.get("files")
    if not isinstance(files, dict) or not 1 <= len(files) <= MAX_CHECKED_FILES:
        raise _bad(f"{where}.files", files, f"an object of 1 to {MAX_CHECKED_FILES} file digests")
    bad = [name for name in files if not isinstance(name, str) or not name or "/" in name or "\\" in name
           or name.startswith(".") or len(name) > 255]
    if bad:
        raise EditFileError(explain(f"{where} lists files outside the edit folder", got=[V.summary(b) for b in bad],
                                    expected="plain file names of the folder"))
    for name, digest in files.items():
        hex_digest(digest, f"{where}.files[{name!r}]")
    if weights_name not in files:
        raise EditFileError(explain(f"{where} has no checksum for {weights_name}", got=sorted(files)[:10],
                                    expected=f"an entry for {weights_name}"))
    if record.get("edit_fingerprint") is not None:
        hex_digest(record["edit_fingerprint"], f"{where}.edit_fingerprint")
    return record


def content_digest(manifest_text: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """``{"algorithm", "manifest", "tensors": {name: hex}}``: sha256 of the stored manifest text (UTF-8)
    and of each tensor (dtype, shape, bytes)."""
    return {"algorithm": "sha256", "manifest": hashlib.sha256(manifest_text.encode("utf-8")).hexdigest(),
            "tensors": {name: tensor_fingerprint(t) for name, t in sorted(tensors.items())}}


def check_digest(stored: object, manifest_text: str, tensors: dict[str, Tensor], where: str) -> None:
    """Raise ChecksumMismatchError naming each part whose digest differs from ``stored``."""
    if not isinstance(stored, dict) or not isinstance(stored.get("tensors"), dict):
        raise _bad(f"{where} content digest", stored, '{"algorithm": "sha256", "manifest": hex, "tensors": {...}}')
    got = content_digest(manifest_text, tensors)
    differ = ["the manifest"] if stored.get("manifest") != got["manifest"] else []
    differ += [f"tensor {n!r}" for n in sorted(set(got["tensors"]) | set(stored["tensors"]))
               if stored["tensors"].get(n) != got["tensors"].get(n)]
    if differ:
        raise ChecksumMismatchError(explain(f"{where} does not match the digest written with it (corrupted or "
                                            "altered)", got=f"different {', '.join(differ[:8])}",
                                            expected="the bytes Edit.save() wrote",
                                            fix="Fetch or copy the edit again; a damaged file cannot be repaired."))


def check_orthonormal(name: str, D: Tensor) -> None:
    """Refuse directions ``D`` [r, in] whose rows are not orthonormal to :data:`ORTHONORMAL_TOL`."""
    D64 = D.to(torch.float64)  # [r, in]
    err = (D64 @ D64.T - torch.eye(D64.shape[0], dtype=torch.float64)).abs().max().item()  # [r, r] -> scalar
    if not err <= ORTHONORMAL_TOL:
        raise EditFileError(explain(f"the directions of {name!r} are not orthonormal", got=f"max |D D^T - I| {err:.3g}",
                                    expected=f"at most {ORTHONORMAL_TOL:g}", fix=RESAVE))
