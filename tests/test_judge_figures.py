"""The judge's README figures: they reproduce on their first faces, their pictures show 16 faces of
128 px, and the command line writes what the README shows."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from cli_exe import EXE
from PIL import Image
from test_figures import ROOT

from olam_edit.eval.figures import load_figure
from olam_edit.eval.judge.picture import FACE_PX, LABEL_W
from olam_edit.eval.judge.report import judge
from olam_edit.rules.spatial.examples import load_example
from olam_edit.rules.spatial.stages import solve_example

JUDGED = ("add_sunglasses", "close_mouth", "close_mouth_pairs", "add_beard", "add_moustache")


@pytest.fixture(scope="module")
def generator():
    from olam_edit.adapters import load_generator

    return load_generator("default")


def test_the_figure_reproduces_face_by_face_on_its_first_seeds(generator) -> None:
    name = "close_mouth"
    fig = load_figure(f"judge_{name}")
    seeds = list(range(fig["seeds"][0], fig["seeds"][0] + 24))
    request, settings = load_example(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the figure was made: the same pixels, bit for bit
    try:
        edit = solve_example(generator, request, settings, progress=False)  # as the figure's command solves it
        rep = judge(generator.images(seeds), {"rewrite": generator.images(seeds, edit)}, settings["effect"], seeds,
                    painted=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    stored = fig["per_face"]
    where = {p: j for j, p in enumerate(stored["judged"])}
    assert rep.judged and all(p in where for p in rep.judged)  # the same faces are found
    for k, p in enumerate(rep.judged):
        for field in ("before", "after", "identity", "drift"):
            assert rep.per_face["rewrite"][field][k] == pytest.approx(stored["rewrite"][field][where[p]], rel=1e-4,
                                                                      abs=1e-6), (p, field)


@pytest.mark.parametrize("name", JUDGED)
def test_the_picture_shows_16_faces_large_enough_to_judge(name: str) -> None:
    fig = load_figure(f"judge_{name}")
    with Image.open(ROOT / "olam_edit" / "eval" / "figures" / f"judge_{name}.png") as img:
        w, h = img.size
    assert FACE_PX >= 128 and w == LABEL_W + 8 * FACE_PX  # 8 faces a row
    assert h == 2 * (3 * FACE_PX + 18)  # two blocks of before / rewrite / painted: 16 faces
    assert sum(fig["per_face"]["eligible"]) >= 16
    assert "--picture olam_edit/eval/figures/judge_" in fig["_meta"]["command"]


def test_evaluate_judge_writes_its_rows_and_picture(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ev"
    run = subprocess.run([EXE, "evaluate", "add_sunglasses", "--judge", "--no-baselines", "--seeds", "1000-1019",
                          "--strengths", "0.5", "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    figure = json.loads((out / "judge.json").read_text())
    assert set(figure["rows"]) == {"rewrite", "rewrite @0.5", "painted"} and figure["effect"] == "glasses"
    rows = figure["rows"]  # half the change moves the faces' descriptors less
    assert rows["rewrite @0.5"]["identity"] < rows["rewrite"]["identity"]
    assert "rank-1" in run.stdout and "painted" in run.stdout
    with Image.open(out / "judge.png") as img:
        assert img.size[0] == LABEL_W + 8 * FACE_PX


@pytest.mark.parametrize("bad", ["0", "1,x", "3", "nan", ""])
def test_a_bad_strength_list_is_one_clear_line(tmp_path, bad: str) -> None:
    run = subprocess.run([EXE, "evaluate", "add_sunglasses", "--judge", "--strengths", bad, "--out",
                          str(tmp_path / "ev")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "strength" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "ev").exists()


def test_judge_without_an_effect_says_which_to_pass(tmp_path) -> None:
    request, _ = load_example("add_sunglasses")
    path = tmp_path / "rule.json"
    request.save(path)
    run = subprocess.run([EXE, "evaluate", str(path), "--judge", "--no-baselines", "--seeds", "1000-1003",
                          "--out", str(tmp_path / "ev")], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "--effect" in run.stderr and "Traceback" not in run.stderr


def test_the_readme_judge_example_runs(capsys) -> None:
    from readme_code import python_block_after

    exec(compile(python_block_after("<!-- judge-example -->"), "README judge example", "exec"), {})
    out = capsys.readouterr().out
    assert "32 copy / paste pairs" in out and "rewrite" in out and "painted" in out and "rank-1" in out
    assert "main.3: rank 8" in out  # solved as curated, at both layers
