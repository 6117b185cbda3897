"""Edit files in and out of the Space: the download zip, its before/after picture, and uploads.

An upload is read defensively: its size is checked before anything is read, a zip is read member by
member (only the known file names, never their paths) with its unpacked size bounded, and the edit
is verified (checksums, manifests) and vetted against the session's model before it is used.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from olam_edit import Edit, check_base, model_lock
from olam_edit.edit.publish import stage_edit
from olam_edit.errors import BaseMismatchError, EditFileError, explain
from olam_edit.eval.grid import grid_image

ZIP_NAMES = ("edit.safetensors", "edit_config.json", "checksums.json")  # read from an upload; others ignored


def edit_name(edit: Edit) -> str:
    """A file name for ``edit``: its layers and the start of its fingerprint."""
    return f"olam-edit-{'-'.join(edit.layers)}-{edit.fingerprint[:8]}".replace("/", "_")


def zip_edit(edit: Edit, folder: str | Path, picture: bytes | None = None) -> Path:
    """Write the edit folder as a Hub repo would hold it (files, checksums, model card, before/after
    picture) into ``folder``/edit and zip it; returns the zip's path."""
    out, name = Path(folder), edit_name(edit)
    (out / "edit").mkdir(parents=True, exist_ok=True)
    stage_edit(edit, out / "edit", f"your-username/{name}", picture)
    return Path(shutil.make_archive(str(out / name), "zip", root_dir=out, base_dir="edit"))


def picture(generator: Any, edit: Edit, seeds: Sequence[int]) -> bytes:
    """A before/after PNG of ``seeds``."""
    buf = io.BytesIO()
    grid_image([generator.images(list(seeds)), generator.images(list(seeds), edit)], ["before", "after"]).save(
        buf, format="PNG")
    return buf.getvalue()


def read_upload(path: str | Path, max_bytes: int, workdir: str | Path) -> Edit:
    """An Edit from an uploaded zip (from 'Download') or a bare ``edit.safetensors``, verified."""
    path, work = Path(path), Path(workdir)
    size = path.stat().st_size
    if size > max_bytes:
        raise EditFileError(explain("the upload is too large", got=f"{size / 2**20:.1f} MB",
                                    expected=f"at most {max_bytes / 2**20:.0f} MB"))
    work.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(path):
        _unzip_edit(path, max_bytes, work)
    elif path.suffix == ".safetensors":
        shutil.copyfile(path, work / "edit.safetensors")
    else:
        raise EditFileError(explain(f"{path.name} is not an edit",
                                    expected="the .zip from 'Download edit' or an edit.safetensors"))
    return Edit.load_verified(work)  # checksums.json (when present), then every check of Edit.load


def _unzip_edit(path: Path, max_bytes: int, work: Path) -> None:
    """Extract the edit files of the zip ``path`` into ``work`` (flat), refusing anything odd."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir() and Path(i.filename).name in ZIP_NAMES]
            names = [Path(i.filename).name for i in members]
            if len(set(names)) != len(names):
                raise EditFileError(explain("the zip holds more than one edit", got=sorted(names),
                                            fix="Upload one edit folder per zip."))
            if sum(i.file_size for i in members) > 4 * max_bytes:
                raise EditFileError(explain("the zip unpacks to too much data", expected=f"<= {4 * max_bytes} bytes"))
            for info in members:
                (work / Path(info.filename).name).write_bytes(zf.read(info))
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:
        raise EditFileError(explain(f"{path.name} is not a readable zip", got=str(e)[:120])) from e
    if "edit.safetensors" not in names:
        raise EditFileError(explain("the zip holds no edit.safetensors", got=sorted(names) or "no edit files",
                                    fix="Upload the .zip that 'Download edit' gives."))


def check_fits(generator: Any, edit: Edit) -> None:
    """Raise BaseMismatchError unless every layer of ``edit`` exists in ``generator`` with the weight
    the edit was made for (nothing is applied), saying which model to load in the UI."""
    made_for = (edit.manifest.get("base_model") or {}).get("id") or "an unknown model"
    fix = f"Load the model it was made for ({made_for}) in the 'Generator' field."
    missing = [n for n in edit.deltas if n not in generator.layers()]
    if missing:
        raise BaseMismatchError(explain("this edit was made for another model", got=f"layers {missing} of {made_for}",
                                        expected=f"layers of {generator.name}: {generator.layers()}", fix=fix))
    for name, delta in edit.deltas.items():  # layer by layer, to say which one differs
        try:
            with model_lock(generator.model):  # it reads the shared weights, which a preview swaps meanwhile
                check_base(generator.model, Edit({name: delta}, edit.manifest))
        except BaseMismatchError as e:  # the core's fix (force=True) is no option here
            raise BaseMismatchError(explain(f"this edit was made for another model (layer {name} differs)",
                                            got=f"an edit of {made_for}", expected=f"an edit of {generator.name}",
                                            fix=fix)) from e
