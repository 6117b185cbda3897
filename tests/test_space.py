"""The Gradio Space (spaces_app/, imported as olam_edit.spaces_app), served on 127.0.0.1 and driven
through gradio_client.

Masks are sent as gr.ImageEditor sends them: the sample as background, the strokes as an RGBA layer
PNG (transparent elsewhere) and the composite. Every image the Space shows is checked against the
library computing the same request directly.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from olam_edit import Edit, model_lock
from olam_edit.eval.grid import to_uint8
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

ROOT = Path(__file__).resolve().parent.parent
APP_PATH = ROOT / "spaces_app" / "app.py"
STATS_SAMPLES = 200
LAYER = "main.6"
ZOOM = 4  # 64 px samples are shown at 256 px


def load_app():
    """The Space's app module, as ``olam-edit demo`` finds it (olam_edit.spaces_app.app)."""
    from olam_edit.cli.demo import load_space_app

    return load_space_app()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Space:
    """A running Space: its URL, its Blocks and studio (shared model, lock), and its module."""

    def __init__(self, cache_dir: Path, **options) -> None:
        # Gradio's file cache is /tmp/gradio by default, shared with any other run on this machine: a
        # file can be rewritten there while it is served. Keep this server's (and clients') files apart.
        self.files = cache_dir / "gradio"
        self._old_temp = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = str(self.files)
        self.app = load_app()
        self.demo = self.app.build_app(stats_samples=STATS_SAMPLES, cache_dir=str(cache_dir), **options)
        self.studio = self.demo.studio
        self.port = free_port()
        self.app.launch(self.demo, "127.0.0.1", self.port, prevent_thread_lock=True, quiet=True)
        self.url = f"http://127.0.0.1:{self.port}/"

    def client(self, **kwargs):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(self.files / "client"), **kwargs)

    @property
    def generator(self):
        return self.studio.models.get("default")

    def reference_images(self, edit: Edit | None, seeds: list[int], scale: float = 1.0) -> np.ndarray:
        return to_uint8(self.generator.images(seeds, edit, scale))  # a preview takes the model's lock

    def reference_edit(self, request: EditRequest, **settings) -> Edit:
        gen = self.generator
        with model_lock(gen.model):  # the shared model: take turns with the server
            rw = Rewriter(gen, request.layer, stats_samples=STATS_SAMPLES,
                          cache_dir=self.studio.settings.cache_dir, progress=False, **settings)
            return rw.rewrite(request)

    def close(self) -> None:
        self.demo.close()
        if self._old_temp is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = self._old_temp


_RUNNING: list[Space] = []  # one server for this module and the browser test (fixture imported there)


@pytest.fixture(scope="session")
def space(tmp_path_factory) -> Space:
    if _RUNNING:  # already started by the other module's copy of this fixture, which closes it
        yield _RUNNING[0]
        return
    s = Space(tmp_path_factory.mktemp("space-cache"), max_upload_mb=1.0, compare_count=8)
    _RUNNING.append(s)
    try:
        yield s
    finally:
        _RUNNING.remove(s)
        s.close()


