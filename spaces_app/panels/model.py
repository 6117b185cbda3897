"""Wiring of the model panel: load another model, a generator (the paint tab) or a diffusers pipeline (the
text tab); the session starts over on it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.pipelines import PAINT, TEXT, model_name
from olam_edit.spaces_app.search import Found
from olam_edit.spaces_app.session import Session, history_text, rules_text
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio, example_names
from olam_edit.spaces_app.text_rules import TextSession, rules_markdown
from olam_edit.spaces_app.text_studio import TextStudio

# everything a new model resets (the API returns the components among them in this order, status last)
LOADED = ("session", "text", "found", "gallery", "layer", "before", "after", "tray", "copy", "paste", "history",
          "painter", "model", "strength", "heat", "rules", "examples", "tabs", "paint_tab", "text_tab",
          "found_gallery", "search_page", "text_rules", "text_size", "status")


class ModelHandlers:
    """The model panel's handler (it returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio, self.texts = studio, part_of(studio, TextStudio)

    def load_model(self, model: str, session: Session,
                   progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[str, Any]:  # noqa: B008
        """Load the model named in the field (a Hub pipeline gets the text tab) and reset the page to it."""
        spec = (model or "").strip() or "default"
        progress(0.0, desc=f"loading {spec}")
        if self.texts.names_pipeline(spec):
            self.texts.load(session, spec)
        else:
            self.studio.load_model(session, spec)
        kind, text = self.texts.tab(session), TextSession()
        before, after = self.texts.compare(session, text)
        name = model_name(self.texts.model(session), session.model)
        hint = "Type a rule in the text tab." if kind == TEXT else "Pick a sample to paint on."
        return {"session": session, "text": text, "found": Found(), **self._paint(session, kind), "before": before,
                "after": after, "history": history_text(session), "model": session.model, "strength": 1.0,
                "examples": gr.update(visible=bool(example_names()) and kind == PAINT, value=None),
                "tabs": gr.Tabs(selected=kind), "paint_tab": gr.Tab(visible=kind == PAINT),
                "text_tab": gr.Tab(visible=kind == TEXT), "found_gallery": [], "search_page": "*No search yet.*",
                "text_rules": rules_markdown(text), "text_size": self.texts.default_size(session),
                "status": message(f"Loaded {name}. {hint}")}

    def _paint(self, session: Session, kind: str) -> dict[str, Any]:
        """The paint tab's components, reset (empty for a pipeline)."""
        paint = kind == PAINT
        layers = self.studio.generator(session).layers() if paint else []
        return {"gallery": self.studio.gallery(session) if paint else [],
                "layer": gr.update(choices=layers, value=self.studio.default_layer(session) if paint else None),
                "tray": [], "copy": None, "paste": None, "painter": None, "heat": False, "rules": rules_text(session)}


def wire(studio: Studio, ui: UI) -> None:
    """Connect "Load generator"."""
    h = ModelHandlers(studio)
    bind(ui, "load", "click", h.load_model, LOADED, studio.files, api_name="load_model", **MODEL_EVENTS)
