"""olam-edit Space: rewrite one rule of a generative model in the browser.

Paint context regions, a copy region and a paste region on samples, press Rewrite, and compare many
samples before and after; undo, change the strength, download the edit folder as a zip, apply an
uploaded one, or publish it to the Hub with your own Hugging Face login.

Run it with ``python app.py [--model SPEC] [--port N] [--host ADDR]`` (or ``olam-edit demo``). The
generator is ``$OLAM_EDIT_MODEL`` (default: the embedded 64x64 face DCGAN, no network needed), or any
supported Hub generator named in the UI.

Every session keeps its own undo stack of edits. The model is shared and never mutated by a request:
images are rendered with the session's edit through a functional preview, and every use of a shared
model is serialised by the core's per-model lock (:func:`olam_edit.model_lock`). The UI logic lives
in small functions that tests call directly; :func:`build_app` wires them to Gradio components and
:func:`main` launches the server.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import numpy as np
import torch
from olam_edit.adapters import load_generator

from olam_edit import Edit, check_base, context_directions, model_lock
from olam_edit.errors import (
    BaseMismatchError,
    EditFileError,
    EmptySelectionError,
    OlamEditError,
    RequestError,
    explain,
)
from olam_edit.eval.grid import to_uint8
from olam_edit.memory.directions import DEFAULT_RIDGE
from olam_edit.memory.solve import DEFAULT_SMOOTHNESS
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.rules.spatial.tensors import weighted_keys

log = logging.getLogger("olam_edit.space")

DISPLAY = 256  # pixels: samples are shown (and painted) at this size
PAGE = 16  # samples added by "Show more"
MAX_SAMPLES = 128  # most samples in the gallery
HEAT_LOW = 0.95  # the heatmap tint starts at this quantile of the rule's scores, full at the 99.9th
HISTORY = 20  # edits a session keeps for undo
TRAY = 24  # context thumbnails shown (a rule may have hundreds of context regions)
COMPARE_FIRST_SEED = 1000  # before/after use held-out seeds from here
MAX_UPLOAD_MB = 20.0
QUEUE_SIZE = 32
ZIP_NAMES = ("edit.safetensors", "edit_config.json", "checksums.json")  # read from an upload; others ignored
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
REPO_NAME = re.compile(r"^([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
COLORS = {"context": (40, 200, 90), "copy": (40, 120, 255), "paste": (255, 150, 20), "heat": (255, 30, 30)}


# ------------------------------------------------------------------------------------ settings and state
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
        return bool(os.environ.get("SPACE_ID")) if self.login is None else self.login


@dataclass
class Entry:
    """One step of the undo stack: an edit of the base model and how it was made."""

    edit: Edit
    label: str


@dataclass
class Session:
    """What one browser session holds: the model it works on, its selections and its undo stack.

    Every edit on the stack is a complete edit of the base model; the top one is the current edit.
    """

    model: str = "default"
    first_seed: int = 0
    count: int = PAGE
    seed: int | None = None  # the sample in the painter
    context: list[Selection] = field(default_factory=list)
    copy: Selection | None = None
    paste: Selection | None = None
    history: list[Entry] = field(default_factory=list)
    strength: float = 1.0

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


class Models:
    """The shared generators (loaded once, a few at most) and their rewriters.

    ``lock`` guards these caches. Running a model is serialised by the core instead: previews, key
    capture and statistics take :func:`olam_edit.model_lock`, which the Studio also holds where it reads
    the shared weights itself. Lock order: ``lock`` first, then a model's lock, never the reverse.
    """

    def __init__(self, settings: Settings, first: Any | None = None, keep: int = 2) -> None:
        self.settings, self.keep = settings, keep
        self.lock = threading.RLock()
        self._loading = threading.Lock()
        self._gens: OrderedDict[str, Any] = OrderedDict()
        self._rewriters: OrderedDict[tuple[str, str, float], Rewriter] = OrderedDict()
        self._stats: dict[tuple[str, str], Any] = {}
        self._before: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
        if first is not None:
            self._gens[settings.model] = first

    def get(self, spec: str) -> Any:
        """The generator ``spec``, loaded on first use. Loading (a Hub download, maybe) happens outside
        ``lock`` when the caller does not hold it, so other sessions keep working meanwhile."""
        with self.lock:
            if spec in self._gens:
                self._gens.move_to_end(spec)
                return self._gens[spec]
        with self._loading:
            with self.lock:
                if spec in self._gens:
                    return self._gens[spec]
            generator = load_generator(spec)
            with self.lock:
                self._gens[spec] = generator
                self._evict()
                return generator

    def _evict(self) -> None:
        while len(self._gens) > self.keep:
            old = next(k for k in self._gens if k != self.settings.model)
            del self._gens[old]
            self._rewriters = OrderedDict((k, v) for k, v in self._rewriters.items() if k[0] != old)
            self._stats = {k: v for k, v in self._stats.items() if k[0] != old}

    def rewriter(self, spec: str, layer: str, ridge: float = DEFAULT_RIDGE) -> Rewriter:
        """The rewriter of ``layer`` with this ``ridge``; every ridge shares the layer's key statistic
        (collected here on first use, or read from the cache, with a progress bar)."""
        with self.lock:
            key = (spec, layer, float(ridge))
            if key not in self._rewriters:
                gen = self.get(spec)
                if (spec, layer) not in self._stats:
                    self._stats[(spec, layer)] = Rewriter(gen, layer, stats_samples=self.settings.stats_samples,
                                                          cache_dir=self.settings.cache_dir).stats
                self._rewriters[key] = Rewriter(gen, layer, ridge=float(ridge), stats=self._stats[(spec, layer)])
                while len(self._rewriters) > 32:  # cheap to rebuild: the statistic stays
                    self._rewriters.popitem(last=False)
            self._rewriters.move_to_end(key)
            return self._rewriters[key]

    def before(self, spec: str, seeds: Sequence[int]) -> list[np.ndarray]:
        """Display images of the base model (cached: every session shows the same ones)."""
        key = (spec, tuple(seeds))
        with self.lock:
            if key not in self._before:
                self._before[key] = display(self.get(spec).images(list(seeds)))
                while len(self._before) > 16:
                    self._before.popitem(last=False)
            return self._before[key]


# ------------------------------------------------------------------------------------ images
def resize(img: np.ndarray, size: int = DISPLAY, smooth: bool = False) -> np.ndarray:
    """An image ``[H, W, C]`` uint8 scaled so that its longer side is ``size`` (nearest for pixel art)."""
    from PIL import Image

    h, w = img.shape[:2]
    if max(h, w) == size:
        return img
    new = (max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w))))
    up = max(h, w) < size and not smooth
    return np.asarray(Image.fromarray(img).resize(new, Image.NEAREST if up else Image.LANCZOS))


def display(images: torch.Tensor) -> list[np.ndarray]:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> a list of uint8 ``[256, 256, 3]`` arrays."""
    return [resize(im) for im in to_uint8(images)]


