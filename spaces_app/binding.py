"""Connecting handlers to component events by name, so no event is wired by a list kept in step by hand.

A handler's parameters name its input components (``def more(self, session, heat, layer, ...)`` reads
``ui.session``, ``ui.heat``, ``ui.layer``, ...), except those Gradio fills itself (:data:`GRADIO_FILLED`);
it returns a dict by output name (see :mod:`olam_edit.spaces_app.status`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from olam_edit.spaces_app.images import ImageFiles
from olam_edit.spaces_app.status import guarded

GRADIO_FILLED = frozenset({"evt", "progress", "oauth_token"})  # event data, progress bar, the user's login
MODEL_EVENTS = {"concurrency_id": "model"}  # events that run a model share one concurrency group


class UI:
    """The components by name (``ui.name`` or ``ui["name"]``)."""

    def __init__(self, **components: Any) -> None:
        self.__dict__.update(components)

    def __setitem__(self, name: str, component: Any) -> None:
        setattr(self, name, component)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(f"the layout has no component {name!r}") from None


def input_names(handler: Callable[..., Any]) -> list[str]:
    """The components ``handler`` reads: its parameter names, less those Gradio fills itself."""
    return [name for name in inspect.signature(handler).parameters if name not in GRADIO_FILLED]


def bind(ui: UI, trigger: str, event: str, handler: Callable[..., dict[str, Any]], outputs: Sequence[str],
         files: ImageFiles | None = None, **options: Any) -> Any:
    """Run ``handler`` on ``ui[trigger]``'s ``event`` (e.g. "click"), updating the components ``outputs``.

    ``options`` go to Gradio's listener (``api_name``, ``concurrency_id``, ...). The API takes the
    inputs in the handler's parameter order and returns the outputs in the order given here.
    """
    listener = getattr(ui[trigger], event)
    inputs = [ui[name] for name in input_names(handler)]
    return listener(guarded(handler, outputs, files), inputs, [ui[name] for name in outputs], **options)