# ------------------------------------------------------------------------------------ painting like the editor
def stroke_layer(box: tuple[int, int, int, int], size: int = 256) -> np.ndarray:
    """An RGBA layer with one opaque red ellipse (x0, y0, x1, y1) on transparency, as the brush leaves it."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse(box, fill=(255, 32, 32, 255))
    return np.asarray(im)


def paint(client, seed: int, box: tuple[int, int, int, int], tmp: Path) -> tuple[dict, np.ndarray]:
    """Open sample ``seed`` in the Space and return the editor payload with a stroke over ``box``."""
    from gradio_client import handle_file

    opened = client.predict(seed, api_name="/open")
    assert opened[1] == seed and opened[2].startswith("✓"), opened
    background = np.asarray(Image.open(opened[0]["background"]).convert("RGBA"))
    layer = stroke_layer(box)
    alpha = layer[..., 3:] / 255.0
    composite = (background * (1 - alpha) + layer * alpha).round().astype(np.uint8)
    paths = {}
    for name, arr in (("layer", layer), ("composite", composite)):
        paths[name] = tmp / f"{name}-{seed}-{box[0]}-{box[1]}.png"
        Image.fromarray(arr).save(paths[name])
    payload = {"background": handle_file(opened[0]["background"]), "layers": [handle_file(str(paths["layer"]))],
               "composite": handle_file(str(paths["composite"])), "id": None}
    return payload, layer


def gallery_pixels(gallery: list[dict]) -> np.ndarray:
    """The Space's images, back at the model's resolution ``[B, 64, 64, 3]``."""
    return np.stack([np.asarray(Image.open(item["image"]).convert("RGB"))[::ZOOM, ::ZOOM] for item in gallery])


def ok(status: str) -> str:
    assert status.startswith("✓"), status
    return status


def refused(status: str, *words: str) -> str:
    assert status.startswith("⚠"), status
    assert "Traceback" not in status
    for w in words:
        assert w in status, status
    return status


RULE_A = {"context": (3, (70, 100, 190, 140)), "paste": (3, (70, 100, 190, 140)), "copy": (7, (70, 95, 190, 145))}
RULE_B = {"context": (11, (90, 150, 170, 200)), "paste": (11, (90, 150, 170, 200)), "copy": (5, (80, 40, 180, 90))}


def rewrite(client, layer: str = LAYER, **settings) -> tuple:
    """Press Rewrite (rank, smoothness, ridge and strength at their defaults unless given)."""
    return client.predict(layer=layer, **settings, api_name="/rewrite")


def state_rule(client, rule: dict, tmp: Path) -> EditRequest:
    """Paint ``rule`` in the Space (context, paste, copy) and return the same request built directly."""
    masks = {}
    for what, api in (("context", "/add_context"), ("paste", "/set_paste"), ("copy", "/set_copy")):
        seed, box = rule[what]
        payload, layer = paint(client, seed, box, tmp)
        ok(client.predict(payload, api_name=api)[-1])
        masks[what] = Selection(seed, layer)  # mask_from_image: the alpha of the RGBA stroke layer
    return EditRequest(LAYER, copy=masks["copy"], paste=masks["paste"], context=[masks["context"]])


# ------------------------------------------------------------------------------------ acceptance
def test_full_rewrite_strength_undo_download_upload(space: Space, tmp_path: Path) -> None:
    c = space.client()
    request = state_rule(c, RULE_A, tmp_path)
    before, after, history, status = rewrite(c)
    ok(status)
    assert "1." in history and "current" in history
    seeds = [int(item["caption"].lstrip("#")) for item in after]
    edit = space.reference_edit(request)
    assert np.array_equal(gallery_pixels(before), space.reference_images(None, seeds))
    assert np.array_equal(gallery_pixels(after), space.reference_images(edit, seeds))
    assert not np.array_equal(gallery_pixels(after), gallery_pixels(before))

    half = c.predict(0.5, api_name="/strength")[0]
    assert np.array_equal(gallery_pixels(half), space.reference_images(edit, seeds, 0.5))
    zero = c.predict(0.0, api_name="/strength")[0]
    assert np.array_equal(gallery_pixels(zero), gallery_pixels(before))
    c.predict(1.0, api_name="/strength")

    shown, status = c.predict(api_name="/download")
    ok(status)
    zip_path = shown["value"]  # the File is revealed (visible=True) with the zip as its value
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        assert {"edit/edit.safetensors", "edit/edit_config.json", "edit/README.md", "edit/before_after.png"} <= names
        zf.extractall(tmp_path / "unzipped")
    downloaded = Edit.load(tmp_path / "unzipped" / "edit")
    torch.testing.assert_close(downloaded.deltas[LAYER].lam, edit.deltas[LAYER].lam.float())

    after_undo, history, status = c.predict(api_name="/undo")
    assert "Undone" in ok(status) and "No edits" in history
    assert np.array_equal(gallery_pixels(after_undo), gallery_pixels(before))
    refused(c.predict(api_name="/undo")[-1], "nothing to undo")

    from gradio_client import handle_file

    uploaded, history, status = c.predict(handle_file(zip_path), api_name="/upload")
    assert "uploaded" in ok(status).lower() and "uploaded" in history
    assert np.array_equal(gallery_pixels(uploaded), space.reference_images(downloaded, seeds))


def test_a_download_at_a_strength_says_so_in_its_manifest(space: Space, tmp_path: Path) -> None:
    """The Space saves what it shows: the edit at the session's strength, its relative norm scaled too."""
    c = space.client()
    request = state_rule(c, RULE_A, tmp_path)
    ok(rewrite(c, strength=0.5)[-1])
    shown, status = c.predict(api_name="/download")
    ok(status)
    with zipfile.ZipFile(shown["value"]) as zf:
        zf.extractall(tmp_path / "unzipped")
    saved = Edit.load(tmp_path / "unzipped" / "edit")
    full = space.reference_edit(request)
    assert saved.deltas[LAYER].scale == 0.5
    assert saved.manifest["metrics"]["relative_norm"] == pytest.approx(0.5 * full.manifest["metrics"]["relative_norm"])
    assert full.scaled(1.0).manifest == full.manifest