def tint(img: np.ndarray, weight: np.ndarray, color: tuple[int, int, int], opacity: float = 0.55) -> np.ndarray:
    """Blend ``color`` into ``img`` ``[H, W, 3]`` where ``weight`` ``[h, w]`` in [0, 1] is high."""
    w = resize_weight(weight, img.shape[:2])[..., None] * opacity
    out = img.astype(np.float64) * (1 - w) + np.asarray(color, np.float64) * w
    return out.round().clip(0, 255).astype(np.uint8)


def resize_weight(weight: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map in [0, 1] resized bilinearly to ``size`` (h, w)."""
    t = torch.as_tensor(np.asarray(weight, dtype=np.float64))[None, None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 1).numpy()


def heat_weight(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """Opacity of the heatmap: 0 up to the score ``low``, rising to 1 at ``high`` and above."""
    return np.clip((scores - low) / max(high - low, 1e-12), 0.0, 1.0)


# ------------------------------------------------------------------------------------ masks and requests
def editor_mask(value: Any) -> np.ndarray:
    """The painted mask ``[H, W]`` in [0, 1] from a ``gr.ImageEditor`` value (as the editor sends it).

    The strokes are the alpha of the editor's layers (their union); when the editor returns no layers
    (a known Gradio quirk) the mask is where the composite differs from the background. A bare image
    or array is read as a mask itself. Raises EmptySelectionError when nothing is painted.
    """
    if value is None:
        raise EmptySelectionError(explain("no sample is open", fix="Pick a sample in the gallery first."))
    if isinstance(value, dict):
        layers = [np.asarray(x) for x in value.get("layers") or [] if x is not None]
        if layers:
            mask = np.max([_alpha(x) for x in layers], axis=0)
        else:
            mask = _difference(value.get("background"), value.get("composite"))
    else:
        from olam_edit.rules.spatial.request import mask_from_image

        mask = mask_from_image(value)
    if not np.isfinite(mask).all() or float(mask.max(initial=0.0)) <= 0.0:
        raise EmptySelectionError(explain("the mask is empty", fix="Paint over the region with the brush."))
    return mask


def _alpha(layer: np.ndarray) -> np.ndarray:
    if layer.ndim == 3 and layer.shape[2] in (2, 4):
        return layer[..., -1].astype(np.float64) / 255.0
    gray = layer if layer.ndim == 2 else layer.max(axis=2)
    return (gray.astype(np.float64) / (255.0 if layer.dtype.kind in "ui" else 1.0)).clip(0, 1)


def _difference(background: Any, composite: Any) -> np.ndarray:
    if background is None or composite is None:
        return np.zeros((1, 1))
    bg, comp = np.asarray(background)[..., :3].astype(np.int16), np.asarray(composite)[..., :3].astype(np.int16)
    if bg.shape != comp.shape:
        return np.zeros((1, 1))
    return (np.abs(bg - comp).max(axis=2) > 24).astype(np.float64)


def selection(value: Any, seed: int | None) -> Selection:
    """A Selection from the editor value painted on sample ``seed``."""
    if seed is None:
        raise RequestError(explain("no sample is open", fix="Pick a sample in the gallery first."))
    mask = editor_mask(value)
    if float(mask.min()) >= 1 - 1e-6:
        raise RequestError(explain("the mask covers the whole image", expected="a region",
                                   fix="Paint only the part of the image the rule is about."))
    return Selection(int(seed), mask)


def make_request(session: Session, layer: str, rank: int) -> EditRequest:
    """The session's selections as an EditRequest; a missing copy or paste region is an error."""
    for what, sel in (("copy", session.copy), ("paste", session.paste)):
        if sel is None:
            raise RequestError(explain(f"there is no {what} region yet",
                                       fix=f"Paint it on a sample and press 'Set {what}'."))
    return EditRequest(layer=layer, copy=session.copy, paste=session.paste, context=list(session.context),
                       rank=int(rank), model=None)


def at_strength(edit: Edit, strength: float) -> Edit:
    """The edit scaled by ``strength`` (what you see is what you save: the file keeps the scale), its
    manifest's rule and relative norm saying so (the model card and the undo label show them)."""
    if strength == 1.0:
        return edit
    scaled = edit.scaled(strength)
    manifest = copy.deepcopy(scaled.manifest)
    metrics = manifest.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("relative_norm"), float):
        metrics["relative_norm"] *= abs(strength)
    if manifest.get("rule"):
        manifest["rule"] = f"{manifest['rule']} (strength {strength:g})"
    return Edit(scaled.deltas, manifest)


