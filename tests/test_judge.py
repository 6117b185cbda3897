"""The judge's measures on hand-made cases: unchanged faces, a mouth painted shut, painted lenses,
swapped identities, and the pure measures on landmarks built by hand."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from olam_edit.errors import RequestError
from olam_edit.eval.judge import measures as M
from olam_edit.eval.judge.effects import OPEN_MOUTH, effect
from olam_edit.eval.judge.models import JudgeUnavailableError, load_models, model_folder
from olam_edit.eval.judge.painted import paint
from olam_edit.eval.judge.read import from_pixels, read_faces
from olam_edit.eval.judge.report import judge

SEEDS = list(range(100, 160))  # training-side seeds, away from the held-out ones


@pytest.fixture(scope="module")
def faces():
    from olam_edit.adapters import load_generator

    images = load_generator("default").images(SEEDS)  # [60, 3, 64, 64]
    return images, read_faces(images)


def test_unchanged_faces_read_as_the_same_people_in_the_same_places(faces):
    images, base = faces
    rep = judge(images[:20], {"same": images[:20].clone()}, "glasses", SEEDS[:20], painted=False, progress=False)
    row = rep.rows["same"]
    assert rep.faces >= 12  # most of these faces are detected at all
    assert row.identity == 0.0 and row.rank1 == 1.0 and row.drift == 0.0 and row.detected == 1.0
    assert row.effect == 0.0  # nothing darkened


def test_other_faces_are_not_taken_for_the_same_people(faces):
    images, base = faces
    idx = np.flatnonzero(base.detected)[:20]
    swapped = np.roll(base.descriptors[idx], 1, axis=0)
    assert M.rank1_reidentified(base.descriptors[idx], swapped).mean() <= 0.1
    assert M.identity_distance(base.descriptors[idx], swapped).mean() > 0.4  # dlib: > 0.6 is mostly others


def test_a_mouth_painted_shut_reads_as_closed(faces):
    images, base = faces
    opening = M.mouth_opening(base.landmarks)
    widest = [i for i in np.argsort(-opening) if base.detected[i]][:5]
    assert opening[widest].min() >= OPEN_MOUTH  # these mouths are open to begin with
    shut = from_pixels(paint("mouth_close", base.pixels[widest], base.landmarks[widest]), 64)
    after = read_faces(shut, base.boxes[widest], identity=False)
    assert (M.mouth_opening(after.landmarks) <= 0.5 * opening[widest]).all()
    assert np.median(M.mouth_opening(after.landmarks)) < OPEN_MOUTH  # most read as shut outright


def _painted(base, name: str):
    """The first 12 detected faces painted for effect ``name``: their positions, the faces read after,
    and the share of them where the effect took."""
    idx = np.flatnonzero(base.detected)[:12]
    after = read_faces(from_pixels(paint(name, base.pixels[idx], base.landmarks[idx]), 64), base.boxes[idx],
                       identity=False)
    fx = effect(name)
    return idx, after, float(fx.took(fx.measure(base, base)[idx], fx.measure(after, _subset(base, idx))).mean())


def test_painted_lenses_are_dark_and_leave_the_rest_of_the_face(faces):
    images, base = faces
    idx, after, took = _painted(base, "glasses")
    assert took >= 0.9
    others = tuple(i for i in range(68) if i not in M.MOUTH)
    mouth = M.landmark_drift(base.landmarks[idx], after.landmarks, exclude=others)  # the mouth's points only
    assert float(np.median(mouth)) < 0.05  # the mouth stays where it was


def test_a_painted_beard_darkens_the_chin_and_leaves_the_eyes(faces):
    images, base = faces
    idx, after, took = _painted(base, "beard")
    assert took >= 0.9
    chin = M.chin_band(base.landmarks[idx], base.pixels.shape[1])  # [n, S, S]
    assert chin.any(axis=(1, 2)).all() and not (chin & M.lens_masks(base.landmarks[idx], chin.shape[1])).any()
    others = tuple(i for i in range(68) if i not in M.RIGHT_EYE + M.LEFT_EYE)
    eyes = M.landmark_drift(base.landmarks[idx], after.landmarks, exclude=others)  # the eyes' points only
    assert float(np.median(eyes)) < 0.05  # the eyes stay where they were


def _subset(faces, idx):
    from olam_edit.eval.judge.read import Faces

    return Faces(faces.detected[idx], faces.boxes[idx], faces.landmarks[idx], faces.descriptors[idx],
                 faces.pixels[idx])


def _face(gap: float, eye_dist: float = 40.0) -> np.ndarray:
    """Landmarks [68, 2] whose eyes' centres are ``eye_dist`` apart and inner lips ``gap`` apart."""
    lm = np.zeros((68, 2))
    lm[36:42] = [[-eye_dist / 2 + dx, 0] for dx in (-5, -2, 2, 5, 2, -2)]
    lm[42:48] = [[eye_dist / 2 + dx, 0] for dx in (-5, -2, 2, 5, 2, -2)]
    lm[36:48, 1] += [0, -2, -2, 0, 2, 2] * 2
    lm[61:64] = [[-5, 50], [0, 50], [5, 50]]
    lm[65:68] = [[5, 50 + gap], [0, 50 + gap], [-5, 50 + gap]]
    return lm


