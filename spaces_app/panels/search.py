"""Wiring of the search panel: rank a pool of samples by the rule's response, turn the pages of the top
ones, and add one to the context with a click."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.search import RESULTS, Found, Search
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio

SHOWN = ("found", "found_gallery", "search_page", "status")


def page_text(found: Found) -> str:
    """Which results the page shows, out of how many."""
    first = found.page * RESULTS + 1
    return (f"Page {found.page + 1} of {found.pages}: samples ranked {first}-{first + len(found.shown()) - 1} "
            f"of {len(found.seeds)} (layer {found.layer}).")


class SearchHandlers:
    """The search panel's handlers (each returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio, self.search = studio, part_of(studio, Search)

    def _shown(self, session: Session, found: Found, status: str) -> dict[str, Any]:
        return {"found": found, "found_gallery": self.search.page(session, found), "search_page": page_text(found),
                "status": message(status)}

    def search_samples(self, session: Session, layer: str, rank: int, ridge: float, pool: Any,
                       progress: gr.Progress = gr.Progress()) -> dict[str, Any]:  # noqa: B008 - Gradio's idiom
        """Rank samples 0 .. pool-1 by the rule's response and show the first page of the best."""
        found = self.search.rank(session, layer, int(rank), ridge, pool, lambda f, d: progress(f, desc=d))
        best = found.seeds[0]
        return self._shown(session, found, f"Ranked {len(found.seeds)} samples; the rule fires most on #{best}. "
                                           "Click one to add it to the context.")

    def next_page(self, session: Session, found: Found) -> dict[str, Any]:
        self.search.turn(found, 1)
        return self._shown(session, found, page_text(found))

    def prev_page(self, session: Session, found: Found) -> dict[str, Any]:
        self.search.turn(found, -1)
        return self._shown(session, found, page_text(found))

    def pick_result(self, session: Session, found: Found, evt: gr.SelectData) -> dict[str, Any]:
        """Add the clicked result to the context, its region where the rule fires."""
        added = self.search.add(session, found, int(evt.index))
        return {"session": session, "tray": self.studio.tray(session)[0],
                "status": message(f"Added sample #{added.seed} to the context ({len(session.context)} context "
                                  "region(s)).")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect "Search", the page buttons and the results gallery."""
    h, files = SearchHandlers(studio), studio.files
    bind(ui, "search", "click", h.search_samples, SHOWN, files, api_name="search", **MODEL_EVENTS)
    bind(ui, "next_page", "click", h.next_page, SHOWN, files, api_name="search_next", **MODEL_EVENTS)
    bind(ui, "prev_page", "click", h.prev_page, SHOWN, files, api_name="search_prev", **MODEL_EVENTS)
    bind(ui, "found_gallery", "select", h.pick_result, ("session", "tray", "status"), files,
         api_visibility="private", **MODEL_EVENTS)
