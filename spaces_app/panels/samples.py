"""Wiring of the samples panel: clicking a sample or opening one by number, "Show more", the heatmap."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from olam_edit.errors import OlamEditError, RequestError, explain
from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import MAX_SAMPLES, PAGE
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio

OPENED = ("session", "painter", "seed", "status")
HEAT_TEXT = ("Red: where the rule's keys fire (solid above the 99.9th percentile of the model's own samples, "
             "faint from the 95th).")


def painter_value(image: np.ndarray) -> dict[str, Any]:
    """The image editor's value for a fresh sample ``image`` ``[H, W, 3]`` (nothing painted)."""
    return {"background": image, "layers": [], "composite": image}


class SampleHandlers:
    """The samples panel's handlers (each returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def open_sample(self, seed: Any, session: Session) -> dict[str, Any]:
        if seed is None or int(seed) < 0:
            raise RequestError(explain("a sample number must be a whole number >= 0", got=seed))
        image = self.studio.sample(session, int(seed))
        session.seed = int(seed)
        return {"session": session, "painter": painter_value(image), "seed": int(seed),
                "status": message(f"Sample #{seed} is open: paint a region.")}

    def select_sample(self, session: Session, evt: gr.SelectData) -> dict[str, Any]:
        return self.open_sample(session.first_seed + int(evt.index), session)

    def more(self, session: Session, heat: bool, layer: str, rank: int, ridge: float) -> dict[str, Any]:
        if session.count >= MAX_SAMPLES:
            raise RequestError(explain(f"the gallery shows at most {MAX_SAMPLES} samples",
                                       fix="Open any other sample by its number."))
        session.count = min(MAX_SAMPLES, session.count + PAGE)
        shown = self.studio.gallery(session, self.studio.heatmap(session, layer, rank, ridge) if heat else None)
        return {"session": session, "gallery": shown,
                "status": message(f"Showing samples #{session.first_seed}-#{session.seeds[-1]}.")}

    def heatmap(self, heat: bool, session: Session, layer: str, rank: int, ridge: float,
                progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008 - Gradio's idiom
        if not heat:
            return {"gallery": self.studio.gallery(session), "heat": False, "status": message("Heatmap off.")}
        progress(0.1, desc="scoring the keys of the samples")
        try:
            heat_map = self.studio.heatmap(session, layer, rank, ridge)
        except OlamEditError as e:  # the box unticks itself
            return {"gallery": self.studio.gallery(session), "heat": False, "status": message(str(e), ok=False)}
        return {"gallery": self.studio.gallery(session, heat_map), "heat": True, "status": message(HEAT_TEXT)}


def wire(studio: Studio, ui: UI) -> None:
    """Connect the gallery, "Open", "Show more" and the heatmap box."""
    h, files = SampleHandlers(studio), studio.files
    bind(ui, "gallery", "select", h.select_sample, OPENED, files, api_visibility="private", **MODEL_EVENTS)
    bind(ui, "open", "click", h.open_sample, OPENED, files, api_name="open", **MODEL_EVENTS)
    bind(ui, "more", "click", h.more, ("session", "gallery", "status"), files, api_name="more", **MODEL_EVENTS)
    bind(ui, "heat", "input", h.heatmap, ("gallery", "heat", "status"), files, api_name="heatmap", **MODEL_EVENTS)
