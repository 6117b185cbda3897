"""The Studio: what the Space's handlers do, on plain values (no Gradio components).

Every method takes a :class:`Session` and plain values and returns plain values (images as arrays),
so tests call it directly. The generators are shared and never mutated: images are rendered with a
session's edit through the core's functional preview, and where the Studio reads a shared model's
weights itself it holds that model's lock (:func:`olam_edit.model_lock`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from olam_edit import Edit, context_directions, model_lock
from olam_edit.errors import (
    EditFileError,
    EmptySelectionError,
    GeneratorLoadError,
    OlamEditError,
    RequestError,
    explain,
)
from olam_edit.hub.repo import looks_like_repo_id
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.rules.spatial.stages import Then, solve_staged
from olam_edit.spaces_app import zerogpu
from olam_edit.spaces_app.checks import check_publish
from olam_edit.spaces_app.generators import Models
from olam_edit.spaces_app.images import ImageFiles, heat_weight, tint
from olam_edit.spaces_app.masks import make_request
from olam_edit.spaces_app.session import Session
from olam_edit.spaces_app.settings import (
    COLORS,
    COMPARE_FIRST_SEED,
    HEAT_LOW,
    MAX_RULES,
    MAX_STRENGTH,
    TRAY,
    Settings,
)
from olam_edit.spaces_app.uploads import check_fits, hide_error_paths, picture, read_upload, zip_edit

Gallery = list[tuple[Any, str]]  # (image, caption) pairs
MAX_RELATIVE_NORM = 1e3  # ‖ΔW‖/‖W‖ of an uploaded edit at the largest strength (rewrites give < 1)


class Studio:
    """The handlers' logic: samples, selections, rewrites, heatmaps and edit files of sessions."""

    def __init__(self, settings: Settings, generator: Any | None = None) -> None:
        self.settings = settings
        self.models = Models(settings, generator)
        self.files = ImageFiles()
        zerogpu.register(self)  # its solves and heatmaps run on the GPU on ZeroGPU

    def generator(self, session: Session) -> Any:
        return self.models.get(session.model)

    def generator_of(self, spec: str) -> Any:
        return self.models.get(spec)

    def default_layer(self, session: Session) -> str:
        """The layer the UI starts on: an example rule's layer for the default model, else a middle one."""
        layers = self.generator(session).layers()
        for name in example_names() if session.model == "default" else []:
            layer = example(name)[0].layer
            if layer in layers:
                return layer
        return layers[len(layers) // 2]

    # -- samples ---------------------------------------------------------------------------------
    def sample(self, session: Session, seed: int) -> np.ndarray:
        return self.samples(session, [seed])[0]

    def samples(self, session: Session, seeds: Sequence[int]) -> list[np.ndarray]:
        """Display images of ``seeds`` (each distinct seed rendered once, in batches)."""
        unique = sorted({int(s) for s in seeds})
        shown = dict(zip(unique, self.models.images(session.model, unique), strict=True))
        return [shown[int(s)] for s in seeds]

    def gallery(self, session: Session, heat: tuple[np.ndarray, float, float] | None = None) -> Gallery:
        """The session's samples, tinted where the rule fires when ``heat`` (see :meth:`heatmap`) is given."""
        images = self.models.before(session.model, session.seeds)
        if heat is not None:
            scores, low, high = heat
            images = [tint(im, heat_weight(s, low, high), COLORS["heat"]) for im, s in zip(images, scores, strict=True)]
        return [(im, f"#{s}") for im, s in zip(images, session.seeds, strict=True)]

    def compare_seeds(self, count: int | None = None) -> list[int]:
        return list(range(COMPARE_FIRST_SEED, COMPARE_FIRST_SEED + int(count or self.settings.compare_count)))

    def before_after(self, session: Session, count: int | None = None) -> tuple[Gallery, Gallery]:
        """Held-out samples of the base model and with the session's edit at its strength."""
        seeds = self.compare_seeds(count)
        before = self.models.before(session.model, seeds)
        after = self.models.images(session.model, seeds, session.current, session.strength)
        caps = [f"#{s}" for s in seeds]
        return list(zip(before, caps, strict=True)), list(zip(after, caps, strict=True))

    # -- selections and rewrite ------------------------------------------------------------------
    def tray(self, session: Session) -> tuple[Gallery, np.ndarray | None, np.ndarray | None]:
        """Thumbnails of the context selections, and the copy and paste previews."""
        sels = [*session.context[:TRAY], session.copy, session.paste]
        images = self.samples(session, [s.seed for s in sels if s is not None])
        shown = [tint(images.pop(0), s.mask, COLORS[what]) if s is not None else None
                 for s, what in zip(sels, ["context"] * (len(sels) - 2) + ["copy", "paste"], strict=True)]
        return [(im, f"#{s.seed}") for im, s in zip(shown[:-2], sels, strict=False)], shown[-2], shown[-1]

    def rewrite(self, session: Session, layer: str, rank: int, smoothness: float, ridge: float,
                progress: Callable[[float, str], None] = lambda f, d: None) -> Edit:
        """Solve the session's rule on ``layer`` and push the edit on its undo stack."""
        request = make_request(session, layer, rank)
        progress(0.1, "collecting key statistics (cached after the first time)")
        self.models.rewriter(session.model, layer, check_ridge(ridge))
        then = session.then[1] if session.then is not None and session.then[0] == layer else None
        progress(0.6, "solving the rewrite" if then is None else f"solving the rewrite at {layer}, then {then.layer}")
        edit = zerogpu.call(self, "solve", session.model, [request], float(smoothness), check_ridge(ridge), then)
        session.push(edit, describe(edit))
        return edit

    def solve(self, spec: str, requests: list[EditRequest], smoothness: float, ridge: float,
              then: Then | None = None) -> Edit:
        """The edit of ``requests`` (one rule, or one layer's rules solved jointly) on the model ``spec``;
        with ``then`` (an example's second stage) one rule at two layers (:mod:`olam_edit.rules.spatial.stages`).

        Pure GPU-bound work (no session, nothing changed but the shared caches; a second stage applies the
        first to the shared model and reverts it bit for bit, holding the model's lock, so no preview sees
        it): on ZeroGPU it runs in the GPU worker (:mod:`olam_edit.spaces_app.zerogpu`)."""
        rewriter = self.models.rewriter(spec, requests[0].layer, ridge)
        with model_lock(rewriter.generator.model):  # the solve reads the shared weights a preview swaps
            if then is None:
                return rewriter.rewrite(list(requests), smoothness=smoothness)  # one rule: as rewrite(rule)
            gen = rewriter.generator

            def rewriter_for(layer: str) -> Rewriter:  # the second stage's statistics are of the edited model
                return rewriter if layer == rewriter.layer else Rewriter(
                    gen, layer, ridge=ridge, stats_samples=self.settings.stats_samples,
                    cache_dir=self.settings.cache_dir, progress=False)

            return solve_staged(gen, requests[0], then, rewriter_for, smoothness=smoothness)

    def add_rule(self, session: Session, layer: str, rank: int) -> EditRequest:
        """List the session's selections as one more rule for :meth:`rewrite_all` and clear them (the
        next rule starts afresh). The listed rules share one layer: one edit solves one layer's rules."""
        request = make_request(session, layer, rank)  # RequestError without a copy or paste region
        if session.rules and request.layer != session.rules[0].layer:
            raise RequestError(explain("the listed rules are for another layer, and one edit solves the rules of "
                                       "one layer", got=request.layer, expected=session.rules[0].layer,
                                       fix=f"Pick layer {session.rules[0].layer}, or press 'Clear rules' first."))
        if len(session.rules) >= MAX_RULES:
            raise RequestError(explain("the rule list is full", got=len(session.rules), expected=f"at most {MAX_RULES}",
                                       fix="Press 'Rewrite all', or 'Clear rules'."))
        session.rules = [*session.rules, request]
        session.clear_selections()
        return request

    def rewrite_all(self, session: Session, smoothness: float, ridge: float,
                    progress: Callable[[float, str], None] = lambda f, d: None) -> Edit:
        """Solve every listed rule jointly (:meth:`Rewriter.rewrite` of the list) and push the one edit on
        the undo stack; the list stays, so more rules can be added and the list solved again."""
        if not session.rules:
            raise RequestError(explain("there are no rules in the list yet",
                                       fix="Paint a rule (context, copy, paste) and press 'Add rule to list'."))
        progress(0.1, "collecting key statistics (cached after the first time)")
        self.models.rewriter(session.model, session.rules[0].layer, check_ridge(ridge))
        progress(0.6, f"solving {len(session.rules)} rules jointly")
        edit = zerogpu.call(self, "solve", session.model, list(session.rules), float(smoothness), check_ridge(ridge))
        session.push(edit, f"{count_rules(len(session.rules))} jointly: {describe(edit)}")
        return edit

    def heatmap(self, session: Session, layer: str, rank: int, ridge: float = DEFAULT_RIDGE
                ) -> tuple[np.ndarray, float, float]:
        """Where the rule fires on the gallery: from the context regions, else from the current edit.

        Returns the scores ``[B, h, w]`` and two of their quantiles over the model's own samples: the
        reference's outline threshold (99.9th percentile) and a lower one (HEAT_LOW) where the tint starts.
        """
        if not session.context and session.current is None:
            raise RequestError(explain("there is no rule to show yet", fix="Add a context region, or rewrite first."))
        edit = None if session.context else session.current
        return zerogpu.call(self, "heat", session.model, session.seeds, list(session.context), edit, layer, int(rank),
                            check_ridge(ridge) if session.context else DEFAULT_RIDGE)

    def heat(self, spec: str, seeds: list[int], context: list[Selection], edit: Edit | None, layer: str, rank: int,
             ridge: float) -> tuple[np.ndarray, float, float]:
        """:meth:`heatmap`'s scores for ``seeds`` from the ``context`` selections, else from ``edit``'s first
        layer. Pure GPU-bound work (see :meth:`solve`)."""
        gen = self.generator_of(spec)
        if context:
            rw = self.models.rewriter(spec, layer, ridge)
            keys, weights = rw.context_keys(context)  # [n, in], [n] (key capture takes the lock)
            if keys.shape[0] == 0:
                raise EmptySelectionError(explain("the context regions are empty at this layer's resolution",
                                                  fix="Paint larger regions."))
            D = context_directions(keys, weights, rw.C, rank, rw.ridge)  # [rank, in]
        else:
            layer, delta = next(iter(edit.deltas.items()))
            rw, D = self.models.rewriter(spec, layer), delta.directions
        with model_lock(gen.model):  # one turn for both passes (the rewriter's quantile cache is shared)
            heat = rw.context_heatmap(seeds, directions=D.to(torch.float64))
            low = rw.score_quantile(D.to(torch.float64), HEAT_LOW)
        return heat.scores.numpy(), low, heat.threshold

    # -- files -----------------------------------------------------------------------------------
    def download(self, session: Session) -> Path:
        """The zip of the current edit at the session's strength (a model card and picture inside)."""
        edit = self._final(session, "download")
        image = picture(self.generator(session), edit, self.compare_seeds(8))
        return zip_edit(edit, tempfile.mkdtemp(prefix="olam-edit-"), image)

    @staticmethod
    def _final(session: Session, what: str) -> Edit:
        """The current edit at the session's strength (what you see is what you save)."""
        if session.current is None:
            raise RequestError(explain(f"there is no edit to {what} yet", fix="Rewrite first."))
        return session.current.scaled(session.strength)

    def upload(self, session: Session, path: str | Path) -> Edit:
        """Read, verify and vet an uploaded edit, and make it the session's current edit.

        Nothing of the session changes unless every check passed: the files (sizes, checksums,
        manifest), the fit to the session's model, and a test render at the session's strength and
        at the slider's largest, whose images must be finite. Messages name the upload by its own
        file name, never by a server path.
        """
        path = Path(path)
        max_bytes = int(self.settings.max_upload_mb * 2**20)
        work = tempfile.mkdtemp(prefix="olam-edit-upload-")
        known = {str(path): path.name, str(path.parent): "", work: path.name}
        try:
            edit = read_upload(path, max_bytes, work)
            check_fits(self.generator(session), edit)
            self._check_renders(session, edit)
        except OlamEditError as e:
            raise hide_error_paths(e, known) from None  # the chained error would carry the paths again
        finally:
            shutil.rmtree(work, ignore_errors=True)
        session.push(edit, f"uploaded: {describe(edit)}")
        return edit

    def _check_renders(self, session: Session, edit: Edit) -> None:
        """EditFileError unless ``edit`` is usable at every strength of the slider: each layer's change
        at MAX_STRENGTH is finite and at most MAX_RELATIVE_NORM times its weight (an overflowing edit
        renders finite but blank images), and a test render at the session's strength and at
        MAX_STRENGTH gives finite images."""
        gen, fix = self.generator(session), "Check the edit file; it may be corrupted."
        for name, delta in edit.deltas.items():
            with model_lock(gen.model):  # it reads the shared weights, which a preview swaps meanwhile
                norm = delta.scaled(MAX_STRENGTH).relative_norm(gen.handle(name).effective_weight().detach())
            if not np.isfinite(norm) or norm > MAX_RELATIVE_NORM:
                raise EditFileError(explain(f"the uploaded edit changes layer {name} far too much",
                                            got=f"‖ΔW‖/‖W‖ = {norm:.3g} at strength {MAX_STRENGTH:g}",
                                            expected=f"at most {MAX_RELATIVE_NORM:g}", fix=fix))
        for strength in sorted({float(session.strength), MAX_STRENGTH}):
            try:
                images = gen.images(self.compare_seeds(1), edit, strength)  # [1, 3, H, W]
            except OlamEditError as e:
                raise EditFileError(explain("the uploaded edit cannot be applied", got=e.what, fix=fix)) from e
            if not bool(torch.isfinite(images).all()):
                raise EditFileError(explain("the uploaded edit makes the model's images non-finite (NaN or Inf)",
                                            got=f"strength {strength:g}", expected="finite images", fix=fix))

    def publish(self, session: Session, repo_id: str, private: bool, token: str | None) -> str:
        """Push the current edit (at its strength) to ``repo_id`` with the user's ``token``; the commit URL."""
        repo_id = check_publish(token, repo_id, self.settings.show_login)
        edit = self._final(session, "publish")
        image = picture(self.generator(session), edit, self.compare_seeds(8))
        extra = {"endpoint": self.settings.hub_endpoint} if self.settings.hub_endpoint else {}
        return str(edit.push_to_hub(repo_id, token=token, private=bool(private), image=image, **extra))

    def load_model(self, session: Session, spec: str) -> None:
        """Switch the session to the generator ``spec`` ('default' or a Hub id), starting it over."""
        spec = (spec or "").strip() or "default"
        if spec not in ("default", self.settings.model) and not _is_hub_generator(spec):
            raise RequestError(explain("not a generator name", got=repr(spec),
                                       expected="'default' or a Hub id like 'user/model' (local paths only from "
                                                "the command line)"))
        try:
            self.models.get(spec)
        except OlamEditError as e:  # the core's own explanation, headed by what the visitor asked for
            raise GeneratorLoadError(f"could not load the generator {spec!r}: {e.what}",
                                     got=e.got, expected=e.expected, fix=e.fix) from e
        except Exception as e:  # network, missing repo, unknown format: say so, keep the session
            raise GeneratorLoadError(explain(f"could not load the generator {spec!r}",
                                             got=f"{type(e).__name__}: {str(e)[:200]}")) from e
        session.reset(spec)


def _is_hub_generator(spec: str) -> bool:
    """Whether the UI may load ``spec``: a ``namespace/name`` Hub id, never a local path."""
    return "/" in spec and looks_like_repo_id(spec) and not Path(spec).exists()


def describe(edit: Edit) -> str:
    """A one-line label of an edit for the undo stack."""
    solver, metrics = edit.manifest.get("solver") or {}, edit.manifest.get("metrics") or {}
    layers = ", ".join(f"{n} rank {d.rank}" for n, d in edit.deltas.items())
    norm = metrics.get("relative_norm")
    size = f", ‖ΔW‖/‖W‖ = {norm:.3f}" if isinstance(norm, float) else ""
    return f"{solver.get('method', 'edit')} {layers}{size}"


def count_rules(n: int) -> str:
    """``"1 rule"``, ``"2 rules"``, ..."""
    return f"{n} rule" if n == 1 else f"{n} rules"


def check_strength(strength: Any) -> float:
    """``strength`` as a float in [0, MAX_STRENGTH] (the slider's range), else RequestError."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= MAX_STRENGTH:  # NaN fails too
        raise RequestError(explain("the strength is out of range", got=str(strength)[:40],
                                   expected=f"a number from 0 to {MAX_STRENGTH:g}"))
    return value


def check_ridge(ridge: Any) -> float:
    """``ridge`` as a positive float, else RequestError."""
    if ridge is None or not np.isfinite(float(ridge)) or float(ridge) <= 0:
        raise RequestError(explain("the ridge must be a positive number", got=ridge, expected=f"e.g. {DEFAULT_RIDGE}"))
    return float(ridge)


def example_names() -> list[str]:
    """The curated example rules (none when they cannot be read)."""
    try:
        from olam_edit.rules.spatial.examples import list_examples

        return list_examples()
    except (OSError, OlamEditError):
        return []


def example(name: str) -> tuple[EditRequest, dict[str, Any]]:
    """The example rule ``name``: its request and its solver settings."""
    from olam_edit.rules.spatial.examples import load_example

    return load_example(name)
