"""Server-wide options of the Space (command line, environment, tests) and its fixed sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from olam_edit.edit.core import MAX_STRENGTH as MAX_STRENGTH  # the slider goes from 0 to this (one bound)

DISPLAY = 256  # pixels: samples are shown (and painted) at this size
PAGE = 16  # samples added by "Show more"
MAX_SAMPLES = 128  # most samples in the gallery
HEAT_LOW = 0.95  # the heatmap tint starts at this quantile of the rule's scores, full at the 99.9th
HISTORY = 20  # edits a session keeps for undo
MAX_RULES = 8  # rules a session lists for "Rewrite all" (one joint solve)
TRAY = 24  # context thumbnails shown (a rule may have hundreds of context regions)
COMPARE_FIRST_SEED = 1000  # before/after use held-out seeds from here
MAX_UPLOAD_MB = 20.0
QUEUE_SIZE = 32
COLORS = {"context": (40, 200, 90), "copy": (40, 120, 255), "paste": (255, 150, 20), "heat": (255, 30, 30)}


@dataclass
class Settings:
    """Server-wide options (from the command line, the environment or a test)."""

    model: str = "default"
    stats_samples: int = 1000
    cache_dir: str | None = None
    max_upload_mb: float = MAX_UPLOAD_MB
    compare_count: int = 20
    queue_size: int = QUEUE_SIZE
    hub_endpoint: str | None = None
    login: bool | None = None  # show gr.LoginButton (default: only inside a Space)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from ``OLAM_EDIT_*`` variables; ``overrides`` that are not None win."""
        env = os.environ
        s = cls(model=env.get("OLAM_EDIT_MODEL", "default"),
                stats_samples=int(env.get("OLAM_EDIT_STATS_SAMPLES", 1000)),
                max_upload_mb=float(env.get("OLAM_EDIT_MAX_UPLOAD_MB", MAX_UPLOAD_MB)),
                hub_endpoint=env.get("OLAM_EDIT_HUB_ENDPOINT") or None)
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    @property
    def show_login(self) -> bool:
        """Whether the page offers "Sign in with Hugging Face" (inside a Space unless set)."""
        return bool(os.environ.get("SPACE_ID")) if self.login is None else self.login
