"""Wiring of the model panel: load another generator (the session starts over on it)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.session import Session, history_text, rules_text
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio

# everything a new model resets (the API returns them in this order)
LOADED = ("session", "gallery", "layer", "before", "after", "tray", "copy", "paste", "history", "painter", "model",
          "strength", "heat", "rules", "status")


class ModelHandlers:
    """The model panel's handler (it returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def load_model(self, model: str, session: Session,
                   progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[str, Any]:  # noqa: B008
        """Load the generator ``model`` (the name typed in the field) and reset the page to it."""
        progress(0.0, desc=f"loading {model}")
        self.studio.load_model(session, model)
        gen = self.studio.generator(session)
        before, after = self.studio.before_after(session)
        layers = gr.update(choices=gen.layers(), value=self.studio.default_layer(session))
        return {"session": session, "gallery": self.studio.gallery(session), "layer": layers, "before": before,
                "after": after, "tray": [], "copy": None, "paste": None, "history": history_text(session),
                "painter": None, "model": session.model, "strength": 1.0, "heat": False, "rules": rules_text(session),
                "status": message(f"Loaded {gen.name}.")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect "Load generator"."""
    h = ModelHandlers(studio)
    bind(ui, "load", "click", h.load_model, LOADED, studio.files, api_name="load_model", **MODEL_EVENTS)
