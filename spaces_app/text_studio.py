"""The text tab's logic on plain values: solve text rules on a diffusers pipeline, compare before / after on
a grid of prompts and seeds, and move the edits in and out (download, upload, publish) as the paint tab does.

A :class:`TextStudio` rides on the Space's :class:`~olam_edit.spaces_app.studio.Studio` (one per
Studio, :func:`~olam_edit.spaces_app.checks.part_of`): its edits go on the same undo stack
(``Session.history``) at the same strength, so Undo and the strength slider serve both tabs. The
pipeline is shared by every session: a solve reads its weights and a render applies a session's
edit, both under the component's lock (:func:`olam_edit.model_lock`), and the render reverts the
edit exactly before letting go.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from olam_edit import Edit, check_base, model_lock
from olam_edit.errors import BaseMismatchError, EditFileError, OlamEditError, RequestError, explain
from olam_edit.eval.grid import grid_image
from olam_edit.spaces_app.checks import check_publish, positive
from olam_edit.spaces_app.images import display
from olam_edit.spaces_app.pipelines import (
    PAINT,
    TEXT,
    component,
    default_size,
    hub_id,
    is_pipeline,
    load_pipeline,
    names_pipeline,
    render,
)
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import COMPARE_FIRST_SEED, MAX_STRENGTH
from olam_edit.spaces_app.studio import MAX_RELATIVE_NORM, Gallery, Studio
from olam_edit.spaces_app.text_rules import MAX_GRID_PROMPTS, Grid, TextRule, TextSession
from olam_edit.spaces_app.uploads import hide_error_paths, read_upload, zip_edit

DEFAULT_STEPS = 20  # denoising steps of a render (the text tab's slider starts here)
KEEP_PIPELINES = 2  # pipelines loaded from the generator field, kept at once


def solve(pipe: Any, rules: Sequence[TextRule], preserve: Sequence[str], prior_weight: float) -> Edit:
    """The rules (all of one mode) solved jointly by the library, on every prompt-only layer of the pipeline."""
    from olam_edit.adapters.diffusers import text_edit, text_erase, text_replace

    modes = sorted({r.mode for r in rules})
    if len(modes) != 1:
        raise RequestError(explain("one solve takes rules of one mode", got=modes or "no rules"))
    sources, dests = [r.source for r in rules], [r.destination for r in rules]
    with model_lock(component(pipe)):  # the solve reads the shared weights a render swaps
        if modes[0] == "edit":
            return text_edit(pipe, sources, dests, preserve=list(preserve), prior_weight=prior_weight)
        call = text_replace if modes[0] == "replace" else text_erase
        return call(pipe, sources, dests, preserve=list(preserve), prior_weight=prior_weight)


def label(edit: Edit) -> str:
    """A one-line label of a text edit for the undo stack: its rule, layers and largest ‖ΔW‖/‖W‖."""
    metrics = edit.manifest.get("metrics") or {}
    norm = metrics.get("relative_norm")
    size = f", ‖ΔW‖/‖W‖ = {norm:.3f}" if isinstance(norm, float) else ""
    rule = str(edit.manifest.get("rule") or "text edit")[:160]
    return f"{rule} ({len(edit.deltas)} layers{size})"


def recipe_grid(edit: Edit, steps: int, size: int) -> Grid:
    """A grid for an edit that came without one (an upload): its recipe's prompts, two seeds."""
    recipe = edit.manifest.get("recipe") if isinstance(edit.manifest.get("recipe"), dict) else {}
    found = [p for key in ("source", "concepts", "preserve") for p in (recipe.get(key) or [])
             if isinstance(p, str) and p.strip()]
    prompts = tuple(dict.fromkeys(p.strip()[:300] for p in found))[:MAX_GRID_PROMPTS] or ("a photo",)
    return Grid(prompts, (COMPARE_FIRST_SEED, COMPARE_FIRST_SEED + 1), steps, size)


def picture(pipe: Any, grid: Grid, edit: Edit) -> bytes:
    """A before / after PNG of the grid (``edit`` at strength 1)."""
    rows = [render(pipe, grid.prompts, grid.seeds, grid.steps, grid.size, e) for e in (None, edit)]
    buf = io.BytesIO()
    grid_image(rows, ["before", "after"]).save(buf, format="PNG")
    return buf.getvalue()


