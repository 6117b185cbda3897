"""olam-edit Space: rewrite one rule of a generative model in the browser.

Paint context regions, a copy region and a paste region on samples, press Rewrite, and compare many
samples before and after; undo, change the strength, download the edit folder as a zip, apply an
uploaded one, or publish it to the Hub with your own Hugging Face login.

Run it with ``python app.py [--model SPEC] [--port N] [--host ADDR]`` (or ``olam-edit demo``). The
generator is ``$OLAM_EDIT_MODEL`` (default: the embedded 64x64 face DCGAN, no network needed), or any
supported Hub generator named in the UI.

This file only builds and launches the app; its parts are the modules of ``olam_edit.spaces_app``
(imported by that name, so ``python app.py`` in a Space repo or a checkout and ``olam-edit demo`` run
the same code): the Studio holds the logic, ``layout`` the page and ``panels`` the wiring.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

import gradio as gr

from olam_edit.spaces_app.images import limit_pil
from olam_edit.spaces_app.layout import CSS, layout
from olam_edit.spaces_app.panels import wire
from olam_edit.spaces_app.pipelines import load_model
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import Settings
from olam_edit.spaces_app.studio import Studio

TITLE = "olam-edit: rewrite a generative model"


def build_app(generator: Any | None = None, settings: Settings | None = None, **options: Any) -> gr.Blocks:
    """The Space as a ``gr.Blocks``. ``generator`` (default: load ``settings.model``, a generator or a
    diffusers pipeline, whose tab the page then shows) is shared by all
    sessions and never mutated. ``options`` override fields of :class:`Settings`. The Blocks carries
    its :class:`Studio` as ``.studio`` (for tests and tools)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry unless asked for
    limit_pil()  # PIL's decompression-bomb bound, explicitly the project's
    settings = settings or Settings.from_env(**options)
    studio = Studio(settings, generator if generator is not None else load_model(settings.model, settings.hub_endpoint))
    gr.set_static_paths([studio.files.folder])  # its PNGs are served as they are, not copied per answer
    with gr.Blocks(title=TITLE) as demo:
        ui = layout(studio, Session(model=settings.model))
        wire(studio, ui)
    demo.studio = studio
    return demo


CONCURRENCY = 8  # requests that run at once by default


def concurrency() -> int:
    """Requests that run at once (``$OLAM_EDIT_CONCURRENCY``, default 8): the face model renders without
    its lock, so visitors' requests share the cores (a quick one is not stuck behind a slow one) instead
    of queueing behind one another; a model that renders under its lock takes them in turn anyway."""
    value = os.environ.get("OLAM_EDIT_CONCURRENCY")
    return max(1, int(value)) if value else CONCURRENCY


def torch_threads(running: int) -> int:
    """Intra-op threads of each request (``$OLAM_EDIT_THREADS``, else the cores shared among the
    ``running`` requests): more threads than cores only adds contention."""
    value = os.environ.get("OLAM_EDIT_THREADS")
    return max(1, int(value)) if value else max(1, (os.cpu_count() or 1) // running)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Queue (bounded) and launch ``demo`` on ``host``:``port``; ``kwargs`` go to ``Blocks.launch``.

    Up to :func:`concurrency` requests run at once, each on :func:`torch_threads` intra-op threads
    (torch's setting is per process: this is a server's)."""
    import torch

    settings: Settings = demo.studio.settings
    running = concurrency()
    torch.set_num_threads(torch_threads(running))
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=running)
    max_file = int(4 * settings.max_upload_mb * 2**20)  # Gradio refuses larger files outright
    return demo.launch(server_name=host, server_port=port, max_file_size=max_file, ssr_mode=False, css=CSS,
                       show_error=False, **kwargs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python app.py`` (defaults from the variables a Space sets)."""
    env = os.environ
    p = argparse.ArgumentParser(description="The olam-edit Space: rewrite a generative model in the browser.")
    p.add_argument("--model", default=env.get("OLAM_EDIT_MODEL", "default"),
                   help="generator: 'default' (embedded face DCGAN), a local path or a Hub id")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 serves other machines)")
    p.add_argument("--samples", type=int, default=None, help="samples for the key statistics (default 1000)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """``python app.py``: what a Space runs (it sets GRADIO_SERVER_NAME=0.0.0.0 itself)."""
    logging.basicConfig(level=logging.INFO)
    args = parse_args(argv)
    demo = build_app(model=args.model, stats_samples=args.samples)
    launch(demo, args.host, args.port)


if __name__ == "__main__":
    main()
