"""Wiring of the rule panel: Rewrite, the rule list (Add rule, Rewrite all, Clear rules), the strength
slider and Undo (the before / after galleries)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.errors import RequestError, explain
from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.session import Session, history_text, rules_text
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio, check_strength, count_rules, describe
from olam_edit.spaces_app.text_rules import TextSession
from olam_edit.spaces_app.text_studio import TextStudio


class RuleHandlers:
    """The rule panel's handlers (each returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio, self.texts = studio, part_of(studio, TextStudio)

    def rewrite(self, session: Session, layer: str, rank: int, smoothness: float, ridge: float, strength: float,
                progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[str, Any]:  # noqa: B008 - Gradio's idiom
        session.strength = check_strength(strength)
        edit = self.studio.rewrite(session, layer, int(rank), float(smoothness), ridge,
                                   lambda f, d: progress(f, desc=d))
        progress(0.8, desc="rendering before / after")
        before, after = self.studio.before_after(session)
        return {"session": session, "before": before, "after": after, "history": history_text(session),
                "status": message(f"Rewritten: {describe(edit)}.")}

    def add_rule(self, session: Session, layer: str, rank: int) -> dict[str, Any]:
        """List the painted rule for "Rewrite all" (the selections are cleared for the next one)."""
        self.studio.add_rule(session, layer, int(rank))
        return {"session": session, "rules": rules_text(session), "tray": [], "copy": None, "paste": None,
                "status": message(f"Rule {len(session.rules)} listed. Paint another, or press Rewrite all.")}

    def rewrite_all(self, session: Session, smoothness: float, ridge: float, strength: float,
                    progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[str, Any]:  # noqa: B008
        """Solve the listed rules as one edit (the new current edit; Undo goes back to the one before)."""
        session.strength = check_strength(strength)
        edit = self.studio.rewrite_all(session, float(smoothness), ridge, lambda f, d: progress(f, desc=d))
        progress(0.8, desc="rendering before / after")
        before, after = self.studio.before_after(session)
        return {"session": session, "before": before, "after": after, "history": history_text(session),
                "status": message(f"Rewritten all {count_rules(len(session.rules))} jointly: {describe(edit)}.")}

    def clear_rules(self, session: Session) -> dict[str, Any]:
        session.rules = []
        return {"session": session, "rules": rules_text(session), "status": message("The rule list is cleared.")}

    def set_strength(self, session: Session, strength: float, text: TextSession | None = None) -> dict[str, Any]:
        """Show the current edit (of either tab) at ``strength``; the session keeps its strength if that fails."""
        old, session.strength = session.strength, check_strength(strength)
        try:
            after = self.texts.compare(session, text)[1]
        except Exception:
            session.strength = old
            raise
        return {"session": session, "after": after, "status": message(f"Strength {session.strength:g}.")}

    def undo(self, session: Session, text: TextSession | None = None) -> dict[str, Any]:
        """Go back to the edit before the current one (a joint edit of several rules goes back as a whole)."""
        if not session.history:
            raise RequestError(explain("there is nothing to undo"))
        gone = session.history.pop()
        return {"session": session, "after": self.texts.compare(session, text)[1], "history": history_text(session),
                "status": message(f"Undone: {gone.label}.")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect "Rewrite", the rule list's buttons, the strength slider and "Undo"."""
    h, files = RuleHandlers(studio), studio.files
    bind(ui, "rewrite", "click", h.rewrite, ("session", "before", "after", "history", "status"), files,
         api_name="rewrite", **MODEL_EVENTS)
    bind(ui, "add_rule", "click", h.add_rule, ("session", "rules", "tray", "copy", "paste", "status"), files,
         api_name="add_rule")
    bind(ui, "rewrite_all", "click", h.rewrite_all, ("session", "before", "after", "history", "status"), files,
         api_name="rewrite_all", **MODEL_EVENTS)
    bind(ui, "clear_rules", "click", h.clear_rules, ("session", "rules", "status"), files, api_name="clear_rules")
    bind(ui, "strength", "release", h.set_strength, ("session", "after", "status"), files, api_name="strength",
         **MODEL_EVENTS)
    bind(ui, "undo", "click", h.undo, ("session", "after", "history", "status"), files, api_name="undo",
         **MODEL_EVENTS)
