"""Text rules as the Space's text tab states them: the rule, the grid of prompts and seeds it is shown on,
and what a session keeps of them (its list of rules for "Rewrite all", and the grid of its last solve).

Everything a visitor types is checked here, before any model runs, and refused with one clear line
(:class:`~olam_edit.errors.RequestError`). Solving is :mod:`olam_edit.spaces_app.text_studio`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from olam_edit.errors import RequestError, explain
from olam_edit.spaces_app.checks import whole
from olam_edit.spaces_app.settings import COMPARE_FIRST_SEED, MAX_RULES

# mode -> what the rule does (the library call that solves it)
MODES = {
    "edit": "render the source as the destination (text_edit; the destination holds the source's words)",
    "replace": "replace the source with any destination (text_replace; Stable Diffusion UNets)",
    "erase": "erase the source towards the guide (text_erase; Stable Diffusion UNets; needs preserve prompts)",
}
MODE_CHOICES = [("Render SOURCE as DESTINATION", "edit"), ("Replace SOURCE with DESTINATION", "replace"),
                ("Erase SOURCE (towards the guide)", "erase")]
MAX_PROMPT = 300  # characters of one prompt
MAX_PRESERVE = 32  # preserve prompts of one solve
MAX_GRID_PROMPTS = 6  # prompts of the before / after grid
MAX_GRID_SEEDS = 4  # seeds per prompt
MAX_STEPS = 100
MIN_SIZE, MAX_SIZE, SIZE_STEP = 8, 1024, 8  # image side in pixels


@dataclass(frozen=True)
class TextRule:
    """One rule: ``mode`` (a key of :data:`MODES`), the ``source`` prompt and the ``destination`` (the
    guide for "erase"; "" there is the unconditional prompt)."""

    mode: str
    source: str
    destination: str

    def label(self) -> str:
        verb = {"edit": "render {s!r} as {d!r}", "replace": "replace {s!r} with {d!r}",
                "erase": "erase {s!r} (guide {d!r})"}[self.mode]
        return verb.format(s=self.source, d=self.destination)


@dataclass(frozen=True)
class Grid:
    """The before / after grid: every prompt at every seed (prompt-major), rendered at ``steps`` and ``size``."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    size: int

    def captions(self) -> list[str]:
        return [f"{p} · #{s}" for p in self.prompts for s in self.seeds]


@dataclass
class TextSession:
    """What the text tab of one browser session keeps: its listed ``rules`` and the ``grid`` it compares on
    (set by each solve, so strength and undo re-render the same images)."""

    rules: list[TextRule] = field(default_factory=list)
    grid: Grid | None = None


def _prompt(value: Any, what: str, required: bool = True) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise RequestError(explain(f"the {what} prompt is empty", fix=f"Type the {what}, e.g. 'a rose'."))
    if len(text) > MAX_PROMPT:
        raise RequestError(explain(f"the {what} prompt is too long", got=f"{len(text)} characters",
                                   expected=f"at most {MAX_PROMPT}"))
    return text


def make_rule(mode: Any, source: Any, destination: Any) -> TextRule:
    """The rule the visitor typed, checked (RequestError with one line for anything amiss)."""
    if mode not in MODES:
        raise RequestError(explain("unknown text rule mode", got=repr(mode)[:40], expected=sorted(MODES)))
    src = _prompt(source, "source")
    dst = _prompt(destination, "guide" if mode == "erase" else "destination", required=mode != "erase")
    if dst.lower() == src.lower():
        raise RequestError(explain("the destination is the source: the rule would change nothing", got=repr(dst),
                                   fix="Type another destination, e.g. 'a blue rose' for 'a rose'."))
    return TextRule(str(mode), src, dst)


def prompt_lines(text: Any, what: str, most: int) -> list[str]:
    """Prompts typed one a line (blank lines dropped, duplicates once), at most ``most`` of them."""
    lines = [_prompt(line, what, required=False) for line in str(text or "").splitlines()]
    prompts = list(dict.fromkeys(p for p in lines if p))
    if len(prompts) > most:
        raise RequestError(explain(f"too many {what} prompts", got=len(prompts), expected=f"at most {most}"))
    return prompts


def make_grid(compare: Any, rules: list[TextRule], preserve: list[str], seeds: Any, steps: Any, size: Any) -> Grid:
    """The grid to compare on: the typed ``compare`` prompts, else the rules' sources then the preserve
    prompts (the first :data:`MAX_GRID_PROMPTS`); ``seeds`` seeds from COMPARE_FIRST_SEED."""
    prompts = prompt_lines(compare, "compare", MAX_GRID_PROMPTS) or \
        list(dict.fromkeys([r.source for r in rules] + preserve))[:MAX_GRID_PROMPTS]
    if not prompts:
        raise RequestError(explain("there is no prompt to compare on", fix="Type prompts in 'Compare on'."))
    side = whole(size, "image size", MIN_SIZE, MAX_SIZE)
    if side % SIZE_STEP:
        raise RequestError(explain("the image size must be a multiple of 8", got=side))
    count = whole(seeds, "number of seeds", 1, MAX_GRID_SEEDS)
    return Grid(tuple(prompts), tuple(range(COMPARE_FIRST_SEED, COMPARE_FIRST_SEED + count)),
                whole(steps, "number of steps", 1, MAX_STEPS), side)


def add_rule(text: TextSession, rule: TextRule) -> None:
    """List ``rule`` for "Rewrite all" (one mode per list: one solve takes the rules of one mode)."""
    if text.rules and rule.mode != text.rules[0].mode:
        raise RequestError(explain("the listed rules are of another mode, and one solve takes rules of one mode",
                                   got=rule.mode, expected=text.rules[0].mode,
                                   fix="Pick that mode, or press 'Clear rules' first."))
    if len(text.rules) >= MAX_RULES:
        raise RequestError(explain("the rule list is full", got=len(text.rules), expected=f"at most {MAX_RULES}",
                                   fix="Press 'Rewrite all', or 'Clear rules'."))
    if rule in text.rules:
        raise RequestError(explain("this rule is already listed", got=rule.label()))
    text.rules = [*text.rules, rule]


def rules_markdown(text: TextSession) -> str:
    """The listed text rules as Markdown."""
    if not text.rules:
        return "*No rules listed.* Type a rule and press **Add rule to list**; **Rewrite all** solves the list."
    lines = [f"{i + 1}. {r.label()}" for i, r in enumerate(text.rules)]
    return f"**Rules** ({len(text.rules)}; Rewrite all solves them as one edit)\n\n" + "\n".join(lines)