def describe(edit: Edit) -> str:
    """A one-line label of an edit for the undo stack."""
    solver, metrics = edit.manifest.get("solver") or {}, edit.manifest.get("metrics") or {}
    layers = ", ".join(f"{n} rank {d.rank}" for n, d in edit.deltas.items())
    norm = metrics.get("relative_norm")
    size = f", ‖ΔW‖/‖W‖ = {norm:.3f}" if isinstance(norm, float) else ""
    return f"{solver.get('method', 'edit')} {layers}{size}"


# ------------------------------------------------------------------------------------ edit files
def edit_name(edit: Edit) -> str:
    return f"olam-edit-{'-'.join(edit.layers)}-{edit.fingerprint[:8]}".replace("/", "_")


def zip_edit(edit: Edit, folder: str | Path, picture: bytes | None = None) -> Path:
    """Write the edit folder as a Hub repo would hold it (files, checksums, model card, before/after
    picture) into ``folder``/edit and zip it; returns the zip's path."""
    from olam_edit.edit.publish import stage_edit

    out, name = Path(folder), edit_name(edit)
    (out / "edit").mkdir(parents=True, exist_ok=True)
    stage_edit(edit, out / "edit", f"your-username/{name}", picture)
    return Path(shutil.make_archive(str(out / name), "zip", root_dir=out, base_dir="edit"))


def picture(generator: Any, edit: Edit, seeds: Sequence[int]) -> bytes:
    """A before/after PNG of ``seeds``."""
    import io

    from olam_edit.eval.grid import grid_image

    buf = io.BytesIO()
    grid_image([generator.images(list(seeds)), generator.images(list(seeds), edit)], ["before", "after"]).save(
        buf, format="PNG")
    return buf.getvalue()


def read_upload(path: str | Path, max_bytes: int, workdir: str | Path) -> Edit:
    """An Edit from an uploaded zip (from 'Download') or a bare ``edit.safetensors``, validated.

    The file size is checked before anything is read; zips are read member by member (only the
    known file names, no paths), with their unpacked size bounded too.
    """
    path, work = Path(path), Path(workdir)
    size = path.stat().st_size
    if size > max_bytes:
        raise EditFileError(explain("the upload is too large", got=f"{size / 2**20:.1f} MB",
                                    expected=f"at most {max_bytes / 2**20:.0f} MB"))
    work.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(path):
        _unzip_edit(path, max_bytes, work)
    elif path.suffix == ".safetensors":
        shutil.copyfile(path, work / "edit.safetensors")
    else:
        raise EditFileError(explain(f"{path.name} is not an edit",
                                    expected="the .zip from 'Download edit' or an edit.safetensors"))
    from olam_edit.edit.publish import load_verified

    return load_verified(work)  # checksums.json (when present), then every check of Edit.load


def _unzip_edit(path: Path, max_bytes: int, work: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir() and Path(i.filename).name in ZIP_NAMES]
            names = [Path(i.filename).name for i in members]
            if len(set(names)) != len(names):
                raise EditFileError(explain("the zip holds more than one edit", got=sorted(names),
                                            fix="Upload one edit folder per zip."))
            if sum(i.file_size for i in members) > 4 * max_bytes:
                raise EditFileError(explain("the zip unpacks to too much data", expected=f"<= {4 * max_bytes} bytes"))
            for info in members:
                (work / Path(info.filename).name).write_bytes(zf.read(info))
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:
        raise EditFileError(explain(f"{path.name} is not a readable zip", got=str(e)[:120])) from e
    if "edit.safetensors" not in names:
        raise EditFileError(explain("the zip holds no edit.safetensors", got=sorted(names) or "no edit files",
                                    fix="Upload the .zip that 'Download edit' gives."))


def check_fits(generator: Any, edit: Edit) -> None:
    """Raise BaseMismatchError unless every layer of ``edit`` exists in ``generator`` with the weight
    the edit was made for (nothing is applied), saying which model to load in the UI."""
    made_for = (edit.manifest.get("base_model") or {}).get("id") or "an unknown model"
    fix = f"Load the model it was made for ({made_for}) in the 'Generator' field."
    missing = [n for n in edit.deltas if n not in generator.layers()]
    if missing:
        raise BaseMismatchError(explain("this edit was made for another model", got=f"layers {missing} of {made_for}",
                                        expected=f"layers of {generator.name}: {generator.layers()}", fix=fix))
    for name, delta in edit.deltas.items():  # layer by layer, to say which one differs
        try:
            with model_lock(generator.model):  # it reads the shared weights, which a preview swaps meanwhile
                check_base(generator.model, Edit({name: delta}, edit.manifest))
        except BaseMismatchError as e:  # the core's fix (force=True) is no option here
            raise BaseMismatchError(explain(f"this edit was made for another model (layer {name} differs)",
                                            got=f"an edit of {made_for}", expected=f"an edit of {generator.name}",
                                            fix=fix)) from e