SOLVER_B = {"smoothness": 0.3, "ridge": 0.1}  # client B also uses other solver settings


def test_two_clients_at_once_each_see_only_their_own_edit(space: Space, tmp_path: Path) -> None:
    def session(rule: dict, strength: float, name: str) -> tuple[EditRequest, list, list]:
        c = space.client()
        request = state_rule(c, rule, tmp_path / name)
        first = c.submit(layer=LAYER, **(SOLVER_B if name == "b" else {}), api_name="/rewrite").result()
        ok(first[-1])
        scaled = c.submit(strength, api_name="/strength").result()
        ok(scaled[-1])
        return request, first[1], scaled[0]

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with ThreadPoolExecutor(2) as pool:
        job_a, job_b = pool.submit(session, RULE_A, 0.5, "a"), pool.submit(session, RULE_B, 1.5, "b")
        (req_a, after_a, scaled_a), (req_b, after_b, scaled_b) = job_a.result(), job_b.result()
    seeds = [int(item["caption"].lstrip("#")) for item in after_a]
    edit_a, edit_b = space.reference_edit(req_a), space.reference_edit(req_b, **SOLVER_B)
    assert np.array_equal(gallery_pixels(after_a), space.reference_images(edit_a, seeds))
    assert np.array_equal(gallery_pixels(after_b), space.reference_images(edit_b, seeds))
    assert np.array_equal(gallery_pixels(scaled_a), space.reference_images(edit_a, seeds, 0.5))
    assert np.array_equal(gallery_pixels(scaled_b), space.reference_images(edit_b, seeds, 1.5))
    assert not np.array_equal(gallery_pixels(after_a), gallery_pixels(after_b))


def test_heatmap_and_more_samples(space: Space, tmp_path: Path) -> None:
    c = space.client()
    gallery, checked, status = c.predict(heat=True, api_name="/heatmap")
    assert checked is False
    refused(status, "no rule to show")
    payload, _ = paint(c, 3, RULE_A["context"][1], tmp_path)
    ok(c.predict(payload, api_name="/add_context")[-1])
    plain = gallery_pixels(c.predict(heat=False, api_name="/heatmap")[0])
    heat, checked, status = c.predict(heat=True, api_name="/heatmap")
    assert checked is True and ok(status)
    tinted = gallery_pixels(heat)
    assert tinted.shape == plain.shape and not np.array_equal(tinted, plain)
    red = tinted[..., 0].astype(int) - plain[..., 0].astype(int)
    assert red.max() > 40  # the rule fires somewhere, shown in red
    more, status = c.predict(heat=True, api_name="/more")
    assert len(more) == len(heat) + 16 and ok(status)


def test_example_rule_fills_the_selections_and_settings(space: Space) -> None:
    from olam_edit.rules.spatial.examples import list_examples, load_example

    name = list_examples()[0]
    c = space.client()
    layer, rank, smoothness, ridge, strength, tray, copy, paste, status = c.predict(name, api_name="/example")
    request, settings = load_example(name)
    assert (layer, rank, smoothness, ridge) == (request.layer, request.rank, settings["smoothness"], settings["ridge"])
    assert strength == settings.get("strength", 1.0)
    assert len(tray) == min(24, len(request.context)) and copy and paste and ok(status)
    assert "Press Rewrite" in status


