"""Hostile uploads to the Space (issue 13): each reproduction is a named test.

A zip whose headers lie about its size, a small PNG that claims 12000x12000 pixels, an edit whose
weights overflow, and error messages that would show server paths. Each is refused with one clear
message, leaves the session as it was, and (measured in a fresh process, see ``PROBE``) keeps the
server's peak memory under 300 MB above its baseline.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_space import LAYER, Space, ok, paint, refused, space  # noqa: F401 - the shared server fixture

import olam_edit as oe
from olam_edit.errors import EditFileError, OlamEditError, RequestError
from olam_edit.spaces_app import masks, uploads
from olam_edit.spaces_app.images import MAX_PAINT_PIXELS
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import DISPLAY

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20
PEAK_LIMIT_MB = 300


# ------------------------------------------------------------------------------------ hostile files
def lying_zip(path: Path, zeros: int = 2 << 30, claimed: int = 60_000, name: str = "edit/edit.safetensors") -> Path:
    """A zip of one member, ``zeros`` zero bytes deflated, whose headers claim ``claimed`` bytes (and a
    wrong CRC): about 2 MB on disk for 2 GiB unpacked."""
    co, block = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(MB)
    first = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    repeat = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)  # after a full flush every block is the same
    data = first + repeat * (zeros // MB - 2) + co.compress(block) + co.flush()
    raw = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, 0, len(data), claimed, len(raw), 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, 0, len(data), claimed, len(raw),
                          0, 0, 0, 0, 0, 0)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(raw), len(local) + len(raw)
                      + len(data), 0)
    path.write_bytes(local + raw + data + central + raw + end)
    return path


def huge_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A valid grayscale PNG of ``width`` x ``height`` black pixels, written without ever holding them."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    co, row = zlib.compressobj(9), b"\x00" + bytes(width)  # filter byte 0, then the row
    idat = b"".join(co.compress(row) for _ in range(height)) + co.flush()
    header = struct.pack(">2I5B", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def broken_edit(space: Space, scale: float = 1.0, lam_value: float = 0.01) -> oe.Edit:  # noqa: F811
    """An edit of the Space's main.6 with the given scale and a constant lambda (nothing checks it)."""
    gen = space.generator
    h = gen.handle(LAYER)
    D = torch.linalg.qr(torch.randn(h.key_dim, 1, dtype=torch.float64))[0].T.float().contiguous()  # [1, in]
    with oe.model_lock(gen.model):
        lam = torch.full_like(h.lam_of(h.effective_weight().detach(), D), lam_value)
    return oe.Edit.create(gen.model, {LAYER: oe.Delta(lam, D, h.layout, scale)}, base_model=gen.name)


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"edit/{f.name}")
    return out


