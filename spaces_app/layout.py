"""The Space's page: every component, created in page order and named in a :class:`UI` (no events here)."""

from __future__ import annotations

import gradio as gr

from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.solve import DEFAULT_SMOOTHNESS
from olam_edit.spaces_app.binding import UI
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.layout_text import text_tab
from olam_edit.spaces_app.painter import guard
from olam_edit.spaces_app.pipelines import PAINT, TEXT, model_name
from olam_edit.spaces_app.search import MAX_POOL, Found
from olam_edit.spaces_app.session import Session, rules_text
from olam_edit.spaces_app.settings import DISPLAY, MAX_STRENGTH
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio, example_names
from olam_edit.spaces_app.text_rules import TextSession
from olam_edit.spaces_app.text_studio import TextStudio

CSS = """
#status {min-height: 2.2em}
#gallery .grid-wrap, #before .grid-wrap, #after .grid-wrap {min-height: 0 !important; max-height: none !important}
"""

INTRO = """# olam-edit: rewrite a rule of a generative model
**Paint** (image generators): pick a sample, paint with the brush, and add the region as **context** (where the
rule applies; add several, or **Search** for the samples where it fires), **copy** (what to copy) or **paste**
(where to put it). **Text** (diffusers pipelines): type a source and a destination prompt. Press **Rewrite**, or
**Add rule to list** to collect several rules and **Rewrite all** to solve them as one edit; then compare before
and after, change the strength, undo, download the edit, or publish it to the Hub.
[Bau et al., *Rewriting a Deep Generative Model*, ECCV 2020](https://rewriting.csail.mit.edu/)."""

LOCAL_PUBLISH = ("Publishing uses *your* Hugging Face login, available when this app runs as a Space. "
                 "Locally, download the zip and run `olam-edit push edit/ your-name/repo`.")


def layout(studio: Studio, first: Session) -> UI:
    """Create the page (inside a ``gr.Blocks``) as the session ``first`` sees it; the components by name.

    The paint tab shows for a spatial generator, the text tab for a diffusers pipeline (the other is
    hidden, and loading another model swaps them); before / after, strength, undo and the files are shared."""
    ui = UI(session=gr.State(first), text=gr.State(TextSession()), found=gr.State(Found()))
    texts = part_of(studio, TextStudio)
    kind = texts.tab(first)
    _header(studio, first, ui, kind)
    with gr.Tabs(selected=kind) as tabs:
        ui["tabs"] = tabs
        with gr.Tab("Paint a rule", id=PAINT, visible=kind == PAINT, elem_id="paint-tab") as paint:
            ui["paint_tab"] = paint
            with gr.Row():
                with gr.Column(scale=3):
                    _samples(studio, first, ui, kind)
                with gr.Column(scale=2):
                    _painter_panel(ui)
            _selections(ui)
            _search(ui)
            _rule(studio, first, ui, kind)
        with gr.Tab("Text rule", id=TEXT, visible=kind == TEXT, elem_id="text-tab") as text:
            ui["text_tab"] = text
            text_tab(ui, texts.default_size(first))
    _results(studio, first, ui, kind)
    _files(studio, ui)
    return ui


def _header(studio: Studio, first: Session, ui: UI, kind: str) -> None:
    gr.Markdown(INTRO)
    names = example_names()
    with gr.Row():
        ui["model"] = gr.Textbox(value=first.model, scale=3, elem_id="model",
                                 label="Generator ('default', or the Hub id of a generator or a diffusers pipeline)")
        ui["load"] = gr.Button("Load generator", scale=1, elem_id="load")
        ui["examples"] = gr.Dropdown(names, label="Example rules", value=None, scale=2,
                                     visible=bool(names) and kind == PAINT, elem_id="examples")
    name = model_name(part_of(studio, TextStudio).model(first), first.model)
    hint = "Type a rule in the text tab." if kind == TEXT else "Pick a sample to paint on."
    ui["status"] = gr.Markdown(message(f"Ready: {name}. {hint}"), elem_id="status")


def _samples(studio: Studio, first: Session, ui: UI, kind: str) -> None:
    shown = studio.files.convert(studio.gallery(first)) if kind == PAINT else []
    ui["gallery"] = gr.Gallery(shown, columns=6,
                               label="Samples (click one to paint on it)",
                               height="auto", format="png", allow_preview=False, elem_id="gallery")
    with gr.Row():
        ui["more"] = gr.Button("Show more samples", size="sm")
        ui["heat"] = gr.Checkbox(False, label="Show where the rule fires", elem_id="heat")
        ui["seed"] = gr.Number(None, label="Open sample #", precision=0, minimum=0, elem_id="seed")
        ui["open"] = gr.Button("Open", size="sm")


