"""The wiring of the Space, one module per panel: each connects its panel's events to named handlers.

Panels: ``samples`` (gallery, more, heatmap, open), ``selections`` (context / copy / paste, clear,
example rules), ``search`` (rank samples by the rule, add one to the context), ``rule`` (rewrite, the
rule list and rewrite all, strength, undo), ``text`` (the text tab's rules), ``files`` (download,
upload, publish) and ``model`` (load another generator or pipeline).
"""

from __future__ import annotations

from olam_edit.spaces_app.binding import UI
from olam_edit.spaces_app.panels import files, model, rule, samples, search, selections, text
from olam_edit.spaces_app.studio import Studio

PANELS = (samples, selections, search, rule, text, files, model)


def wire(studio: Studio, ui: UI) -> None:
    """Connect every panel's components to the studio (inside the ``gr.Blocks`` being built)."""
    for panel in PANELS:
        panel.wire(studio, ui)
