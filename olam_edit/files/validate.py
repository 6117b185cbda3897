"""The one place where files we read are checked before anything uses them.

Every reader (edit manifests, checksums, statistics manifests, request JSON, model configs) goes
through these primitives, so a bad value always becomes the reader's own error class (an
:class:`~olam_edit.errors.EditFileError`, :class:`~olam_edit.errors.StatsFileError`, ...) with
``got`` / ``expected`` / ``fix``, and never a ``KeyError``, ``TypeError`` or a traceback deep inside.

Contracts:

* :func:`regular_file` opens nothing: it refuses FIFOs, devices and folders before a reader opens
  the path (a FIFO would block ``open`` forever), and files over a size bound.
* :func:`read_json` reads at most ``max_bytes``, decodes UTF-8, and refuses nesting deeper than
  ``max_depth`` before ``json`` recurses into it.
* :func:`field`, :func:`number`, :func:`text`, :func:`shape` check one value each; ``where`` names
  the value in the message (``"edit_config.json: layers['main.6'].rank"``).
* :func:`open_image` reads an image's size from its header and refuses more than ``max_pixels``
  pixels before anything is decompressed (PIL's own ``Image.MAX_IMAGE_PIXELS`` is set to
  :data:`MAX_IMAGE_PIXELS` too, and its decompression-bomb error becomes the reader's error).
* Values that came from a file are shown through :func:`summary`, never through ``repr`` of an
  arbitrary object (which may be huge or slow).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from olam_edit.errors import OlamEditError, explain

MAX_JSON_BYTES = 16 * 1024 * 1024  # a manifest with masks as PNG data is a few hundred KB
MAX_JSON_DEPTH = 64  # our deepest manifest nests 6 levels
MAX_TEXT = 4096  # characters in one string field (names, ids, descriptions)
MAX_DIMS = 8  # tensor dimensions in a shape field (conv weights have 4)
MAX_ELEMENTS = 1 << 31  # elements of one tensor a shape field may describe
MAX_IMAGE_PIXELS = 4096 * 4096  # 16.7 MP: pixels of one decoded image or mask (masks are resized to a layer grid)


def summary(value: object, limit: int = 60) -> str:
    """A short, safe description of ``value`` for a message: type and a bounded preview."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        text = f"an integer of {value.bit_length()} bits"  # str() of a huge int is slow (and capped)
    elif isinstance(value, bool | int | float) or value is None:
        text = str(value)
    elif isinstance(value, str):
        text = repr(value[:limit]) + ("..." if len(value) > limit else "")
    elif isinstance(value, list | tuple | dict):
        text = f"a {type(value).__name__} of {len(value)} items"
    else:
        text = f"a {type(value).__name__}"
    return text[: limit + 8]


def fail(error: type[OlamEditError], where: str, value: object, expected: str, fix: str | None = None
         ) -> OlamEditError:
    """The error of kind ``error`` saying that ``where`` holds ``value`` instead of ``expected``."""
    return error(explain(f"{where} is not valid", got=summary(value), expected=expected, fix=fix))


def regular_file(path: str | os.PathLike[str], error: type[OlamEditError], *, max_bytes: int | None = None) -> Path:
    """``path`` if it is an existing regular file (of at most ``max_bytes``); never opens it."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise error(explain(f"cannot read {p}", got=type(e).__name__, expected="an existing file")) from e
    if not stat.S_ISREG(st.st_mode):
        raise error(explain(f"{p} is not a regular file", expected="a plain file (not a folder, FIFO or device)"))
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(explain(f"{p} is too large", got=f"{st.st_size} bytes", expected=f"at most {max_bytes} bytes"))
    return p


def _depth(text: str, limit: int) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON ``text`` (strings skipped), stopping past ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(data: bytes | str, error: type[OlamEditError], *, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode ``data`` (UTF-8) as JSON with a nesting bound; bad input raises ``error``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise error(explain(f"{where} is not UTF-8 text", got=f"byte {e.start}", expected="UTF-8 JSON")) from e
    if _depth(text, max_depth) > max_depth:
        raise error(explain(f"{where} nests too deeply", expected=f"at most {max_depth} levels"))
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise error(explain(f"{where} is not valid JSON", got=str(e)[:120])) from e


def read_json(path: str | os.PathLike[str], error: type[OlamEditError], *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a JSON file (a regular file of at most ``max_bytes``) with the checks of :func:`parse_json`."""
    p = regular_file(path, error, max_bytes=max_bytes)
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)
    return parse_json(data, error, where=str(p), max_depth=max_depth)


