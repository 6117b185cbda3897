"""Author a curated face rule from the judge's readings of training seeds (never held-out ones).

A :class:`Curation` says which faces show the rule's result (the copy examples: closed mouths for
``close_mouth_pairs``) and which do not (the paste examples and the context: open mouths), by a per-face
state value and two thresholds, and where the rule's part sits (landmarks). :func:`curate` reads
the faces of :data:`TRAINING_SEEDS`, pairs the clearest copy examples with the clearest paste
examples, paints boxes and context masks from the landmarks, and returns the request. The shipped
examples were written by ``python -m olam_edit.eval.judge.curate NAME --out ...``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from olam_edit.eval.judge import measures as M
from olam_edit.eval.judge.effects import OPEN_MOUTH
from olam_edit.eval.judge.read import Faces, read_faces
from olam_edit.rules.spatial.request import EditRequest, Selection

TRAINING_SEEDS = range(0, 1000)  # the examples are painted on these; evaluations use 1000 and above
MODEL_PX = 64  # the embedded model's image size


def _mouth_opening(f: Faces) -> np.ndarray:
    return M.mouth_opening(f.landmarks)


def _skin(f: Faces) -> np.ndarray:
    """Mean luma of the nose's polygon: each face's own skin brightness."""
    return M.masked_mean(M.luminance(f.pixels), M.polygon_masks(f.landmarks, (27, 31, 33, 35), f.pixels.shape[1]))


def _lens_darkness(f: Faces) -> np.ndarray:
    return M.lens_brightness(f.pixels, f.landmarks) / np.maximum(_skin(f), 1e-3)


def _lip_band_darkness(f: Faces) -> np.ndarray:
    band = M.masked_mean(M.luminance(f.pixels), M.upper_lip_band(f.landmarks, f.pixels.shape[1]))
    return band / np.maximum(_skin(f), 1e-3)


def _chin_darkness(f: Faces) -> np.ndarray:
    chin = M.masked_mean(M.luminance(f.pixels), M.chin_band(f.landmarks, f.pixels.shape[1]))
    return chin / np.maximum(_skin(f), 1e-3)


@dataclass(frozen=True)
class Curation:
    """How to author one rule (see the module docstring). ``state`` is a per-face value; copies are
    the faces with ``state`` on the ``done`` side of ``done_at`` (the rule's result), pastes and
    context the faces beyond ``todo_at`` on the other side. ``box`` is the copy / paste box in
    model pixels (height, width) around the mean of the ``anchor`` landmarks; ``region`` the
    landmarks whose polygon (grown by ``grow``) is each context mask."""

    name: str
    description: str
    effect: str
    state: Callable[[Faces], np.ndarray]
    done_below: bool
    done_at: float
    todo_at: float
    anchor: tuple[int, ...]
    box: tuple[int, int]
    region: tuple[int, ...]
    grow: float = 1.2
    pairs: int = 32
    context: int = 80
    rank: int = 6
    layer: str = "main.6"
    smoothness: float = 0.3
    ridge: float = 1.0


EYES = M.RIGHT_EYE + M.LEFT_EYE
CURATIONS: dict[str, Curation] = {
    # pastes down to the judge's open threshold: slightly open mouths are the ones a rule fitted on wide ones misses
    "close_mouth_pairs": Curation("close_mouth_pairs", "closes open mouths (32 copy / paste pairs)", "mouth_close",
                                  _mouth_opening, True, 0.03, OPEN_MOUTH, M.OUTER_LIP, (12, 30), M.OUTER_LIP, rank=8),
    "open_mouth": Curation("open_mouth", "opens closed mouths", "mouth_open", _mouth_opening, False, 0.2, 0.03,
                           M.OUTER_LIP, (12, 30), M.OUTER_LIP),
    "add_sunglasses": Curation("add_sunglasses", "adds dark sunglasses over the eyes", "glasses", _lens_darkness,
                               True, 0.45, 0.8, EYES, (10, 44), (17, 26, 45, 36), grow=1.1),
    "add_moustache": Curation("add_moustache", "adds a dark moustache above the upper lip", "moustache",
                              _lip_band_darkness, True, 0.55, 0.85, (33, 51), (8, 26), (31, 35, 54, 48), grow=1.3),
    "add_beard": Curation("add_beard", "adds a dark beard on the chin", "beard", _chin_darkness, True, 0.45, 0.85,
                          (57, 8), (16, 30), M.CHIN_BAND, grow=1.1),
}


def _spread(items: list[int], n: int) -> list[int]:
    """``n`` of ``items`` evenly spaced over the list (all of them when there are fewer), in order."""
    if len(items) <= n:
        return items
    return [items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)] if n > 1 else items[:1]


def box_mask(center: np.ndarray, box: tuple[int, int], size: int = MODEL_PX) -> np.ndarray:
    """A 0/1 mask ``[size, size]`` of a ``box`` (height, width) centred on ``center`` (x, y)."""
    m = np.zeros((size, size))
    y0, x0 = round(center[1] - box[0] / 2), round(center[0] - box[1] / 2)
    m[max(0, y0) : max(0, y0 + box[0]), max(0, x0) : max(0, x0 + box[1])] = 1
    return m


def polygon_mask(points: np.ndarray, grow: float, size: int = MODEL_PX) -> np.ndarray:
    """A 0/1 mask ``[size, size]`` of the polygon through ``points`` (model pixels), grown about its centre."""
    c = points.mean(0)
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in c + grow * (points - c)], fill=255)
    return (np.asarray(img) > 0).astype(np.float64)


def curate(name: str, faces: Faces | None = None, seeds: Sequence[int] = TRAINING_SEEDS,
           model: str = "olam-edit/face-dcgan64") -> EditRequest:
    """The request of curation ``name``, from the judge's readings of ``seeds`` (read here unless given)."""
    from olam_edit.adapters import load_generator

    cur = CURATIONS[name]
    seeds = list(seeds)
    f = faces if faces is not None else read_faces(load_generator("default").images(seeds), identity=False)
    value = cur.state(f)  # [B]
    ok = f.detected & np.isfinite(value)
    done = ok & ((value <= cur.done_at) if cur.done_below else (value >= cur.done_at))
    todo = ok & ((value >= cur.todo_at) if cur.done_below else (value <= cur.todo_at))
    order = np.argsort(value if cur.done_below else -value)  # clearest results first
    copies = _spread([i for i in order if done[i]], cur.pairs)
    pastes = _spread([i for i in order[::-1] if todo[i]], max(cur.pairs, cur.context))
    if not copies or not pastes:
        raise ValueError(f"{name}: no faces to copy from ({len(copies)}) or paste onto ({len(pastes)})")
    scale = MODEL_PX / f.pixels.shape[1]
    lm = f.landmarks * scale  # [B, 68, 2] in model pixels
    anchor = lambda i: lm[i][list(cur.anchor)].mean(0)  # noqa: E731
    examples = [(Selection(seeds[c], box_mask(anchor(c), cur.box)), Selection(seeds[p], box_mask(anchor(p), cur.box)))
                for c, p in zip([copies[k % len(copies)] for k in range(cur.pairs)], pastes[: cur.pairs], strict=False)]
    context = [Selection(seeds[i], polygon_mask(lm[i][list(cur.region)], cur.grow)) for i in pastes[: cur.context]]
    (c0, p0), rest = examples[0], examples[1:]
    return EditRequest(layer=cur.layer, copy=c0, paste=p0, context=context, rank=cur.rank, model=model,
                       name=cur.name, description=cur.description, pairs=rest)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a curated face rule's request from the training seeds.")
    p.add_argument("name", choices=sorted(CURATIONS))
    p.add_argument("--out", required=True, help="the request JSON to write")
    args = p.parse_args(argv)
    request = curate(args.name)
    request.save(args.out)
    cur = CURATIONS[args.name]
    print(f"{args.name}: {len(request.examples)} copy / paste examples, {len(request.context)} context masks, "
          f"rank {cur.rank} at {cur.layer}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
