"""The Space's shared-model work: lock-free chain renders (the preview's own pixels, no cross-talk between
threads, none while a swapping preview runs), the shared rewriter's caches (the core's edit, keys captured
once per selection) and the image files of shared renders (encoded once)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from olam_edit import Edit, model_lock, preview
from olam_edit.adapters import load_default
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.spaces_app.generators import Models, chain_renderer
from olam_edit.spaces_app.images import ImageFiles
from olam_edit.spaces_app.render import ChainRenderer, chain_of, render_seeds
from olam_edit.spaces_app.rewriters import SelectionKeys, SharedRewriter
from olam_edit.spaces_app.settings import Settings
from olam_edit.spaces_app.studio import example

STATS = 50  # samples of the key statistic: enough for a well-posed solve, fast
SEEDS = list(range(1000, 1020))  # 16 + 4: both batch sizes of the generator's images()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple:
    """The face model, two edits of one layer (the curated examples) and a third of another layer."""
    gen = load_default()
    cache = str(tmp_path_factory.mktemp("stats"))
    edits = []
    for name, layer in (("add_sunglasses", "main.6"), ("close_mouth", "main.6"), ("add_sunglasses", "main.3")):
        request, settings = example(name)  # its first 24 context regions (of 300): a rule, quickly solved
        request = EditRequest(layer, request.copy, request.paste, list(request.context[:24]), rank=request.rank)
        rw = Rewriter(gen, request.layer, stats_samples=STATS, cache_dir=cache, progress=False,
                      ridge=settings.get("ridge", 1e-4))
        edits.append(rw.rewrite(request, smoothness=settings.get("smoothness", 1.0)))
    return gen, edits, cache


def chain(gen) -> tuple:
    found = chain_renderer(gen)
    assert found is not None
    return found


def test_chain_renders_are_the_previews_pixels(setup: tuple) -> None:
    gen, (a, b, c), _ = setup
    renderer, finish = chain(gen)
    for edit, scale in ((None, 1.0), (a, 1.0), (a, 0.35), (a, 0.0), (b, 2.0), (c, 1.0), (Edit.merge([a, c]), 0.5)):
        expected = gen.images(SEEDS, edit, scale)  # [20, 3, 64, 64], the core's swapping preview
        assert torch.equal(render_seeds(gen, renderer, SEEDS, edit, scale, finish), expected), (edit, scale)
    assert torch.equal(gen.images(SEEDS), render_seeds(gen, renderer, SEEDS, None, 1.0, finish))  # model untouched


def test_concurrent_renders_see_only_their_own_edit_while_previews_swap(setup: tuple) -> None:
    gen, (a, b, _), _ = setup
    renderer, finish = chain(gen)
    want = {id(e): gen.images(SEEDS[:4], e, s) for e, s in ((a, 1.0), (b, 1.5))}
    stop = threading.Event()

    def swapper() -> None:  # the core's preview swaps a's weight into the model again and again
        while not stop.is_set():
            gen.images(SEEDS[:2], a, 2.0)

    def render(i: int) -> bool:
        edit, scale = ((a, 1.0), (b, 1.5))[i % 2]
        return torch.equal(render_seeds(gen, renderer, SEEDS[:4], edit, scale, finish), want[id(edit)])

    background = threading.Thread(target=swapper)
    background.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(render, range(24)))
    finally:
        stop.set()
        background.join()


def test_chain_renders_do_not_wait_for_the_models_lock(setup: tuple) -> None:
    """Only the snapshot takes the lock: a render started while another thread holds it finishes as soon
    as it is released, and a render with the snapshot in hand needs no lock at all."""
    gen, (a, _, _), _ = setup
    renderer, _ = chain(gen)
    tensors = renderer.snapshot(a, 1.0)
    z = gen.latents(SEEDS[:3])
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with model_lock(gen.model):
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(30)
    try:
        out = renderer.images(("held",), z, a, 1.0, tensors)  # runs while the lock is held
    finally:
        done.set()
        t.join()
    assert torch.equal(out, preview(gen.model, a, z))  # the model's own output with the edit


def test_only_plain_chains_render_without_the_lock() -> None:
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    assert [n for n, _ in chain_of(seq)] == ["0", "1", "2"]
    assert chain_of(nn.Sequential(nn.Linear(4, 4), nn.Dropout())) is None  # a layer it does not know
    assert chain_of(nn.Sequential(nn.Linear(4, 4)).train()) is None  # training mode
    assert chain_of(nn.Sequential(nn.Sequential(nn.Linear(4, 4)))) is None  # nested
    assert ChainRenderer.of(nn.Module()) is None


def test_the_shared_rewriter_makes_the_cores_edit_and_captures_each_selection_once(setup: tuple,
                                                                                  monkeypatch) -> None:
    gen, (a, _, _), cache = setup
    request, settings = example("add_sunglasses")
    request = EditRequest(request.layer, request.copy, request.paste, list(request.context[:24]), rank=request.rank)
    calls: list[int] = []
    real = gen.keys_and_values
    monkeypatch.setattr(gen, "keys_and_values", lambda layer, z: calls.append(z.shape[0]) or real(layer, z))
    keys = SelectionKeys()
    kwargs = {"stats_samples": STATS, "cache_dir": cache, "ridge": settings["ridge"]}
    first = SharedRewriter(gen, request.layer, keys=keys, model="default", **kwargs)
    edit = first.rewrite(request, smoothness=settings["smoothness"])
    captured = sum(calls)
    assert captured >= len(request.context)  # every context sample once (plus paste and copy)
    again = SharedRewriter(gen, request.layer, keys=keys, model="default", **kwargs)  # another ridge's, say
    calls.clear()
    edit2 = again.rewrite(request, smoothness=settings["smoothness"])
    assert sum(calls) == 2  # the paste and copy samples only: the 24 context regions come from the cache
    for e in (edit, edit2):
        assert e.fingerprint == a.fingerprint
        assert e.manifest["recipe"] == a.manifest["recipe"]  # the same masks, encoded the same way


def test_shared_renders_are_read_only_and_encoded_once(setup: tuple, tmp_path: Path, monkeypatch) -> None:
    gen, (a, _, _), _ = setup
    models = Models(Settings(), gen)
    shown = models.images("default", SEEDS[:3], a, 0.5)
    assert models.images("default", SEEDS[:3], a, 0.5) is shown  # the same render, not a new one
    assert models.images("default", SEEDS[:3], a, 0.0) is models.before("default", SEEDS[:3])  # strength 0: base
    assert all(not im.flags.writeable for im in shown)
    files = ImageFiles(tmp_path / "png")
    writes: list[int] = []
    real = files._write
    monkeypatch.setattr(files, "_write", lambda im: writes.append(1) or real(im))
    paths = [files(im) for im in shown]
    assert [files(im) for im in shown] == paths and len(writes) == 3  # once per read-only array
    copy = np.array(shown[0])  # writable: encoded again, to the same file (named by its content)
    assert files(copy) == paths[0] and len(writes) == 4
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
