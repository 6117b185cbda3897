"""Wiring of the selections panel: context / copy / paste from the painter, the tray, clearing, examples."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.errors import RequestError, explain
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.solve import DEFAULT_SMOOTHNESS
from olam_edit.rules.spatial.stages import parse_then
from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.masks import selection
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio, example

SELECTIONS = ("tray", "copy", "paste")
EXAMPLE_OUTPUTS = ("session", "layer", "rank", "smoothness", "ridge", "strength", *SELECTIONS, "status")


class SelectionHandlers:
    """The selections panel's handlers (each returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def add_context(self, painter: Any, session: Session) -> dict[str, Any]:
        session.context.append(selection(painter, session.seed))
        return {"session": session, "tray": self.studio.tray(session)[0],
                "status": message(f"{len(session.context)} context region(s).")}

    def set_copy(self, painter: Any, session: Session) -> dict[str, Any]:
        # a painted pair replaces an example's pairs and second stage: the rule is the visitor's own now
        session.copy, session.pairs, session.then = selection(painter, session.seed), [], None
        return {"session": session, "copy": self.studio.tray(session)[1],
                "status": message(f"The copy region is set (sample #{session.copy.seed}).")}

    def set_paste(self, painter: Any, session: Session) -> dict[str, Any]:
        session.paste, session.pairs, session.then = selection(painter, session.seed), [], None
        return {"session": session, "paste": self.studio.tray(session)[2],
                "status": message(f"The paste region is set (sample #{session.paste.seed}).")}

    def remove_context(self, session: Session, evt: gr.SelectData) -> dict[str, Any]:
        del session.context[int(evt.index)]
        return {"session": session, "tray": self.studio.tray(session)[0],
                "status": message(f"{len(session.context)} context region(s).")}

    def clear(self, session: Session) -> dict[str, Any]:
        session.clear_selections()
        return {"session": session, "tray": [], "copy": None, "paste": None, "status": message("Selections cleared.")}

    def example(self, examples: str | None, session: Session) -> dict[str, Any]:
        """Fill the selections and the solver settings from the example rule ``examples`` (its name)."""
        if not examples:
            return {"status": message("Pick an example.")}
        if session.model != "default":
            raise RequestError(explain("the examples are rules of the default model", got=session.model,
                                       fix="Load 'default' first."))
        request, settings = example(examples)
        session.context, session.copy, session.paste = list(request.context), request.copy, request.paste
        session.pairs = list(request.pairs)
        then = parse_then(settings, request.layer)
        session.then = (request.layer, then) if then is not None else None
        shown = dict(zip(SELECTIONS, self.studio.tray(session), strict=True))
        pairs = f" ({len(request.examples)} copy / paste pairs)" if request.pairs else ""
        if then is not None:
            pairs += f" (rewritten at {request.layer}, then at {then.layer} on top)"
        return {"session": session, "layer": request.layer, "rank": request.rank, **shown,
                "smoothness": settings.get("smoothness", DEFAULT_SMOOTHNESS),
                "ridge": settings.get("ridge", DEFAULT_RIDGE), "strength": settings.get("strength", 1.0),
                "status": message(f"Example {examples!r}: {request.description or request.name}{pairs}. "
                                  "Press Rewrite.")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect the three selection buttons, the tray, "Clear selections" and the example rules."""
    h, files = SelectionHandlers(studio), studio.files
    for button, shown in (("add_context", "tray"), ("set_copy", "copy"), ("set_paste", "paste")):
        bind(ui, button, "click", getattr(h, button), ("session", shown, "status"), files, api_name=button,
             **MODEL_EVENTS)
    bind(ui, "tray", "select", h.remove_context, ("session", "tray", "status"), files, api_visibility="private",
         **MODEL_EVENTS)
    bind(ui, "clear", "click", h.clear, ("session", *SELECTIONS, "status"), files, api_name="clear")
    bind(ui, "examples", "input", h.example, EXAMPLE_OUTPUTS, files, api_name="example", **MODEL_EVENTS)
