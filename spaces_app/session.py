"""What one browser session holds: its model, its selections, its list of rules and its undo stack of edits."""

from __future__ import annotations

from dataclasses import dataclass, field

from olam_edit import Edit
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.stages import Then
from olam_edit.spaces_app.settings import HISTORY, PAGE


@dataclass
class Entry:
    """One step of the undo stack: an edit of the base model and how it was made."""

    edit: Edit
    label: str


@dataclass
class Session:
    """The state of one browser session.

    Every edit on the stack is a complete edit of the base model; the top one is the current edit.
    ``rules`` is the list of rules "Rewrite all" solves jointly (one edit); solving or undoing an edit
    leaves the list as it is.
    """

    model: str = "default"
    first_seed: int = 0
    count: int = PAGE
    seed: int | None = None  # the sample in the painter
    context: list[Selection] = field(default_factory=list)
    copy: Selection | None = None
    paste: Selection | None = None
    pairs: list[tuple[Selection, Selection]] = field(default_factory=list)  # an example's further copy / paste
    history: list[Entry] = field(default_factory=list)
    strength: float = 1.0
    rules: list[EditRequest] = field(default_factory=list)
    then: tuple[str, Then] | None = None  # an example's second stage, used when rewriting at its first layer

    @property
    def current(self) -> Edit | None:
        return self.history[-1].edit if self.history else None

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.count))

    def reset(self, model: str) -> None:
        """Start over on another model (edits and selections belong to a model)."""
        self.__dict__.update(Session(model=model).__dict__)

    def push(self, edit: Edit, label: str) -> None:
        """Make ``edit`` the current edit; the oldest entries go beyond HISTORY entries."""
        self.history = [*self.history, Entry(edit, label)][-HISTORY:]

    def clear_selections(self) -> None:
        """Forget the context, copy and paste selections and an example's further pairs and second stage
        (the edits stay)."""
        self.context, self.copy, self.paste, self.pairs, self.then = [], None, None, [], None


def history_text(session: Session) -> str:
    """The undo stack as Markdown, the current edit marked."""
    if not session.history:
        return "*No edits yet.*"
    lines = [f"{i + 1}. {e.label}" for i, e in enumerate(session.history)]
    lines[-1] += "  ← current"
    return "**Edits** (Undo goes back one)\n\n" + "\n".join(lines)


def rules_text(session: Session) -> str:
    """The list of rules "Rewrite all" solves, as Markdown."""
    if not session.rules:
        return "*No rules listed.* Paint a rule and press **Add rule to list**; **Rewrite all** solves the list."
    lines = [f"{i + 1}. {r.layer}, rank {r.rank}: {len(r.context)} context region(s), copy #{r.copy.seed}, "
             f"paste #{r.paste.seed}" for i, r in enumerate(session.rules)]
    return f"**Rules** ({len(session.rules)}; Rewrite all solves them as one edit)\n\n" + "\n".join(lines)
