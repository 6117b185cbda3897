"""ZeroGPU: with a ``spaces`` package whose ``GPU`` behaves as ZeroGPU's worker does (arguments and result
copied across, nothing the function changes comes back), the Space's solves, renders and heatmaps
go through it inside a Gradio event and give what they give without it; off ZeroGPU it is a no-op."""

from __future__ import annotations

import copy
import importlib
import sys
import types

import numpy as np
import pytest

from olam_edit.spaces_app import zerogpu
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import Settings
from olam_edit.spaces_app.studio import Studio, example

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_spaces(calls: list[str], zero_gpu: bool) -> types.ModuleType:
    """A ``spaces`` package: ``GPU(fn)`` runs ``fn`` on deep copies of its arguments and returns a copy of
    its answer (ZeroGPU's forked worker gets and sends pickled copies) when ``zero_gpu``, else ``fn`` itself."""
    module = types.ModuleType("spaces")
    module.config = types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=zero_gpu))

    def GPU(fn, duration=None):  # the real name
        if not zero_gpu:
            return fn

        def worker(*args, **kwargs):
            calls.append(args[1])  # run_registered(owner_id, method, ...)
            args, kwargs = copy.deepcopy((args, kwargs))  # the worker's copies (ZeroGPU pickles them)
            return copy.deepcopy(fn(*args, **kwargs))

        return worker

    module.GPU = GPU
    return module


@pytest.fixture
def gpu_calls(monkeypatch, request) -> list[str]:
    """zerogpu reloaded with a fake ZeroGPU ``spaces`` package and inside a Gradio event; restored after."""
    from gradio.context import LocalContext

    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces(calls, zero_gpu=True))
    importlib.reload(zerogpu)
    token = LocalContext.event_id.set("test-event")
    yield calls
    LocalContext.event_id.reset(token)
    monkeypatch.delitem(sys.modules, "spaces")
    importlib.reload(zerogpu)


def session_with_example() -> Session:
    session = Session()
    request, _ = example("add_sunglasses")
    session.context, session.copy, session.paste = list(request.context[:24]), request.copy, request.paste
    return session


def run_journey(studio: Studio) -> tuple:
    """Rewrite, the before/after galleries at a strength, and the heatmap of the rule."""
    session = session_with_example()
    edit = studio.rewrite(session, "main.6", 1, 0.3, 0.1)
    session.strength = 0.7
    before, after = studio.before_after(session, count=3)
    heat = studio.heatmap(session, "main.6", 1, 0.1)
    return session, edit, [im for im, _ in before], [im for im, _ in after], heat


def test_the_gpu_bound_work_runs_in_the_worker_with_the_same_results(gpu_calls, tmp_path) -> None:
    assert zerogpu.enabled()
    settings = Settings(stats_samples=50, cache_dir=str(tmp_path))
    on_gpu = run_journey(Studio(settings))
    assert {"solve", "display", "heat"} <= set(gpu_calls)
    gpu_calls.clear()
    session, edit, before, after, heat = on_gpu
    assert len(session.history) == 1 and session.current.fingerprint == edit.fingerprint  # pushed in the app
    from gradio.context import LocalContext

    outside = LocalContext.event_id.set(None)  # outside an event the same calls run in place
    try:
        direct = run_journey(Studio(settings))
    finally:
        LocalContext.event_id.reset(outside)
    assert gpu_calls == []
    assert direct[1].fingerprint == edit.fingerprint
    assert all(np.array_equal(x, y) for x, y in zip(direct[2] + direct[3], before + after, strict=True))
    assert np.array_equal(direct[4][0], heat[0]) and direct[4][1:] == heat[1:]


class Owner:
    def add(self, x: int) -> int:
        return x + 1


def test_off_zerogpu_the_decorator_and_the_call_change_nothing(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces(calls, zero_gpu=False))
    try:
        module = importlib.reload(zerogpu)
        assert not module.enabled()

        def fn(x: int) -> int:
            return x + 1

        assert module.gpu(fn) is fn
        owner = Owner()
        assert module.call(module.register(owner), "add", 1) == 2 and calls == []
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(zerogpu)
    assert zerogpu.spaces_module() is None or not zerogpu.enabled()  # the real environment: no ZeroGPU