def test_the_measures_on_landmarks_drawn_by_hand():
    lm = np.stack([_face(8.0), _face(0.0), _face(8.0, eye_dist=80.0)])
    assert M.interocular(lm) == pytest.approx([40.0, 40.0, 80.0])
    assert M.mouth_opening(lm) == pytest.approx([0.2, 0.0, 0.1])  # the gap over the eyes' distance
    assert M.eye_opening(lm) == pytest.approx([0.4] * 3)  # lids 4 apart over an eye 10 wide
    moved = lm.copy()
    moved[:, 48:68] += 3.0  # only the mouth moves
    assert M.landmark_drift(lm, moved, M.MOUTH) == pytest.approx([0, 0, 0])
    assert (M.landmark_drift(lm, moved) > 0).all()


def test_rank1_needs_the_nearest_face_to_be_the_same_one():
    rng = np.random.default_rng(0)
    before = rng.normal(size=(6, 128))
    after = before + 0.01 * rng.normal(size=(6, 128))
    after[2] = before[4]  # face 2 became face 4
    assert M.rank1_reidentified(before, after).tolist() == [True, True, False, True, True, True]


def test_an_unknown_effect_names_the_known_ones():
    with pytest.raises(RequestError, match="mouth_close"):
        effect("bigger_nose")


def test_without_the_extra_the_judge_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(JudgeUnavailableError, match=r"olam-edit\[judge\]"):
        model_folder()


def test_the_models_load_from_the_installed_wheel_only():
    m = load_models()
    assert m is load_models()  # loaded once per process
    assert (model_folder() / "shape_predictor_68_face_landmarks.dat").stat().st_size > 10**6
    blank = read_faces(torch.zeros(1, 3, 64, 64), identity=False)
    assert not blank.detected[0]  # no face in a grey square


def test_curation_copies_closed_mouths_onto_open_ones_from_training_seeds_only(faces):
    from olam_edit.eval.judge.curate import CURATIONS, TRAINING_SEEDS, curate

    images, base = faces
    request = curate("close_mouth_pairs", base, SEEDS)
    opening = dict(zip(SEEDS, M.mouth_opening(base.landmarks), strict=True))
    cur = CURATIONS["close_mouth_pairs"]
    assert len(request.examples) >= 2 and request.rank == cur.rank and request.context
    for copy, paste in request.examples:
        assert opening[copy.seed] <= cur.done_at and opening[paste.seed] >= cur.todo_at
        assert copy.mask.sum() == paste.mask.sum() > 0  # boxes of one size, on each face's mouth
        assert copy.mask[32:].sum() == copy.mask.sum()  # in the lower half of the face
    assert max(request.seeds) < 1000 and max(TRAINING_SEEDS) < 1000  # never the held-out seeds


def test_judging_images_without_faces_is_one_clear_error():
    blank = torch.zeros(3, 3, 64, 64)  # grey squares
    with pytest.raises(RequestError, match="no face") as err:
        judge(blank, {"rewrite": blank}, "glasses", [1, 2, 3], progress=False)
    assert "\n" not in str(err.value)