# ------------------------------------------------------------------------------------ zip uploads
def test_zip_whose_headers_claim_60kb_for_2gib_of_zeros_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    bomb = lying_zip(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 3 * MB
    with pytest.raises(EditFileError, match="not a readable zip"):  # it stops at what the header claims: Bad CRC
        uploads.read_upload(bomb, 20 * MB, tmp_path / "work")
    written = sum(f.stat().st_size for f in (tmp_path / "work").iterdir())
    assert written <= 60_000


def test_zip_whose_headers_admit_2gib_is_refused_at_the_streaming_limit(tmp_path: Path) -> None:
    bomb = lying_zip(tmp_path / "honest-bomb.zip", claimed=2 << 30)
    with pytest.raises(EditFileError, match="unpacks to too much data"):
        uploads.read_upload(bomb, 20 * MB, tmp_path / "work")
    written = sum(f.stat().st_size for f in (tmp_path / "work").iterdir())
    assert written <= 4 * 20 * MB  # it stopped at the bound, not at 2 GiB


def test_zip_with_too_many_members_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(uploads.MAX_MEMBERS + 1):
            zf.writestr(f"junk/{i}.txt", b"")
    with pytest.raises(EditFileError, match="too many files"):
        uploads.read_upload(many, 20 * MB, tmp_path / "work")
    long_name = tmp_path / "long.zip"
    with zipfile.ZipFile(long_name, "w") as zf:
        zf.writestr("x" * (uploads.MAX_NAME + 1) + "/edit.safetensors", b"")
    with pytest.raises(EditFileError, match="too long names"):
        uploads.read_upload(long_name, 20 * MB, tmp_path / "work2")


def test_zip_bomb_upload_through_the_space_is_one_message(space: Space, tmp_path: Path) -> None:  # noqa: F811
    from gradio_client import handle_file

    bomb = lying_zip(tmp_path / "bomb.zip", zeros=64 * MB)  # the test server takes 1 MB uploads
    assert bomb.stat().st_size < space.studio.settings.max_upload_mb * MB
    status = refused(space.client().predict(handle_file(str(bomb)), api_name="/upload")[-1], "bomb.zip")
    assert "/tmp" not in status and "olam-edit-upload" not in status


# ------------------------------------------------------------------------------------ painted images
def test_png_of_12000x12000_sent_to_set_copy_is_refused_from_its_header(space: Space, tmp_path: Path) -> None:  # noqa: F811
    from gradio_client import handle_file

    big = huge_png(tmp_path / "big.png")
    assert big.stat().st_size < MB
    c = space.client()
    payload, _ = paint(c, 7, (70, 95, 190, 145), tmp_path)
    status = refused(c.predict({**payload, "layers": [handle_file(str(big))]}, api_name="/set_copy")[-1],
                     "too large", "12000x12000")
    assert "/tmp" not in status
    refused(c.predict(layer=LAYER, api_name="/rewrite")[-1], "no copy region")  # nothing was stored
    ok(c.predict(payload, api_name="/set_copy")[-1])  # the session works on


def test_a_large_but_allowed_mask_is_kept_at_the_painters_size() -> None:
    side = math.isqrt(MAX_PAINT_PIXELS)
    layer = np.zeros((side, side, 4), np.uint8)
    layer[: side // 2, : side // 3, 3] = 255
    sel = masks.selection({"background": None, "layers": [layer], "composite": None}, 3)
    assert sel.mask.shape == (DISPLAY, DISPLAY)
    assert sel.mask.mean() == pytest.approx(1 / 6, abs=0.01)  # the same region, averaged down
    assert masks.fit_mask(np.ones((DISPLAY, DISPLAY // 2))).shape == (DISPLAY, DISPLAY // 2)  # small: untouched


def test_png_bytes_and_data_urls_are_checked_before_decoding(tmp_path: Path) -> None:
    import base64

    raw = huge_png(tmp_path / "big.png", 5000, 5000).read_bytes()
    with pytest.raises(RequestError, match="too large"):
        masks.editor_mask(raw)
    with pytest.raises(RequestError, match="too large"):
        masks.editor_mask("data:image/png;base64," + base64.b64encode(raw).decode())
    with pytest.raises(RequestError, match=r"not valid base64|not a readable PNG"):
        masks.editor_mask("data:image/png;base64,@@@@")


def test_the_painter_refuses_oversized_images_and_too_many_layers(tmp_path: Path) -> None:
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from olam_edit.spaces_app.images import RefusedImage
    from olam_edit.spaces_app.painter import MAX_LAYERS, guard

    painter = guard(gr.ImageEditor(type="numpy", image_mode="RGBA"))
    small = tmp_path / "small.png"
    Image.new("RGBA", (DISPLAY, DISPLAY), (0, 0, 0, 0)).save(small)
    value = painter.preprocess(EditorData(background=FileData(path=str(small)),
                                          layers=[FileData(path=str(huge_png(tmp_path / "big.png")))],
                                          composite=FileData(path=str(small))))
    assert value["background"].shape == (DISPLAY, DISPLAY, 4) and isinstance(value["layers"][0], RefusedImage)
    with pytest.raises(RequestError, match="12000x12000"):
        masks.editor_mask(value)
    many = painter.preprocess(EditorData(background=None, layers=[FileData(path=str(small))] * (MAX_LAYERS + 1),
                                         composite=None))
    with pytest.raises(RequestError, match="layers"):
        masks.editor_mask(many)
    assert not (ROOT / "spaces_app" / "painter.pyi").exists()  # no stub written by Gradio


# ------------------------------------------------------------------------------------ edits that overflow
@pytest.mark.parametrize(("scale", "lam_value"), [(1e300, 0.01), (1e39, 0.01), (1.0, 3e38)],
                         ids=["scale-1e300", "scale-1e39", "lambda-3e38"])
def test_an_overflowing_edit_is_never_recorded(space: Space, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,  # noqa: F811
                                               scale: float, lam_value: float) -> None:
    """Whatever the loader accepts, the Space test-renders and bounds the edit before pushing it."""
    session = Session()
    good = broken_edit(space, 1.0, 0.0)
    session.push(good, "a good edit")
    bad = broken_edit(space, scale, lam_value)
    monkeypatch.setattr("olam_edit.spaces_app.studio.read_upload", lambda path, max_bytes, work: bad)
    (tmp_path / "bad.zip").write_bytes(b"")
    with pytest.raises(OlamEditError, match=r"far too much|non-finite|cannot be applied"):
        space.studio.upload(session, tmp_path / "bad.zip")
    assert [e.label for e in session.history] == ["a good edit"] and session.current is good
    space.studio.before_after(session)  # it still renders


def test_an_uploaded_edit_with_scale_nan_leaves_the_session_as_it_was(space: Space, tmp_path: Path) -> None:  # noqa: F811
    from gradio_client import handle_file

    folder = tmp_path / "nan"
    broken_edit(space, 1.0).save(folder)
    cfg = json.loads((folder / "edit_config.json").read_text())  # the manifest a visitor could edit by hand
    cfg["layers"][LAYER]["scale"] = float("nan")
    (folder / "edit_config.json").write_text(json.dumps(cfg))
    upload = zip_folder(folder, tmp_path / "nan-edit.zip")
    c = space.client()
    status = refused(c.predict(handle_file(str(upload)), api_name="/upload")[-1])
    assert "/tmp" not in status and "olam-edit-upload" not in status
    after, status = c.predict(0.5, api_name="/strength")[:2]
    ok(status)  # a strength change works: nothing was pushed
    refused(c.predict(api_name="/undo")[-1], "nothing to undo")


def test_strength_out_of_range_keeps_the_sessions_strength(space: Space) -> None:  # noqa: F811
    from olam_edit.spaces_app.panels.rule import RuleHandlers

    h, session = RuleHandlers(space.studio), Session()
    session.push(broken_edit(space, 1.0, 0.0), "zero edit")
    for bad in (float("nan"), -1.0, 5.0, "abc"):
        with pytest.raises(RequestError, match="strength"):
            h.set_strength(session, bad)  # type: ignore[arg-type]
        assert session.strength == 1.0
    assert h.set_strength(session, 0.5)["status"].startswith("✓") and session.strength == 0.5


# ------------------------------------------------------------------------------------ no server paths
def test_upload_errors_name_the_uploaded_file_never_a_server_path(space: Space, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "mixed"
    broken_edit(space, 1.0, 0.0).save(folder)
    cfg = json.loads((folder / "edit_config.json").read_text())
    cfg["layers"][LAYER]["rank"] = 2  # the two manifests of the folder now differ
    (folder / "edit_config.json").write_text(json.dumps(cfg))
    upload = zip_folder(folder, tmp_path / "my-edit.zip")
    session = Session()
    with pytest.raises(OlamEditError) as info:
        space.studio.upload(session, upload)
    text = str(info.value)
    assert str(tmp_path) not in text and "/tmp/" not in text and "olam-edit-upload" not in text, text
    assert info.value.__cause__ is None and not session.history
    assert uploads.hide_paths("read /tmp/gradio/0a1b/edit.zip: https://huggingface.co/a/b ‖ΔW‖/‖W‖") == \
        "read edit.zip: https://huggingface.co/a/b ‖ΔW‖/‖W‖"


def test_an_unexpected_error_in_a_handler_shows_no_path() -> None:
    from olam_edit.spaces_app.status import failure_text

    text = failure_text(FileNotFoundError(2, "No such file", "/srv/app/cache/x.safetensors"), "upload")
    assert "/srv" not in text and "x.safetensors" in text


# ------------------------------------------------------------------------------------ peak memory
PROBE = r"""
import json, re, sys
from pathlib import Path

def rss_kb(key):
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

def peak_mb(fn):
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = rss_kb("VmRSS")
    try:
        fn()
        outcome = "accepted"
    except Exception as e:
        outcome = type(e).__name__ + ": " + str(e)[:200]
    return (rss_kb("VmHWM") - base) / 1024, outcome

import gradio as gr
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from olam_edit.adapters import load_generator
from olam_edit.spaces_app.masks import selection
from olam_edit.spaces_app.painter import guard
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import Settings
from olam_edit.spaces_app.studio import Studio

bomb, honest, png, small, nan_zip = sys.argv[1:6]
studio = Studio(Settings(stats_samples=50), load_generator("default"))  # the default 20 MB uploads
painter = guard(gr.ImageEditor(type="numpy", image_mode="RGBA"))
session = Session()
studio.before_after(session)  # warm: the first render allocates the model's buffers

def set_copy():
    value = painter.preprocess(EditorData(background=FileData(path=small), layers=[FileData(path=png)],
                                          composite=FileData(path=small)))
    session.copy = selection(value, 7)

report = {"zip": peak_mb(lambda: studio.upload(session, bomb)),
          "zip-honest": peak_mb(lambda: studio.upload(session, honest)), "png": peak_mb(set_copy),
          "nan": peak_mb(lambda: studio.upload(session, nan_zip)),
          "history": len(session.history), "copy": session.copy is not None}
print(json.dumps(report))
"""


def test_peak_memory_of_each_hostile_upload_stays_under_300_mb(space: Space, tmp_path: Path) -> None:  # noqa: F811
    """In a fresh process (the server's baseline is its RSS right before each call; its peak is VmHWM)."""
    bomb = lying_zip(tmp_path / "bomb.zip")
    honest = lying_zip(tmp_path / "honest.zip", claimed=2 << 30)
    png = huge_png(tmp_path / "big.png")
    small = tmp_path / "small.png"
    Image.new("RGBA", (DISPLAY, DISPLAY), (0, 0, 0, 0)).save(small)
    folder = tmp_path / "nan"
    broken_edit(space, 1.0).save(folder)
    cfg = json.loads((folder / "edit_config.json").read_text())
    cfg["layers"][LAYER]["scale"] = float("nan")
    (folder / "edit_config.json").write_text(json.dumps(cfg))
    nan_zip = zip_folder(folder, tmp_path / "nan.zip")
    env = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PATH": "/usr/bin:/bin",
           "OLAM_EDIT_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, (bomb, honest, png, small, nan_zip))],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for case in ("zip", "zip-honest", "png", "nan"):
        peak, outcome = report[case]
        assert outcome != "accepted", (case, report)
        assert peak < PEAK_LIMIT_MB, (case, peak, outcome)
    assert "Bad CRC" in report["zip"][1] and "too much data" in report["zip-honest"][1]
    assert "too large" in report["png"][1]
    assert report["history"] == 0 and report["copy"] is False  # no failed upload reached the session
