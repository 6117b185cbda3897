"""Edit files in and out of the Space: the download zip, its before/after picture, and uploads.

An upload is read defensively: its size is checked before anything is read, a zip's directory is
bounded before it is parsed (entries, names), its members are read (only the known file names, never
their paths) by streaming in chunks that count the bytes really unpacked (no header is trusted), and
the edit is verified (checksums, manifests) and vetted against the session's model before it is
used. Messages shown to the visitor never carry a server path (:func:`hide_paths`).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from olam_edit import Edit, check_base, model_lock
from olam_edit.edit.publish import stage_edit
from olam_edit.errors import BaseMismatchError, EditFileError, OlamEditError, explain
from olam_edit.eval.grid import grid_image

ZIP_NAMES = ("edit.safetensors", "edit_config.json", "checksums.json")  # read from an upload; others ignored
MAX_MEMBERS = 64  # entries of an uploaded zip (a downloaded edit has 5)
MAX_NAME = 512  # characters of one entry's name
CHUNK = 1 << 20  # bytes unpacked at a time


def edit_name(edit: Edit) -> str:
    """A file name for ``edit``: its layers (the first and how many more, for an edit of many, such as a
    text rule's) and the start of its fingerprint."""
    layers = list(edit.layers) if len(edit.layers) <= 2 else [edit.layers[0], f"{len(edit.layers) - 1}-more"]
    return f"olam-edit-{'-'.join(layers)}-{edit.fingerprint[:8]}".replace("/", "_")


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
    """Extract the edit files of the zip ``path`` into ``work`` (flat), refusing anything odd.

    No header is trusted: the directory is bounded before it is parsed (:func:`_check_directory`) and
    each member is streamed to disk in chunks, counting the bytes it really unpacks to, until all of
    them together pass ``4 * max_bytes``.
    """
    _check_directory(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS or any(len(i.filename) > MAX_NAME for i in infos):
                raise EditFileError(explain(f"{path.name} holds too many files or too long names",
                                            got=f"{len(infos)} files",
                                            expected=f"at most {MAX_MEMBERS} names of {MAX_NAME} characters"))
            members = [i for i in infos if not i.is_dir() and Path(i.filename).name in ZIP_NAMES]
            names = [Path(i.filename).name for i in members]
            if len(set(names)) != len(names):
                raise EditFileError(explain("the zip holds more than one edit", got=sorted(names),
                                            fix="Upload one edit folder per zip."))
            unpacked = 0
            for info in members:
                unpacked += _extract(zf, info, work / Path(info.filename).name, 4 * max_bytes - unpacked)
    except OlamEditError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, EOFError, zlib.error,
            NotImplementedError, ValueError) as e:
        raise EditFileError(explain(f"{path.name} is not a readable zip", got=_one_line(e))) from e
    if "edit.safetensors" not in names:
        raise EditFileError(explain("the zip holds no edit.safetensors", got=sorted(names) or "no edit files",
                                    fix="Upload the .zip that 'Download edit' gives."))


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream the member ``info`` to ``target`` in chunks; the bytes written, at most ``budget``
    (EditFileError as soon as the member unpacks to more, whatever its header says)."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise EditFileError(explain("the zip unpacks to too much data",
                                            got=f"{info.filename[:80]!r} unpacks past the {budget} bytes left",
                                            fix="Upload the .zip that 'Download edit' gives."))
            dst.write(chunk)
    return written


def _check_directory(path: Path) -> None:
    """Refuse a zip whose central directory is larger than an edit's could be, before zipfile parses it
    (it builds one object per entry, so a directory of a million entries would take gigabytes)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65557))  # the end record (22 bytes) and a comment of at most 65535
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise EditFileError(explain(f"{path.name} is not a readable zip", got="no end of central directory"))
    entries, dir_bytes = struct.unpack_from("<HI", tail, at + 10)  # total entries, directory size
    if entries > MAX_MEMBERS or dir_bytes > MAX_MEMBERS * (46 + MAX_NAME + 64):
        raise EditFileError(explain(f"{path.name} holds too many files", got=f"{entries} entries, {dir_bytes} "
                                    "bytes of directory", expected=f"at most {MAX_MEMBERS} files"))


def _one_line(error: BaseException) -> str:
    """The first line of ``error``'s message, at most 120 characters, without any server path in it."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:120]


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.@+~=-]+){2,}/?")  # '/tmp/x'; not 'https://x/y', 'a/b', 'x/y/z'


def hide_paths(text: str, known: dict[str, str] | None = None) -> str:
    """``text`` with no server path in it: each ``known`` path (longest first) becomes the name it
    stands for (the uploaded file's own name, say), and any other absolute path its last component."""
    for path, name in sorted((known or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0)).name or "/", text)


def hide_error_paths(error: OlamEditError, known: dict[str, str]) -> OlamEditError:
    """``error`` (same class where it can be rebuilt, else an EditFileError) with :func:`hide_paths`
    applied to its message and its got / expected / fix."""
    def clean(value: object) -> object:
        return None if value is None else hide_paths(str(value), known)

    message = explain(hide_paths(error.what, known), got=clean(error.got), expected=clean(error.expected),
                      fix=clean(error.fix))  # type: ignore[arg-type]
    try:
        return type(error)(message)
    except TypeError:
        return EditFileError(message)


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
