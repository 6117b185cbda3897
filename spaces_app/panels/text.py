"""Wiring of the text tab: Rewrite one text rule, and the text rule list (Add rule, Rewrite all, Clear rules)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.errors import RequestError, explain
from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.session import Session, history_text
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio, check_strength
from olam_edit.spaces_app.text_rules import (
    MAX_PRESERVE,
    TextRule,
    TextSession,
    add_rule,
    make_grid,
    make_rule,
    prompt_lines,
    rules_markdown,
)
from olam_edit.spaces_app.text_studio import TextStudio, label

SOLVED = ("session", "text", "before", "after", "history", "status")


class TextHandlers:
    """The text tab's handlers (each returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.texts = part_of(studio, TextStudio)

    def _solve(self, session: Session, text: TextSession, rules: list[TextRule], text_preserve: str,
               text_compare: str, text_steps: int, text_size: int, text_seeds: int, text_prior_weight: float,
               strength: float, progress: Any) -> dict[str, Any]:
        preserve = prompt_lines(text_preserve, "preserve", MAX_PRESERVE)
        grid = make_grid(text_compare, rules, preserve, text_seeds, text_steps, text_size)
        self.texts.pipeline(session)  # a clear error on a spatial generator, before anything changes
        session.strength = check_strength(strength)
        progress(0.1, desc=f"solving {len(rules)} text rule(s)")
        edit = self.texts.rewrite(session, text, rules, preserve, text_prior_weight, grid)
        progress(0.5, desc="rendering before / after")
        before, after = self.texts.before_after(session, grid)
        what = f"Rewritten all {len(rules)} rules jointly" if len(rules) > 1 else "Rewritten"
        return {"session": session, "text": text, "before": before, "after": after,
                "history": history_text(session), "status": message(f"{what}: {label(edit)}.")}

    def text_rewrite(self, session: Session, text: TextSession, text_mode: str, text_source: str,
                     text_destination: str, text_preserve: str, text_compare: str, text_steps: int, text_size: int,
                     text_seeds: int, text_prior_weight: float, strength: float,
                     progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[str, Any]:  # noqa: B008
        """Solve the typed rule alone (the new current edit; Undo goes back to the one before)."""
        rule = make_rule(text_mode, text_source, text_destination)
        return self._solve(session, text, [rule], text_preserve, text_compare, text_steps, text_size, text_seeds,
                           text_prior_weight, strength, progress)

    def text_add_rule(self, text: TextSession, text_mode: str, text_source: str, text_destination: str
                      ) -> dict[str, Any]:
        """List the typed rule for "Rewrite all" (the boxes are cleared for the next one)."""
        add_rule(text, make_rule(text_mode, text_source, text_destination))
        return {"text": text, "text_rules": rules_markdown(text), "text_source": "", "text_destination": "",
                "status": message(f"Rule {len(text.rules)} listed. Type another, or press Rewrite all.")}

    def text_rewrite_all(self, session: Session, text: TextSession, text_preserve: str, text_compare: str,
                         text_steps: int, text_size: int, text_seeds: int, text_prior_weight: float, strength: float,
                         progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict[str, Any]:  # noqa: B008
        """Solve every listed rule as one edit; the list stays, to add more and solve again."""
        if not text.rules:
            raise RequestError(explain("there are no text rules in the list yet",
                                       fix="Type a rule and press 'Add rule to list'."))
        return self._solve(session, text, list(text.rules), text_preserve, text_compare, text_steps, text_size,
                           text_seeds, text_prior_weight, strength, progress)

    def text_clear_rules(self, text: TextSession) -> dict[str, Any]:
        text.rules = []
        return {"text": text, "text_rules": rules_markdown(text), "status": message("The text rule list is cleared.")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect the text tab's buttons."""
    h, files = TextHandlers(studio), studio.files
    bind(ui, "text_rewrite", "click", h.text_rewrite, SOLVED, files, api_name="text_rewrite", **MODEL_EVENTS)
    bind(ui, "text_add_rule", "click", h.text_add_rule,
         ("text", "text_rules", "text_source", "text_destination", "status"), files, api_name="text_add_rule")
    bind(ui, "text_rewrite_all", "click", h.text_rewrite_all, SOLVED, files, api_name="text_rewrite_all",
         **MODEL_EVENTS)
    bind(ui, "text_clear_rules", "click", h.text_clear_rules, ("text", "text_rules", "status"), files,
         api_name="text_clear_rules")