# ------------------------------------------------------------------------------------ the app's work
class Studio:
    """The handlers' logic, without Gradio components: every method takes and returns plain values."""

    def __init__(self, settings: Settings, generator: Any | None = None) -> None:
        self.settings = settings
        self.models = Models(settings, generator)
        self.files = ImageFiles()

    def generator(self, session: Session) -> Any:
        return self.models.get(session.model)

    def default_layer(self, session: Session) -> str:
        layers = self.generator(session).layers()
        for name in _example_names() if session.model == "default" else []:
            layer = _example(name)[0].layer
            if layer in layers:
                return layer
        return layers[len(layers) // 2]

    # -- samples ---------------------------------------------------------------------------------
    def sample(self, session: Session, seed: int) -> np.ndarray:
        return self.samples(session, [seed])[0]

    def samples(self, session: Session, seeds: Sequence[int]) -> list[np.ndarray]:
        """Display images of ``seeds`` (each distinct seed rendered once, in batches)."""
        unique = sorted({int(s) for s in seeds})
        shown = dict(zip(unique, display(self.generator(session).images(unique)), strict=True))
        return [shown[int(s)] for s in seeds]

    def gallery(self, session: Session, heat: tuple[np.ndarray, float, float] | None = None) -> list[tuple]:
        images = self.models.before(session.model, session.seeds)
        if heat is not None:
            scores, low, high = heat
            images = [tint(im, heat_weight(s, low, high), COLORS["heat"]) for im, s in zip(images, scores, strict=True)]
        return [(im, f"#{s}") for im, s in zip(images, session.seeds, strict=True)]

    def compare_seeds(self, count: int | None = None) -> list[int]:
        return list(range(COMPARE_FIRST_SEED, COMPARE_FIRST_SEED + int(count or self.settings.compare_count)))

    def before_after(self, session: Session, count: int | None = None) -> tuple[list[tuple], list[tuple]]:
        seeds = self.compare_seeds(count)
        before = self.models.before(session.model, seeds)
        edit = session.current
        if edit is None:
            after = before
        else:
            after = display(self.generator(session).images(seeds, edit, session.strength))
        caps = [f"#{s}" for s in seeds]
        return list(zip(before, caps, strict=True)), list(zip(after, caps, strict=True))

    # -- selections and rewrite ------------------------------------------------------------------
    def tray(self, session: Session) -> tuple[list[tuple], np.ndarray | None, np.ndarray | None]:
        """Thumbnails of the context selections, and the copy and paste previews."""
        sels = [*session.context[:TRAY], session.copy, session.paste]
        images = self.samples(session, [s.seed for s in sels if s is not None])
        shown = [tint(images.pop(0), s.mask, COLORS[what]) if s is not None else None
                 for s, what in zip(sels, ["context"] * (len(sels) - 2) + ["copy", "paste"], strict=True)]
        return [(im, f"#{s.seed}") for im, s in zip(shown[:-2], sels, strict=False)], shown[-2], shown[-1]

    def rewrite(self, session: Session, layer: str, rank: int, smoothness: float, ridge: float,
                progress: Callable[[float, str], None] = lambda f, d: None) -> Edit:
        request = make_request(session, layer, rank)
        progress(0.1, "collecting key statistics (cached after the first time)")
        rewriter = self.models.rewriter(session.model, layer, _check_ridge(ridge))
        progress(0.6, "solving the rewrite")
        with model_lock(rewriter.generator.model):  # the solve reads the shared weights a preview swaps
            edit = rewriter.rewrite(request, smoothness=float(smoothness))
        session.push(edit, describe(edit))
        return edit

    def heatmap(self, session: Session, layer: str, rank: int, ridge: float = DEFAULT_RIDGE
                ) -> tuple[np.ndarray, float, float]:
        """Where the rule fires on the gallery: from the context regions, else from the current edit.

        Returns the scores ``[B, h, w]`` and two of their quantiles over the model's own samples: the
        reference's outline threshold (99.9th percentile) and a lower one (HEAT_LOW) where the tint starts.
        """
        gen = self.generator(session)
        if session.context:
            rw = self.models.rewriter(session.model, layer, _check_ridge(ridge))
            D = context_directions(*self._context_keys(gen, layer, session.context), rw.C, int(rank), rw.ridge)
        elif session.current is not None:
            layer, delta = next(iter(session.current.deltas.items()))
            rw, D = self.models.rewriter(session.model, layer), delta.directions
        else:
            raise RequestError(explain("there is no rule to show yet", fix="Add a context region, or rewrite first."))
        with model_lock(gen.model):  # one turn for both passes (the rewriter's quantile cache is shared)
            heat = rw.context_heatmap(session.seeds, directions=D.to(torch.float64))
            low = rw.score_quantile(D.to(torch.float64), HEAT_LOW)
        return heat.scores.numpy(), low, heat.threshold

    @staticmethod
    def _context_keys(gen: Any, layer: str, context: list[Selection]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for i in range(0, len(context), 32):  # one batched forward pass per 32 regions
            chunk = context[i : i + 32]
            x, _ = gen.keys_and_values(layer, gen.latents([s.seed for s in chunk]))
            parts += [weighted_keys(x[j : j + 1], s.mask) for j, s in enumerate(chunk)]
        keys, weights = torch.cat([k for k, _ in parts]), torch.cat([w for _, w in parts])
        if keys.shape[0] == 0:
            raise EmptySelectionError(explain("the context regions are empty at this layer's resolution",
                                              fix="Paint larger regions."))
        return keys, weights

    # -- files -----------------------------------------------------------------------------------
    def download(self, session: Session) -> Path:
        edit = self._final(session, "download")
        image = picture(self.generator(session), edit, self.compare_seeds(8))
        return zip_edit(edit, tempfile.mkdtemp(prefix="olam-edit-"), image)

    @staticmethod
    def _final(session: Session, what: str) -> Edit:
        """The current edit at the session's strength."""
        if session.current is None:
            raise RequestError(explain(f"there is no edit to {what} yet", fix="Rewrite first."))
        return at_strength(session.current, session.strength)

    def upload(self, session: Session, path: str | Path) -> Edit:
        max_bytes = int(self.settings.max_upload_mb * 2**20)
        work = tempfile.mkdtemp(prefix="olam-edit-upload-")
        try:
            edit = read_upload(path, max_bytes, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        check_fits(self.generator(session), edit)
        session.push(edit, f"uploaded: {describe(edit)}")
        return edit

    def publish(self, session: Session, repo_id: str, private: bool, token: str | None) -> str:
        if not token:
            raise RequestError(explain("publishing needs your Hugging Face login", fix=(
                "Press 'Sign in with Hugging Face' first." if self.settings.show_login else
                "Sign-in works when the app runs as a Space; here, download the zip and run "
                "`olam-edit push edit/ your-name/repo`.")))
        repo_id = (repo_id or "").strip()
        if not REPO_NAME.match(repo_id):
            raise RequestError(explain("the repository name is not valid", got=repr(repo_id),
                                       expected="'name' or 'user/name' (letters, digits, '-', '_', '.')"))
        edit = self._final(session, "publish")
        image = picture(self.generator(session), edit, self.compare_seeds(8))
        extra = {"endpoint": self.settings.hub_endpoint} if self.settings.hub_endpoint else {}
        return str(edit.push_to_hub(repo_id, token=token, private=bool(private), image=image, **extra))

    def load_model(self, session: Session, spec: str) -> None:
        spec = (spec or "").strip() or "default"
        if spec not in ("default", self.settings.model) and (not HUB_ID.match(spec) or Path(spec).exists()):
            raise RequestError(explain("not a generator name", got=repr(spec),
                                       expected="'default' or a Hub id like 'user/model' (local paths only from "
                                                "the command line)"))
        try:
            self.models.get(spec)
        except OlamEditError:
            raise
        except Exception as e:  # network, missing repo, unknown format: say so, keep the session
            raise RequestError(explain(f"could not load the generator {spec!r}",
                                       got=f"{type(e).__name__}: {str(e)[:200]}")) from e
        session.reset(spec)


def _check_ridge(ridge: Any) -> float:
    if ridge is None or not np.isfinite(float(ridge)) or float(ridge) <= 0:
        raise RequestError(explain("the ridge must be a positive number", got=ridge, expected=f"e.g. {DEFAULT_RIDGE}"))
    return float(ridge)


def _example_names() -> list[str]:
    try:
        from olam_edit.rules.spatial.examples import list_examples

        return list_examples()
    except (OSError, OlamEditError):
        return []


def _example(name: str) -> tuple[EditRequest, dict[str, Any]]:
    from olam_edit.rules.spatial.examples import load_example

    return load_example(name)


# ------------------------------------------------------------------------------------ Gradio wiring
OK_MARK, ERROR_MARK = "✓", "⚠"  # plain symbols: every font has them


def message(text: str, ok: bool = True) -> str:
    """A status line: a mark, then the text (errors say what went wrong and how to fix it)."""
    return f"{OK_MARK if ok else ERROR_MARK} {text}"


class ImageFiles:
    """PNG files of the images the app shows, named by their content and written once, atomically.

    Handlers return these paths rather than arrays: Gradio rewrites the cache file of an array each
    time it is returned (not atomically), so an image shown twice could be served half-written; a
    file path it copies once and then reuses. Files unused for an hour are pruned now and then.
    """

    def __init__(self, folder: str | Path | None = None, max_age_s: float = 3600.0) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="olam-edit-images-"))
        self.max_age_s, self._writes = max_age_s, 0

    def __call__(self, image: np.ndarray) -> str:
        import hashlib
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
        path = self.folder / f"{hashlib.sha256(buf.getvalue()).hexdigest()[:40]}.png"
        if path.exists():
            os.utime(path)
            return str(path)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
        self._writes += 1
        if self._writes % 500 == 0:
            self.prune()
        return str(path)

    def prune(self) -> None:
        import time

        for old in self.folder.glob("*.png"):
            if time.time() - old.stat().st_mtime > self.max_age_s:
                old.unlink(missing_ok=True)

    def convert(self, value: Any) -> Any:
        """``value`` with every image array replaced by its file (through tuples, lists and dicts)."""
        if isinstance(value, np.ndarray) and value.ndim == 3:
            return self(value)
        if isinstance(value, tuple | list):
            return type(value)(self.convert(v) for v in value)
        if isinstance(value, dict):
            return {k: self.convert(v) for k, v in value.items()}
        return value


def guarded(n_outputs: int, files: ImageFiles | None = None) -> Callable:
    """Catch errors of a handler: show them in the status line (last output), change nothing else.

    Expected errors (bad input) show their message; anything else shows its type and message and is
    logged with its traceback on the server. The session is untouched either way. With ``files``, the
    images a handler returns are handed to Gradio as files (see :class:`ImageFiles`).
    """
    def wrap(fn: Callable) -> Callable:
        import functools

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
                return files.convert(result) if files is not None else result
            except (OlamEditError, ValueError, KeyError) as e:
                text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            except Exception as e:
                log.exception("olam-edit Space: unexpected error in %s", fn.__name__)
                text = f"something went wrong ({type(e).__name__}: {str(e)[:200]})"
            gr.Warning(text)
            if n_outputs == 1:
                return message(text, ok=False)
            return (*([gr.skip()] * (n_outputs - 1)), message(text, ok=False))

        return run

    return wrap


CSS = """
#status {min-height: 2.2em}
#gallery .grid-wrap, #before .grid-wrap, #after .grid-wrap {min-height: 0 !important; max-height: none !important}
"""

INTRO = """# olam-edit: rewrite a rule of a generative model
Pick a sample, **paint** with the brush, and add the region as **context** (where the rule applies; add
several), **copy** (what to copy) or **paste** (where to put it). Press **Rewrite**, then compare the samples
before and after, change the strength, undo, download the edit, or publish it to the Hub.
[Bau et al., *Rewriting a Deep Generative Model*, ECCV 2020](https://rewriting.csail.mit.edu/)."""


def build_app(generator: Any | None = None, settings: Settings | None = None, **options: Any) -> gr.Blocks:
    """The Space as a ``gr.Blocks``. ``generator`` (default: load ``settings.model``) is shared by all
    sessions and never mutated. ``options`` override fields of :class:`Settings`."""
    settings = settings or Settings.from_env(**options)
    studio = Studio(settings, generator if generator is not None else load_generator(settings.model))
    first = Session(model=settings.model)
    with gr.Blocks(title="olam-edit: rewrite a generative model") as demo:
        ui = _layout(studio, first)
        _wire(studio, ui)
    demo.studio = studio  # for tests and tools
    return demo


class UI:
    """The components by name (``ui.name`` or ``ui["name"]``)."""

    def __init__(self, **components: Any) -> None:
        self.__dict__.update(components)

    def __setitem__(self, name: str, component: Any) -> None:
        setattr(self, name, component)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


def _layout(studio: Studio, first: Session) -> UI:
    gen, layer = studio.generator(first), studio.default_layer(first)
    ui = UI(state=gr.State(first))
    gr.Markdown(INTRO)
    with gr.Row():
        ui["model"] = gr.Textbox(value=first.model, label="Generator ('default' or a Hub id)", scale=3,
                                 elem_id="model")
        ui["load"] = gr.Button("Load generator", scale=1)
        ui["examples"] = gr.Dropdown(_example_names(), label="Example rules", value=None, scale=2,
                                     visible=bool(_example_names()), elem_id="examples")
    ui["status"] = gr.Markdown(message(f"Ready: {gen.name}. Pick a sample to paint on."), elem_id="status")
    with gr.Row():
        with gr.Column(scale=3):
            ui["gallery"] = gr.Gallery(studio.files.convert(studio.gallery(first)), columns=6,
                                       label="Samples (click one to paint on it)",
                                       height="auto", format="png", allow_preview=False, elem_id="gallery")
            with gr.Row():
                ui["more"] = gr.Button("Show more samples", size="sm")
                ui["heat"] = gr.Checkbox(False, label="Show where the rule fires", elem_id="heat")
                ui["seed"] = gr.Number(None, label="Open sample #", precision=0, minimum=0, elem_id="seed")
                ui["open"] = gr.Button("Open", size="sm")
        with gr.Column(scale=2):
            ui["painter"] = _painter()
            with gr.Row():
                ui["add_context"] = gr.Button("Add to context", elem_id="add-context")
                ui["set_copy"] = gr.Button("Set copy", elem_id="set-copy")
                ui["set_paste"] = gr.Button("Set paste", elem_id="set-paste")
            ui["clear"] = gr.Button("Clear selections", size="sm")
    with gr.Row():
        ui["tray"] = gr.Gallery([], label="Context (click to remove)", columns=6, height=150, format="png",
                                allow_preview=False, fit_columns=False, scale=3, elem_id="tray")
        ui["copy"] = gr.Image(None, label="Copy", height=150, interactive=False, scale=1, format="png", elem_id="copy")
        ui["paste"] = gr.Image(None, label="Paste", height=150, interactive=False, scale=1, format="png",
                               elem_id="paste")
    with gr.Row():
        ui["layer"] = gr.Dropdown(gen.layers(), value=layer, label="Layer", elem_id="layer")
        ui["rank"] = gr.Slider(1, 8, value=1, step=1, label="Rank", elem_id="rank")
        ui["smoothness"] = gr.Slider(0.05, 5.0, value=DEFAULT_SMOOTHNESS, step=0.05, label="Smoothness",
                                     info="the paper's 1/λ: higher changes the model less")
        ui["ridge"] = gr.Number(DEFAULT_RIDGE, label="Ridge", info="regularises C (relative)", minimum=0,
                                elem_id="ridge")
        ui["rewrite"] = gr.Button("Rewrite", variant="primary", elem_id="rewrite")
    _layout_results(studio, first, ui)
    return ui


def _painter() -> gr.ImageEditor:
    return gr.ImageEditor(None, label="Paint here", type="numpy", image_mode="RGBA", sources=(), transforms=(),
                          layers=False, canvas_size=(DISPLAY, DISPLAY), fixed_canvas=True, format="png",
                          brush=gr.Brush(colors=["#ff2020"], color_mode="fixed", default_size=10),
                          eraser=gr.Eraser(default_size=10), elem_id="painter")


def _layout_results(studio: Studio, first: Session, ui: UI) -> None:
    before, after = studio.files.convert(studio.before_after(first))
    with gr.Row():
        ui["strength"] = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Strength", elem_id="strength")
        ui["undo"] = gr.Button("Undo", elem_id="undo")
        ui["history"] = gr.Markdown("*No edits yet.*", elem_id="history")
    with gr.Row():
        ui["before"] = gr.Gallery(before, label="Before", columns=5, height="auto", format="png",
                                  allow_preview=False, elem_id="before")
        ui["after"] = gr.Gallery(after, label="After", columns=5, height="auto", format="png", allow_preview=False,
                                 elem_id="after")
    with gr.Row():
        with gr.Column():
            ui["download"] = gr.Button("Download edit (.zip)", elem_id="download")
            ui["file"] = gr.File(label="Edit folder", interactive=False, visible=False, elem_id="file")
        with gr.Column():
            ui["upload"] = gr.File(label="Apply an edit (.zip or edit.safetensors)", height=150,
                                   file_types=[".zip", ".safetensors"], elem_id="upload")
        with gr.Column():
            if studio.settings.show_login:
                gr.LoginButton()
            else:
                gr.Markdown("Publishing uses *your* Hugging Face login, available when this app runs as a Space. "
                            "Locally, download the zip and run `olam-edit push edit/ your-name/repo`.")
            ui["repo"] = gr.Textbox(label="Repository (name or user/name)", elem_id="repo")
            ui["private"] = gr.Checkbox(True, label="Private")
            ui["publish"] = gr.Button("Publish to the Hub", elem_id="publish")


def history_text(session: Session) -> str:
    if not session.history:
        return "*No edits yet.*"
    lines = [f"{i + 1}. {e.label}" for i, e in enumerate(session.history)]
    lines[-1] += "  ← current"
    return "**Edits** (Undo goes back one)\n\n" + "\n".join(lines)


def _painter_value(image: np.ndarray) -> dict[str, Any]:
    return {"background": image, "layers": [], "composite": image}


def _wire(studio: Studio, ui: UI) -> None:
    """Connect the components to the studio. Every handler returns its status line last."""
    model_events = {"concurrency_id": "model"}

    def handles(n_outputs: int) -> Callable:
        return guarded(n_outputs, studio.files)

    @handles(4)
    def open_sample(seed: Any, session: Session) -> tuple:
        if seed is None or int(seed) < 0:
            raise RequestError(explain("a sample number must be a whole number >= 0", got=seed))
        image = studio.sample(session, int(seed))
        session.seed = int(seed)
        return session, _painter_value(image), int(seed), message(f"Sample #{seed} is open: paint a region.")

    def select_sample(session: Session, evt: gr.SelectData) -> tuple:
        return open_sample(session.first_seed + int(evt.index), session)

    @handles(3)
    def more(session: Session, heat: bool, layer: str, rank: int, ridge: float) -> tuple:
        if session.count >= MAX_SAMPLES:
            raise RequestError(explain(f"the gallery shows at most {MAX_SAMPLES} samples",
                                       fix="Open any other sample by its number."))
        session.count = min(MAX_SAMPLES, session.count + PAGE)
        shown = studio.gallery(session, studio.heatmap(session, layer, rank, ridge) if heat else None)
        return session, shown, message(f"Showing samples #{session.first_seed}-#{session.seeds[-1]}.")

    @handles(3)
    def heatmap(heat: bool, session: Session, layer: str, rank: int, ridge: float,
                progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 - Gradio's idiom
        if not heat:
            return studio.gallery(session), False, message("Heatmap off.")
        progress(0.1, desc="scoring the keys of the samples")
        try:
            heat_map = studio.heatmap(session, layer, rank, ridge)
        except OlamEditError as e:
            return studio.gallery(session), False, message(str(e), ok=False)
        return studio.gallery(session, heat_map), True, message(
            "Red: where the rule's keys fire (solid above the 99.9th percentile of the model's own samples, "
            "faint from the 95th).")

    def _select(what: str) -> Callable:
        @handles(3)
        def handler(value: Any, session: Session) -> tuple:
            sel = selection(value, session.seed)
            if what == "context":
                session.context.append(sel)
                shown: Any = studio.tray(session)[0]
                text = f"{len(session.context)} context region(s)."
            else:
                setattr(session, what, sel)
                shown = studio.tray(session)[1 if what == "copy" else 2]
                text = f"The {what} region is set (sample #{sel.seed})."
            return session, shown, message(text)

        handler.__name__ = f"set_{what}"
        return handler

    @handles(3)
    def remove_context(session: Session, evt: gr.SelectData) -> tuple:
        del session.context[int(evt.index)]
        return session, studio.tray(session)[0], message(f"{len(session.context)} context region(s).")

    @handles(5)
    def clear(session: Session) -> tuple:
        session.context, session.copy, session.paste = [], None, None
        return session, [], None, None, message("Selections cleared.")

    @handles(5)
    def rewrite(session: Session, layer: str, rank: int, smoothness: float, ridge: float, strength: float,
                progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008 - Gradio's idiom
        session.strength = float(strength)
        edit = studio.rewrite(session, layer, int(rank), float(smoothness), ridge, lambda f, d: progress(f, desc=d))
        progress(0.8, desc="rendering before / after")
        before, after = studio.before_after(session)
        return session, before, after, history_text(session), message(f"Rewritten: {describe(edit)}.")

    @handles(3)
    def strength(session: Session, value: float) -> tuple:
        session.strength = float(value)
        return session, studio.before_after(session)[1], message(f"Strength {value:g}.")

    @handles(4)
    def undo(session: Session) -> tuple:
        if not session.history:
            raise RequestError(explain("there is nothing to undo"))
        gone = session.history.pop()
        after = studio.before_after(session)[1]
        return session, after, history_text(session), message(f"Undone: {gone.label}.")

    @handles(2)
    def download(session: Session) -> tuple:
        path = studio.download(session)
        return gr.update(value=str(path), visible=True), message(f"{path.name} is ready: click it to download.")

    @handles(4)
    def upload(path: str | None, session: Session) -> tuple:
        if not path:
            raise EditFileError(explain("no file was uploaded"))
        edit = studio.upload(session, path)
        after = studio.before_after(session)[1]
        return session, after, history_text(session), message(f"Applied the uploaded edit: {describe(edit)}.")

    @handles(1)
    def publish(session: Session, repo_id: str, private: bool, oauth_token: gr.OAuthToken | None) -> str:
        url = studio.publish(session, repo_id, private, oauth_token.token if oauth_token else None)
        return message(f"Published to {url}")

    @handles(14)
    def load_model(spec: str, session: Session, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008
        progress(0.0, desc=f"loading {spec}")
        studio.load_model(session, spec)
        gen = studio.generator(session)
        before, after = studio.before_after(session)
        layer = studio.default_layer(session)
        return (session, studio.gallery(session), gr.update(choices=gen.layers(), value=layer), before, after, [],
                None, None, history_text(session), None, session.model, 1.0, False, message(f"Loaded {gen.name}."))

    @handles(9)
    def example(name: str | None, session: Session) -> tuple:
        if not name:
            return (*[gr.skip()] * 8, message("Pick an example."))
        if session.model != "default":
            raise RequestError(explain("the examples are rules of the default model", got=session.model,
                                       fix="Load 'default' first."))
        request, settings = _example(name)
        session.context, session.copy, session.paste = list(request.context), request.copy, request.paste
        ctx, cp, ps = studio.tray(session)
        return (session, request.layer, request.rank, settings.get("smoothness", DEFAULT_SMOOTHNESS),
                settings.get("ridge", DEFAULT_RIDGE), ctx, cp, ps,
                message(f"Example {name!r}: {request.description or request.name}. Press Rewrite."))

    s = ui.state
    ui.gallery.select(select_sample, [s], [s, ui.painter, ui.seed, ui.status], api_visibility="private",
                      **model_events)
    ui.open.click(open_sample, [ui.seed, s], [s, ui.painter, ui.seed, ui.status], api_name="open", **model_events)
    rule = [ui.layer, ui.rank, ui.ridge]
    ui.more.click(more, [s, ui.heat, *rule], [s, ui.gallery, ui.status], api_name="more", **model_events)
    ui.heat.input(heatmap, [ui.heat, s, *rule], [ui.gallery, ui.heat, ui.status], api_name="heatmap", **model_events)
    for what, out in (("context", ui.tray), ("copy", ui.copy), ("paste", ui.paste)):
        name = "add_context" if what == "context" else f"set_{what}"
        ui[name].click(_select(what), [ui.painter, s], [s, out, ui.status], api_name=name, **model_events)
    ui.tray.select(remove_context, [s], [s, ui.tray, ui.status], api_visibility="private", **model_events)
    ui.clear.click(clear, [s], [s, ui.tray, ui.copy, ui.paste, ui.status], api_name="clear")
    ui.rewrite.click(rewrite, [s, ui.layer, ui.rank, ui.smoothness, ui.ridge, ui.strength],
                     [s, ui.before, ui.after, ui.history, ui.status], api_name="rewrite", **model_events)
    ui.strength.release(strength, [s, ui.strength], [s, ui.after, ui.status], api_name="strength", **model_events)
    ui.undo.click(undo, [s], [s, ui.after, ui.history, ui.status], api_name="undo", **model_events)
    ui.download.click(download, [s], [ui.file, ui.status], api_name="download")
    ui.upload.upload(upload, [ui.upload, s], [s, ui.after, ui.history, ui.status], api_name="upload", **model_events)
    ui.publish.click(publish, [s, ui.repo, ui.private], [ui.status], api_name="publish")
    ui.load.click(load_model, [ui.model, s],
                  [s, ui.gallery, ui.layer, ui.before, ui.after, ui.tray, ui.copy, ui.paste, ui.history, ui.painter,
                   ui.model, ui.strength, ui.heat, ui.status], api_name="load_model", **model_events)
    ui.examples.input(example, [ui.examples, s],
                      [s, ui.layer, ui.rank, ui.smoothness, ui.ridge, ui.tray, ui.copy, ui.paste, ui.status],
                      api_name="example", **model_events)


# ------------------------------------------------------------------------------------ launching
def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Queue (bounded) and launch ``demo`` on ``host``:``port``; ``kwargs`` go to ``Blocks.launch``."""
    settings: Settings = demo.studio.settings
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=2)
    max_file = int(4 * settings.max_upload_mb * 2**20)  # Gradio refuses larger files outright
    return demo.launch(server_name=host, server_port=port, max_file_size=max_file, ssr_mode=False, css=CSS,
                       show_error=False, **kwargs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description="The olam-edit Space: rewrite a generative model in the browser.")
    p.add_argument("--model", default=env.get("OLAM_EDIT_MODEL", "default"),
                   help="generator: 'default' (embedded face DCGAN), a local path or a Hub id")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 serves other machines)")
    p.add_argument("--samples", type=int, default=None, help="samples for the key statistics (default 1000)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """``python app.py``: what a Space runs (it sets GRADIO_SERVER_NAME=0.0.0.0 itself)."""
    logging.basicConfig(level=logging.INFO)
    args = parse_args(argv)
    demo = build_app(model=args.model, stats_samples=args.samples)
    launch(demo, args.host, args.port)


if __name__ == "__main__":
    main()