class TextStudio:
    """The text tab's handlers' logic (see the module docstring)."""

    def __init__(self, studio: Studio) -> None:
        self.studio, self.lock = studio, threading.RLock()
        self._pipes: OrderedDict[str, Any] = OrderedDict()
        self._before: OrderedDict[tuple[str, Grid], list[np.ndarray]] = OrderedDict()

    # -- the model -------------------------------------------------------------------------------------
    def model(self, session: Session) -> Any:
        """The session's model: a pipeline loaded here, else the Studio's (a generator or the first pipeline)."""
        with self.lock:
            if session.model in self._pipes:
                self._pipes.move_to_end(session.model)
                return self._pipes[session.model]
        return self.studio.generator(session)

    def tab(self, session: Session) -> str:
        """The tab the session's model gets: :data:`TEXT` or :data:`PAINT`."""
        return TEXT if is_pipeline(self.model(session)) else PAINT

    def pipeline(self, session: Session) -> Any:
        """The session's pipeline; RequestError when its model is a spatial generator."""
        model = self.model(session)
        if not is_pipeline(model):
            raise RequestError(explain("text rules need a diffusers pipeline, and this model is a generator of "
                                       "images from latents", got=session.model,
                                       fix="Load a Stable Diffusion, PixArt, Sana, SD3 or Flux pipeline, or paint "
                                           "a rule in the paint tab."))
        return model

    def default_size(self, session: Session) -> int:
        return default_size(self.pipeline(session)) if self.tab(session) == TEXT else 512

    def names_pipeline(self, spec: str) -> bool:
        """Whether the generator field's ``spec`` is a Hub pipeline this class loads (never a local path)."""
        spec = (spec or "").strip()
        with self.lock:
            if spec in self._pipes:
                return True
        return spec not in ("default", self.studio.settings.model) and hub_id(spec) and \
            names_pipeline(spec, self.studio.settings.hub_endpoint)

    def load(self, session: Session, spec: str) -> None:
        """Switch the session to the Hub pipeline ``spec`` (loaded once, shared), starting it over."""
        spec = spec.strip()
        with self.lock:
            known = spec in self._pipes
        if not known:
            pipe = load_pipeline(spec, self.studio.settings.hub_endpoint)
            with self.lock:
                self._pipes[spec] = pipe
                while len(self._pipes) > KEEP_PIPELINES:
                    self._pipes.popitem(last=False)
        session.reset(spec)

    # -- rules ---------------------------------------------------------------------------------------------
    def rewrite(self, session: Session, text: TextSession, rules: Sequence[TextRule], preserve: Sequence[str],
                prior_weight: float, grid: Grid) -> Edit:
        """Solve ``rules`` jointly, push the edit on the undo stack and compare on ``grid`` from now on."""
        edit = solve(self.pipeline(session), rules, preserve, positive(prior_weight, "prior weight", "0.1"))
        prefix = f"{len(rules)} rules jointly: " if len(rules) > 1 else ""
        session.push(edit, prefix + label(edit))
        text.grid = grid
        return edit

    # -- before / after ----------------------------------------------------------------------------------
    def before_after(self, session: Session, grid: Grid | None) -> tuple[Gallery, Gallery]:
        """The grid rendered by the base model and with the session's edit at its strength (empty: no grid)."""
        if grid is None:
            return [], []
        pipe, key = self.pipeline(session), (session.model, grid)
        with self.lock:
            before = self._before.get(key)
        if before is None:
            before = display(render(pipe, grid.prompts, grid.seeds, grid.steps, grid.size))
            with self.lock:
                self._before[key] = before
                while len(self._before) > 16:
                    self._before.popitem(last=False)
        edit = session.current
        after = before if edit is None else display(render(pipe, grid.prompts, grid.seeds, grid.steps, grid.size,
                                                           edit, session.strength))
        caps = grid.captions()
        return list(zip(before, caps, strict=True)), list(zip(after, caps, strict=True))

    def compare(self, session: Session, text: TextSession | None) -> tuple[Gallery, Gallery]:
        """Before / after for either tab: the text grid for a pipeline, the Studio's samples otherwise."""
        if self.tab(session) == TEXT:
            return self.before_after(session, text.grid if text is not None else None)
        return self.studio.before_after(session)

    # -- files ---------------------------------------------------------------------------------------------
    def _grid(self, session: Session, text: TextSession, edit: Edit) -> Grid:
        return text.grid or recipe_grid(edit, DEFAULT_STEPS, self.default_size(session))

    def download(self, session: Session, text: TextSession) -> Path:
        """The zip of the current text edit at the session's strength, its before / after picture inside."""
        edit = self.studio._final(session, "download")
        image = picture(self.pipeline(session), self._grid(session, text, edit), edit)
        return zip_edit(edit, tempfile.mkdtemp(prefix="olam-edit-"), image)

    def upload(self, session: Session, text: TextSession, path: str | Path) -> Edit:
        """Read, verify and vet an uploaded text edit (files, fit to the pipeline, finite at every strength),
        and make it the current edit; nothing changes unless every check passed."""
        pipe, path = self.pipeline(session), Path(path)
        work = tempfile.mkdtemp(prefix="olam-edit-upload-")
        known = {str(path): path.name, str(path.parent): "", work: path.name}
        try:
            edit = read_upload(path, int(self.studio.settings.max_upload_mb * 2**20), work)
            check_fits(pipe, edit, session.model)
            grid = self._grid(session, text, edit)
            check_renders(pipe, edit, Grid(grid.prompts[:1], grid.seeds[:1], 1, grid.size), session.strength)
        except OlamEditError as e:
            raise hide_error_paths(e, known) from None  # the chained error would carry the paths again
        finally:
            shutil.rmtree(work, ignore_errors=True)
        session.push(edit, f"uploaded: {label(edit)}")
        text.grid = grid
        return edit

    def publish(self, session: Session, text: TextSession, repo_id: str, private: bool, token: str | None) -> str:
        """Push the current text edit (at its strength) to ``repo_id`` with the visitor's ``token``."""
        repo_id = check_publish(token, repo_id, self.studio.settings.show_login)
        edit = self.studio._final(session, "publish")
        image = picture(self.pipeline(session), self._grid(session, text, edit), edit)
        extra = {"endpoint": self.studio.settings.hub_endpoint} if self.studio.settings.hub_endpoint else {}
        return str(edit.push_to_hub(repo_id, token=token, private=bool(private), image=image, **extra))