def test_a_hub_generator_named_in_the_ui(space: Space, tmp_path: Path, hf_sandbox,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    from hub_server import FakeHub
    from huggingface_hub import HfApi

    from olam_edit.adapters.stylegan2.config import StyleGAN2Config
    from olam_edit.adapters.stylegan2.files import save_stylegan2
    from olam_edit.adapters.stylegan2.net import StyleGAN2Generator

    torch.manual_seed(0)
    save_stylegan2(StyleGAN2Generator(StyleGAN2Config(size=16, style_dim=16, n_mlp=2,
                                                      channels={4: 16, 8: 16, 16: 16})), tmp_path / "tiny")
    other = space.client()  # a session that stays on the default model
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("test-user/tiny-stylegan2")
        api.upload_folder(repo_id="test-user/tiny-stylegan2", folder_path=tmp_path / "tiny")
        for name, value in (("ENDPOINT", hub.endpoint),  # as HF_ENDPOINT=<hub> would set them at start-up
                            ("HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")):
            monkeypatch.setattr(huggingface_hub.constants, name, value)
        c = space.client()
        loaded = c.predict("test-user/tiny-stylegan2", api_name="/load_model")
    assert "Loaded" in ok(loaded[-1]) and len(loaded[0]) == 16
    layers = [choice[0] for choice in loaded[1]["choices"]]
    assert loaded[1]["value"] in layers and len(layers) >= 3
    state_rule(c, {"context": (3, (60, 60, 200, 200)), "paste": (3, (60, 60, 200, 200)),
                   "copy": (5, (40, 40, 120, 120))}, tmp_path)
    before, after, history, status = rewrite(c, layer=loaded[1]["value"])
    assert "Rewritten" in ok(status) and len(after) == space.studio.settings.compare_count
    default_gallery = other.predict(heat=False, api_name="/heatmap")[0]
    seeds = [int(item["caption"].lstrip("#")) for item in default_gallery]
    assert np.array_equal(gallery_pixels(default_gallery), space.reference_images(None, seeds))


def test_bad_input_is_a_message_and_the_session_keeps_working(space: Space, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c = space.client()
    refused(rewrite(c)[-1], "no copy region")
    refused(c.predict(api_name="/download")[-1], "no edit to download")
    payload, _ = paint(c, 3, (100, 100, 140, 140), tmp_path)
    empty = {**payload, "layers": [], "composite": payload["background"]}
    refused(c.predict(empty, api_name="/add_context")[-1], "mask is empty")
    blank = tmp_path / "blank.png"
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(blank)
    refused(c.predict({**payload, "layers": [handle_file(str(blank))]}, api_name="/set_copy")[-1], "mask is empty")
    full = tmp_path / "full.png"
    Image.new("RGBA", (256, 256), (255, 0, 0, 255)).save(full)
    refused(c.predict({**payload, "layers": [handle_file(str(full))]}, api_name="/set_paste")[-1], "whole image")

    ok(c.predict(payload, api_name="/set_paste")[-1])
    refused(rewrite(c)[-1], "no copy region")

    not_edits = {"notes.zip": (b"not a zip at all", "not an edit"),
                 "weights.safetensors": (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "no olam-edit manifest"),
                 "other.zip": (_zip_of({"model/config.json": b"{}"}), "no edit.safetensors"),
                 "two.zip": (_zip_of({"a/edit.safetensors": b"", "b/edit.safetensors": b""}), "more than one edit")}
    for name, (data, words) in not_edits.items():
        (tmp_path / name).write_bytes(data)
        refused(c.predict(handle_file(str(tmp_path / name)), api_name="/upload")[-1], words)
    (tmp_path / "edit.txt").write_bytes(b"hello")
    with pytest.raises(AppError, match="Invalid file type"):  # refused by the file picker's own check
        c.predict(handle_file(str(tmp_path / "edit.txt")), api_name="/upload")
    big = tmp_path / "big.zip"
    big.write_bytes(os.urandom(1_300_000))
    refused(c.predict(handle_file(str(big)), api_name="/upload")[-1], "too large")
    refused(c.predict(handle_file(str(_foreign_edit_zip(space, tmp_path))), api_name="/upload")[-1], "another model")

    refused(c.predict("../../etc/passwd", api_name="/load_model")[-1], "not a generator name")
    refused(c.predict("nobody/no-such-generator", api_name="/load_model")[-1], "could not load")

    ok(c.predict(paint(c, 7, RULE_A["copy"][1], tmp_path)[0], api_name="/set_copy")[-1])
    before, after, history, status = rewrite(c)
    assert "Rewritten" in ok(status) and "1." in history


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _foreign_edit_zip(space: Space, tmp: Path) -> Path:
    """A valid edit of a model whose main.6 differs from the Space's (fine-tuned, say)."""
    from olam_edit.adapters import TorchGenerator
    from olam_edit.adapters.face_dcgan.model import LATENT_SHAPE

    base = space.generator.model
    with model_lock(base):  # the shared model: take turns with the server
        other = copy.deepcopy(base)
    with torch.no_grad():
        other.main[6].weight.mul_(1.01)
    gen = TorchGenerator(other, LATENT_SHAPE, name="someone/fine-tuned-faces")
    request = EditRequest(LAYER, copy=Selection(7, stroke_layer(RULE_A["copy"][1])),
                          paste=Selection(3, stroke_layer(RULE_A["paste"][1])))
    rewriter = Rewriter(gen, LAYER, stats_samples=50, cache_dir=str(tmp / "other-stats"), progress=False)
    edit = rewriter.rewrite(request)
    edit.save(tmp / "foreign" / "edit")
    return Path(shutil.make_archive(str(tmp / "foreign-edit"), "zip", tmp / "foreign", "edit"))


def test_publish_uses_the_users_login_never_the_spaces_token(space: Space, tmp_path: Path, hf_sandbox,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from hub_server import FakeHub

    with FakeHub({"hf_user_token": "test-user", "hf_space_token": "space-owner"}) as hub:
        monkeypatch.setattr(space.studio.settings, "hub_endpoint", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_space_token")  # the Space's own (valid) token: must never be used
        anonymous = space.client()
        state_rule(anonymous, RULE_A, tmp_path)
        ok(rewrite(anonymous)[-1])
        refused(anonymous.predict("space-edit", True, api_name="/publish"), "login")
        assert not hub.repos

        user = space.client(oauth_token="hf_user_token")  # what gr.LoginButton's OAuth session provides
        refused(user.predict("space-edit", True, api_name="/publish"), "no edit to publish")
        refused(user.predict("bad name!", True, api_name="/publish"), "not valid")
        request = state_rule(user, RULE_A, tmp_path)
        ok(rewrite(user, strength=0.5)[-1])
        assert "Published" in ok(user.predict("space-edit", True, api_name="/publish"))
        assert [key[1] for key in hub.repos] == ["test-user/space-edit"]
        files = hub.files("test-user/space-edit")
        assert hub.repo("test-user/space-edit").private
        assert not hub.server_errors
    assert {"edit.safetensors", "edit_config.json", "README.md", "before_after.png"} <= set(files)
    assert files["before_after.png"].startswith(b"\x89PNG")
    (tmp_path / "pushed").mkdir()
    for name in ("edit.safetensors", "edit_config.json"):
        (tmp_path / "pushed" / name).write_bytes(files[name])
    pushed = Edit.load(tmp_path / "pushed")
    edit = space.reference_edit(request)
    assert pushed.deltas[LAYER].scale == 0.5  # published at the session's strength
    torch.testing.assert_close(pushed.deltas[LAYER].lam, edit.deltas[LAYER].lam.float())


# ------------------------------------------------------------------------------------ the commands
def test_pure_helpers() -> None:
    from olam_edit.spaces_app import images, masks
    from olam_edit.spaces_app.session import Session

    layer = stroke_layer((10, 20, 50, 40))
    mask = masks.editor_mask({"background": None, "layers": [layer], "composite": None})
    assert mask.shape == (256, 256) and mask.max() == 1.0 and mask[0, 0] == 0.0
    bg = np.zeros((256, 256, 3), np.uint8)
    comp = bg.copy()
    comp[30, 30] = 255
    assert masks.editor_mask({"background": bg, "layers": [], "composite": comp})[30, 30] == 1.0
    session = Session()
    with pytest.raises(ValueError, match="no copy region"):
        masks.make_request(session, LAYER, 1)
    session.copy = session.paste = Selection(1, mask)
    assert masks.make_request(session, LAYER, 2).rank == 2
    assert images.resize(np.zeros((64, 64, 3), np.uint8)).shape == (256, 256, 3)
    assert images.heat_weight(np.array([0.0, 0.5, 0.75, 1.0, 2.0]), 0.5, 1.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_a_guarded_handler_answers_by_output_name(caplog: pytest.LogCaptureFixture) -> None:
    """Handlers return their outputs by name; the event gets them in its order, gr.skip() for the rest,
    and an error changes the status line only (a bug also shows as one line, logged in full)."""
    import gradio as gr

    from olam_edit.errors import RequestError
    from olam_edit.spaces_app.status import guarded

    def handler(session: str, layer: str) -> dict:
        if layer == "bad":
            raise RequestError("no such layer")
        if layer == "odd":
            return {"stray": 1, "status": "never shown"}
        return {"status": "✓ fine", "session": session}

    run = guarded(handler, ("session", "gallery", "status"))
    assert run("s", LAYER) == ("s", gr.skip(), "✓ fine")
    with pytest.warns(UserWarning, match="no such layer"):  # gr.Warning outside a request
        assert run("s", "bad") == (gr.skip(), gr.skip(), "⚠ no such layer")
    with pytest.warns(UserWarning):
        status = run("s", "odd")[-1]
    refused(status, "something went wrong", "stray")
    assert "Traceback" in caplog.text
    assert guarded(handler, ("session", "status"))("s", LAYER) == ("s", "✓ fine")
    with pytest.warns(UserWarning):
        assert guarded(handler, ("status",))("s", "bad") == "⚠ no such layer"  # one output: the bare value


def _listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on for ``port`` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            return ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return None


def _serve(cmd: list[str], port: int, tmp: Path, env: dict[str, str]) -> subprocess.Popen:
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                "OLAM_EDIT_CACHE": str(tmp / "cache"), "OLAM_EDIT_STATS_SAMPLES": "50", **env}
    log = open(tmp / f"server-{port}.log", "wb")  # the child keeps it; closed when it exits
    return subprocess.Popen(cmd, cwd=tmp, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_page(port: int, proc: subprocess.Popen, tmp: Path, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / f"server-{port}.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no server on port {port}: " + (tmp / f"server-{port}.log").read_text()[-2000:])


def test_python_app_py_serves_like_a_space(tmp_path: Path) -> None:
    """``python spaces_app/app.py`` as a Space runs it (port from GRADIO_SERVER_PORT), on loopback here."""
    port = free_port()
    proc = _serve([sys.executable, str(APP_PATH)], port, tmp_path, {"GRADIO_SERVER_PORT": str(port)})
    try:
        config = _wait_for_page(port, proc, tmp_path)
        assert "Rewrite" in config and "olam-edit" in config
        assert _listening_address(port) == "127.0.0.1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_olam_edit_demo_launches_the_space_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``olam-edit demo --port N`` builds the Space and serves it on 127.0.0.1 (in-process here, so the
    test can stop it: the real command blocks in Gradio's launch)."""
    from olam_edit.cli import main

    app, started, port = load_app(), [], free_port()
    real_launch = app.launch

    def launch(demo, host, port, **kwargs):
        started.append(demo)
        return real_launch(demo, host, port, prevent_thread_lock=True, quiet=True, **kwargs)

    monkeypatch.setattr(app, "launch", launch)
    monkeypatch.setenv("OLAM_EDIT_STATS_SAMPLES", "50")
    try:
        assert main(["demo", "--port", str(port)]) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as r:
            assert "Rewrite" in r.read().decode()
        assert _listening_address(port) == "127.0.0.1"
        assert started[0].studio.settings.stats_samples == 50
        assert started[0]._queue.max_size == started[0].studio.settings.queue_size  # a bounded queue
    finally:
        for demo in started:
            demo.close()


def test_an_app_py_named_by_the_variable_runs_the_installed_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """``OLAM_EDIT_SPACE_APP=spaces_app/app.py`` loads that file by path; it builds the same Space."""
    import importlib

    from olam_edit.cli.demo import MODULE_NAME, load_space_app

    monkeypatch.setenv("OLAM_EDIT_SPACE_APP", str(APP_PATH))
    by_path = load_space_app()
    assert by_path.__name__ == MODULE_NAME and Path(by_path.__file__).resolve() == APP_PATH.resolve()
    assert by_path.Studio is importlib.import_module("olam_edit.spaces_app.studio").Studio
    assert load_space_app() is by_path  # loaded once


def test_demo_command_fails_clearly_without_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from olam_edit.cli import main

    monkeypatch.setenv("OLAM_EDIT_SPACE_APP", str(tmp_path / "missing" / "app.py"))
    assert main(["demo", "--port", str(free_port())]) == 2
    assert "cannot find the Space app" in capsys.readouterr().err


def test_an_example_with_several_pairs_keeps_them_until_a_pair_is_painted(space: Space) -> None:
    from olam_edit.rules.spatial.examples import load_example
    from olam_edit.spaces_app.masks import make_request
    from olam_edit.spaces_app.panels.selections import SelectionHandlers
    from olam_edit.spaces_app.session import Session

    c = space.client()
    *_, strength, _tray, _copy, _paste, status = c.predict("close_mouth_pairs", api_name="/example")
    assert "32 copy / paste pairs" in status and ok(status)
    request, settings = load_example("close_mouth_pairs")
    assert strength == settings["strength"] != 1.0  # the slider is set to the strength the rule is curated at
    handlers, session = SelectionHandlers(space.studio), Session(model="default")
    handlers.example("close_mouth_pairs", session)
    solved = make_request(session, request.layer, request.rank)
    assert [(a.seed, b.seed) for a, b in solved.examples] == [(a.seed, b.seed) for a, b in request.examples]
    stroke = np.zeros((64, 64, 4), np.uint8)
    stroke[40:50, 20:40] = 255  # a painted box
    session.seed = 3
    handlers.set_paste({"background": np.zeros((64, 64, 3), np.uint8), "layers": [stroke], "composite": None}, session)
    assert session.pairs == [] and not make_request(session, request.layer, request.rank).pairs
    session.clear_selections()
    assert session.pairs == [] and session.copy is None


def test_a_two_stage_example_is_rewritten_at_both_layers_as_the_command_line_does(space: Space) -> None:
    import torch

    from olam_edit.rules.spatial.examples import load_example
    from olam_edit.rules.spatial.rewriter import Rewriter
    from olam_edit.rules.spatial.stages import parse_then, solve_staged
    from olam_edit.spaces_app.panels.selections import SelectionHandlers
    from olam_edit.spaces_app.session import Session

    request, settings = load_example("add_sunglasses")
    assert settings["then"]["layer"] == "main.12"
    handlers, session = SelectionHandlers(space.studio), Session(model="default")
    assert "then at main.12" in handlers.example("add_sunglasses", session)["status"]
    before = {k: v.clone() for k, v in space.studio.generator(session).model.state_dict().items()}
    edit = space.studio.rewrite(session, request.layer, request.rank, settings["smoothness"], settings["ridge"])
    model = space.studio.generator(session).model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the shared model is as it was
    gen, st = space.studio.generator(session), space.studio.settings
    then = parse_then(settings, request.layer)

    def rewriter_for(layer: str) -> Rewriter:  # the command line's rewriters, with the Space's sample count
        return Rewriter(gen, layer, smoothness=settings["smoothness"], ridge=settings["ridge"],
                        stats_samples=st.stats_samples,
                        progress=False)

    want = solve_staged(gen, request, then, rewriter_for)
    assert edit.layers == want.layers == ["main.6", "main.12"]
    for layer in edit.layers:
        got, ref = edit.deltas[layer].dense(torch.float64), want.deltas[layer].dense(torch.float64)
        assert torch.allclose(got, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
    stroke = np.zeros((64, 64, 4), np.uint8)
    stroke[20:30, 20:40] = 255
    session.seed = 3
    handlers.set_copy({"background": np.zeros((64, 64, 3), np.uint8), "layers": [stroke], "composite": None}, session)
    assert session.then is None  # a painted rule of the visitor's own is rewritten at its layer only
    assert space.studio.rewrite(session, request.layer, 1, 0.3, 0.1).layers == ["main.6"]