def _painter_panel(ui: UI) -> None:
    ui["painter"] = guard(gr.ImageEditor(  # every image a client sends is checked before it is decoded
        None, label="Paint here", type="numpy", image_mode="RGBA", sources=(), transforms=(), layers=False,
        canvas_size=(DISPLAY, DISPLAY), fixed_canvas=True, format="png",
        brush=gr.Brush(colors=["#ff2020"], color_mode="fixed", default_size=10), eraser=gr.Eraser(default_size=10),
        elem_id="painter"))
    with gr.Row():
        ui["add_context"] = gr.Button("Add to context", elem_id="add-context")
        ui["set_copy"] = gr.Button("Set copy", elem_id="set-copy")
        ui["set_paste"] = gr.Button("Set paste", elem_id="set-paste")
    ui["clear"] = gr.Button("Clear selections", size="sm")


def _selections(ui: UI) -> None:
    with gr.Row():
        ui["tray"] = gr.Gallery([], label="Context (click to remove)", columns=6, height=150, format="png",
                                allow_preview=False, fit_columns=False, scale=3, elem_id="tray")
        ui["copy"] = gr.Image(None, label="Copy", height=150, interactive=False, scale=1, format="png", elem_id="copy")
        ui["paste"] = gr.Image(None, label="Paste", height=150, interactive=False, scale=1, format="png",
                               elem_id="paste")


def _search(ui: UI) -> None:
    with gr.Accordion("Search: rank samples by where the rule fires (click one to add it to the context)",
                      elem_id="search-panel"):
        with gr.Row():
            ui["pool"] = gr.Number(200, label="Samples to rank", precision=0, minimum=1, maximum=MAX_POOL,
                                   elem_id="search-pool")
            ui["search"] = gr.Button("Search", elem_id="search")
            ui["prev_page"] = gr.Button("Previous page", size="sm", elem_id="search-prev")
            ui["next_page"] = gr.Button("Next page", size="sm", elem_id="search-next")
            ui["search_page"] = gr.Markdown("*No search yet.*", elem_id="search-page")
        ui["found_gallery"] = gr.Gallery([], label="Top samples (click one to add it to the context)", columns=6,
                                         height="auto", format="png", allow_preview=False, elem_id="search-results")


def _rule(studio: Studio, first: Session, ui: UI, kind: str) -> None:
    layers = studio.generator(first).layers() if kind == PAINT else []
    with gr.Row():
        ui["layer"] = gr.Dropdown(layers, value=studio.default_layer(first) if kind == PAINT else None,
                                  label="Layer", elem_id="layer")
        ui["rank"] = gr.Slider(1, 8, value=1, step=1, label="Rank", elem_id="rank")
        ui["smoothness"] = gr.Slider(0.05, 5.0, value=DEFAULT_SMOOTHNESS, step=0.05, label="Smoothness",
                                     info="the paper's 1/λ: higher changes the model less")
        ui["ridge"] = gr.Number(DEFAULT_RIDGE, label="Ridge", info="regularises C (relative)", minimum=0,
                                elem_id="ridge")
        ui["rewrite"] = gr.Button("Rewrite", variant="primary", elem_id="rewrite")
    with gr.Row():
        ui["add_rule"] = gr.Button("Add rule to list", scale=1, elem_id="add-rule")
        ui["rewrite_all"] = gr.Button("Rewrite all", variant="primary", scale=1, elem_id="rewrite-all")
        ui["clear_rules"] = gr.Button("Clear rules", size="sm", scale=1, elem_id="clear-rules")
        ui["rules"] = gr.Markdown(rules_text(first), elem_id="rules")


def _results(studio: Studio, first: Session, ui: UI, kind: str) -> None:
    before, after = studio.files.convert(studio.before_after(first)) if kind == PAINT else ([], [])
    with gr.Row():
        ui["strength"] = gr.Slider(0.0, MAX_STRENGTH, value=1.0, step=0.05, label="Strength", elem_id="strength")
        ui["undo"] = gr.Button("Undo", elem_id="undo")
        ui["history"] = gr.Markdown("*No edits yet.*", elem_id="history")
    with gr.Row():
        ui["before"] = gr.Gallery(before, label="Before", columns=5, height="auto", format="png",
                                  allow_preview=False, elem_id="before")
        ui["after"] = gr.Gallery(after, label="After", columns=5, height="auto", format="png", allow_preview=False,
                                 elem_id="after")


def _files(studio: Studio, ui: UI) -> None:
    with gr.Row():
        with gr.Column():
            ui["download"] = gr.Button("Download edit (.zip)", elem_id="download")
            ui["file"] = gr.File(label="Edit folder", interactive=False, visible=False, elem_id="file")
        with gr.Column():
            ui["upload"] = gr.File(label="Apply an edit (.zip or edit.safetensors)", height=150,
                                   file_types=[".zip", ".safetensors"], elem_id="upload")
        with gr.Column():
            if studio.settings.show_login:
                gr.LoginButton()
            else:
                gr.Markdown(LOCAL_PUBLISH)
            ui["repo_id"] = gr.Textbox(label="Repository (name or user/name)", elem_id="repo")
            ui["private"] = gr.Checkbox(True, label="Private")
            ui["publish"] = gr.Button("Publish to the Hub", elem_id="publish")
