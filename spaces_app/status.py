"""Status lines and error guarding: a handler's outcome is one line in the status bar, never a traceback.

A guarded handler returns its outputs as a dict by component name; :func:`guarded` turns that into
the tuple Gradio expects (in the order the event declares, ``gr.skip()`` for an output left out).
When the handler raises, only the status line changes: expected errors (bad input) show their
message; anything else shows its type and message and is logged with its traceback on the server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from olam_edit.errors import OlamEditError
from olam_edit.spaces_app.images import ImageFiles
from olam_edit.spaces_app.uploads import hide_paths

log = logging.getLogger("olam_edit.space")

OK_MARK, ERROR_MARK = "✓", "⚠"  # plain symbols: every font has them


def message(text: str, ok: bool = True) -> str:
    """A status line: a mark, then the text (errors say what went wrong and how to fix it)."""
    return f"{OK_MARK if ok else ERROR_MARK} {text}"


def failure_text(error: Exception, where: str) -> str:
    """What the status line says about ``error`` raised by the handler ``where`` (no server path in it:
    the server's log has the full message)."""
    if isinstance(error, KeyError) and error.args:
        return hide_paths(str(error.args[0]))
    if isinstance(error, OlamEditError | ValueError):
        return hide_paths(str(error))
    log.error("olam-edit Space: unexpected error in %s", where, exc_info=error)
    return f"something went wrong ({type(error).__name__}: {hide_paths(str(error))[:200]})"


def ordered(values: dict[str, Any], outputs: Sequence[str], files: ImageFiles | None = None) -> Any:
    """``values`` by name as Gradio's outputs: a tuple in ``outputs`` order (one value for one output)."""
    unknown = sorted(set(values) - set(outputs))
    if unknown:
        raise TypeError(f"the handler returned {unknown}, which are not outputs of its event {list(outputs)}")
    row = tuple(values[name] if name in values else gr.skip() for name in outputs)
    row = files.convert(row) if files is not None else row
    return row[0] if len(row) == 1 else row


def guarded(handler: Callable[..., dict[str, Any]], outputs: Sequence[str],
            files: ImageFiles | None = None) -> Callable[..., Any]:
    """``handler`` as a Gradio function for an event with ``outputs`` (one of them "status").

    Its signature is the handler's (Gradio reads it for inputs, progress and event data). With
    ``files``, the images it returns are handed to Gradio as files (see :class:`ImageFiles`).
    """
    names = tuple(outputs)

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return ordered(handler(*args, **kwargs), names, files)
        except Exception as e:
            text = failure_text(e, handler.__name__)
        gr.Warning(text)
        return ordered({"status": message(text, ok=False)}, names)

    return run