def check_fits(pipe: Any, edit: Edit, name: str) -> None:
    """BaseMismatchError unless ``edit`` is a text edit of this pipeline's component with its base weights."""
    from olam_edit.adapters.diffusers.families import family_of

    family, comp = family_of(pipe)
    made_for = (edit.manifest.get("base_model") or {}).get("id") or "an unknown model"
    layers = set(family.layers(comp))
    fix = f"Load the model it was made for ({made_for}) in the 'Generator' field."
    if edit.manifest.get("component") != family.component or not set(edit.deltas) <= layers:
        raise BaseMismatchError(explain("this edit was made for another model",
                                        got=f"component {edit.manifest.get('component')!r}, layers "
                                            f"{sorted(set(edit.deltas) - layers)[:3]}",
                                        expected=f"a text edit of the {family.component} of {name}", fix=fix))
    try:
        with model_lock(comp):  # it reads the shared weights, which a render swaps meanwhile
            check_base(pipe, edit)
    except BaseMismatchError as e:  # the core's fix (force=True) is no option here
        raise BaseMismatchError(explain("this edit was made for another model (its base weights differ)",
                                        got=f"an edit of {made_for}", expected=f"an edit of {name}", fix=fix)) from e


def check_renders(pipe: Any, edit: Edit, grid: Grid, strength: float) -> None:
    """EditFileError unless ``edit`` changes each layer by at most MAX_RELATIVE_NORM times its weight at
    MAX_STRENGTH and renders finite images (one image, one step) at ``strength`` and at MAX_STRENGTH."""
    from olam_edit import get_handle

    comp, fix = component(pipe), "Check the edit file; it may be corrupted."
    for name, delta in edit.deltas.items():
        with model_lock(comp):
            norm = delta.scaled(MAX_STRENGTH).relative_norm(get_handle(comp, name).effective_weight().detach())
        if not np.isfinite(norm) or norm > MAX_RELATIVE_NORM:
            raise EditFileError(explain(f"the uploaded edit changes layer {name} far too much",
                                        got=f"‖ΔW‖/‖W‖ = {norm:.3g} at strength {MAX_STRENGTH:g}",
                                        expected=f"at most {MAX_RELATIVE_NORM:g}", fix=fix))
    for scale in sorted({float(strength), MAX_STRENGTH}):
        try:
            images = render(pipe, grid.prompts, grid.seeds, grid.steps, grid.size, edit, scale)  # [1, 3, H, W]
        except OlamEditError as e:
            raise EditFileError(explain("the uploaded edit cannot be applied", got=e.what, fix=fix)) from e
        if not bool(torch.isfinite(images).all()):
            raise EditFileError(explain("the uploaded edit makes the pipeline's images non-finite (NaN or Inf)",
                                        got=f"strength {scale:g}", expected="finite images", fix=fix))