def field(obj: object, key: str, kinds: type | tuple[type, ...], error: type[OlamEditError], *, where: str,
          required: bool = True, default: Any = None) -> Any:
    """``obj[key]`` if ``obj`` is a mapping and the value has one of ``kinds`` (bool is never an int)."""
    if not isinstance(obj, Mapping):
        raise fail(error, where, obj, "a JSON object")
    if key not in obj:
        if required:
            raise error(explain(f"{where} has no {key!r}", expected=f"a {key!r} entry"))
        return default
    value = obj[key]
    wanted = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in wanted:
        raise fail(error, f"{where}.{key}", value, " or ".join(k.__name__ for k in wanted))
    if not isinstance(value, wanted):
        raise fail(error, f"{where}.{key}", value, " or ".join(k.__name__ for k in wanted))
    return value


def number(value: object, error: type[OlamEditError], *, where: str, lo: float | None = None,
           hi: float | None = None, integer: bool = False) -> float | int:
    """``value`` if it is a finite number (an int when ``integer``) within ``[lo, hi]``."""
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise fail(error, where, value, "an integer" if integer else "a number")
    assert isinstance(value, int | float)
    if not integer and not math.isfinite(value):
        raise fail(error, where, value, "a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise fail(error, where, value, f"a value in [{lo}, {hi}]")
    return value


def text(value: object, error: type[OlamEditError], *, where: str, max_len: int = MAX_TEXT,
         allow_empty: bool = False) -> str:
    """``value`` if it is a string of at most ``max_len`` characters (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str) or len(value) > max_len or (not value and not allow_empty):
        kind = "a string" if allow_empty else "a non-empty string"
        raise fail(error, where, value, f"{kind} of at most {max_len} characters")
    return value


def shape(value: object, error: type[OlamEditError], *, where: str, max_dims: int = MAX_DIMS,
          max_elements: int = MAX_ELEMENTS) -> tuple[int, ...]:
    """``value`` as a tensor shape: a list of 1..``max_dims`` positive ints with at most ``max_elements``."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= max_dims:
        raise fail(error, where, value, f"a list of 1 to {max_dims} sizes")
    dims = tuple(int(number(d, error, where=f"{where}[{i}]", lo=1, hi=max_elements, integer=True))
                 for i, d in enumerate(value))
    if math.prod(dims) > max_elements:
        raise fail(error, where, value, f"at most {max_elements} elements")
    return dims


def open_image(raw: bytes, error: type[OlamEditError], *, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """``raw`` decoded into a loaded PIL image of at most ``max_pixels`` pixels, else ``error``.

    The size comes from the header (``Image.open`` decodes nothing) and is checked before ``load``,
    so a small file that claims a huge image costs no memory.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL's own bomb check, explicitly at our bound
    too_big = f"at most {max_pixels} pixels (e.g. 4096 x 4096)"

    def check(w: int, h: int) -> None:
        if w * h > max_pixels:
            raise error(explain(f"{where} is too large", got=f"{w} x {h} pixels", expected=too_big,
                                fix="Downscale the image first."))

    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and len(raw) >= 24:
        check(*struct.unpack(">II", raw[16:24]))  # the PNG header's own width and height, before PIL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound is checked below
            im = Image.open(io.BytesIO(raw))
            check(*im.size)
            im.load()
        return im
    except Image.DecompressionBombError as e:
        raise error(explain(f"{where} is too large", got=str(e)[:120], expected=too_big)) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, OlamEditError):
            raise
        raise error(explain(f"{where} is not a readable image", got=str(e)[:120])) from e
