"""The olam-edit command line, run as a user would (a subprocess of the installed console script)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from cli_exe import EXE

import olam_edit as oe
from olam_edit.rules.spatial.request import EditRequest, Selection


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    assert EXE, "the olam-edit console script is not installed (pip install -e .)"
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for name in ("stats", "bench", "example", "rewrite", "apply"):
        assert name in out.stdout


def test_stats_reports_and_caches(tmp_path) -> None:
    args = ("stats", "--layer", "main.6", "--samples", "50", "--cache-dir", str(tmp_path),
            "--out", str(tmp_path / "c.st"))
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "3200 keys of dimension 256" in first.stdout  # 50 samples x 8 x 8 keys
    assert oe.SecondMoment.load(tmp_path / "c.st").count == 3200
    again = run(*args)
    assert "collecting" not in again.stderr  # served from the cache, no progress bar


def test_stats_list_shows_the_layers_its_help_names() -> None:
    helped = run("stats", "--help")
    assert helped.returncode == 0 and "--list" in helped.stdout
    listed = run("stats", "--list")
    assert listed.returncode == 0, listed.stderr
    from olam_edit.adapters import load_default

    assert listed.stdout.split() == oe.list_layers(load_default().model)
    assert "main.6" in listed.stdout.split()
    neither = run("stats")
    assert neither.returncode == 2 and "--layer" in neither.stderr and "Traceback" not in neither.stderr


def test_wrong_layer_is_a_clear_error() -> None:
    out = run("stats", "--layer", "main.66", "--samples", "10")
    assert out.returncode == 2
    assert "main.6" in out.stderr and "Traceback" not in out.stderr


def test_bench_says_what_it_measures_as_it_goes_and_writes_its_record(tmp_path) -> None:
    """One quick run (each starts two torchrun launches): progress lines, the JSON last line, the record."""
    out = run("bench", "--quick", "--json", "--json-out", str(tmp_path / "bench.json"))
    assert out.returncode == 0, out.stderr
    starts = [line for line in out.stderr.splitlines() if line.startswith("bench [") and line.endswith("...")]
    ends = [line for line in out.stderr.splitlines() if line.startswith("bench [") and " done in " in line]
    assert len(starts) == len(ends) == 8 and starts[0].startswith("bench [1/8]")
    targeted = {"stats_overhead", "accumulate_ratio", "solve_time_ratio", "solve_objective_ratio", "size_ratio",
                "many_rules_time_ratio", "text_solve_ratio", "text_file_ratio"}
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == targeted | {"stats_2proc_speedup", "many_rules_peak_mb"}
    assert all(v > 0 for v in last.values())
    table = out.stdout.split("{")[0]
    assert "stats_2proc_speedup" in table and "many_rules_peak_mb" in table  # in the table too, without a target
    record = json.loads((tmp_path / "bench.json").read_text())
    assert set(record["targets"]) == targeted and set(record["ratios"]) == set(last)
    assert record["ratios"] == last
    assert record["_meta"]["command"] == f"olam-edit bench --quick --json --json-out {tmp_path / 'bench.json'}"
    assert record["details"]["total_s"] > 0
    assert record["details"]["stats_1proc_s"] / record["details"]["stats_2proc_s"] == pytest.approx(
        last["stats_2proc_speedup"])
    assert record["details"]["many_rules_joint_s"] / record["details"]["many_rules_one_by_one_s"] == pytest.approx(
        last["many_rules_time_ratio"])
    assert record["details"]["text_file_bytes"] / record["details"]["text_file_dense_bytes"] == pytest.approx(
        last["text_file_ratio"])
    assert record["details"]["text_solve_uce_gap"] < 1e-3  # both sides solved the same rules
    both = run("bench", "--quick", "--full")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_bench_default_times_part_of_the_reference_and_scales_it() -> None:
    """By default 200 of the reference's 2001 steps are timed and scaled; --full times all of them."""
    from olam_edit.eval import bench

    problem, D, _ = bench._solve_problem(channels=8)
    part = bench.time_reference(problem, D, steps=40, timed_steps=10)
    assert part["reference_timed_steps"] == 10
    assert part["reference_s"] == pytest.approx(part["reference_timed_s"] * 4)
    whole = bench.time_reference(problem, D, steps=12, timed_steps=None)
    assert whole["reference_timed_steps"] == 12 and whole["reference_s"] == whole["reference_timed_s"]
    rows = {what.split(":")[0]: fn for what, fn in bench.measurements()}
    assert list(rows) == ["statistics overhead", "accumulation", "solve", "size", "distributed statistics",
                          "many text rules", "text rule solve", "text rule file"]
    assert bench.TIMED_REFERENCE_STEPS == 200 and bench.REFERENCE_STEPS == 2001
    table = bench.format_table({**dict.fromkeys(bench.TARGETS, 0.5), **part, "reference_timed_steps": 200})
    assert "200 of the reference's 2001 Adam steps timed, scaled to 2001" in table


@pytest.mark.parametrize("bad", ["0", "x", "100,-5"])
def test_evaluate_refuses_bad_checkpoints(bad) -> None:
    out = run("evaluate", "add_sunglasses", "--checkpoints", bad)
    assert out.returncode == 2 and "step list" in out.stderr and "Traceback" not in out.stderr


def _face_request(path) -> None:
    eyes = np.zeros((64, 64))
    eyes[18:30, 10:54] = 1
    EditRequest(layer="main.6", copy=Selection(4, eyes), paste=Selection(1, eyes),
                context=[Selection(7, eyes)], name="t").save(path)


def test_rewrite_then_apply(tmp_path) -> None:
    _face_request(tmp_path / "r.json")
    out = run("rewrite", str(tmp_path / "r.json"), "--out", str(tmp_path / "edit"), "--samples", "50")
    assert out.returncode == 0, out.stderr
    assert "||dW||/||W||" in out.stdout
    edit = oe.Edit.load(tmp_path / "edit")
    assert edit.layers == ["main.6"] and edit.manifest["base_model"]["id"] == "olam-edit/face-dcgan64"
    out = run("apply", str(tmp_path / "edit"), "--seeds", "0-3", "--grid", str(tmp_path / "g.png"), "--scale", "0.5")
    assert out.returncode == 0, out.stderr
    from PIL import Image

    with Image.open(tmp_path / "g.png") as im:
        assert im.size[0] > 4 * 128 and im.size[1] >= 2 * 128


BAD = [["apply", "/nonexistent", "--grid", "x.png"], ["rewrite", "/nonexistent.json", "--out", "o"]]


@pytest.mark.parametrize("bad", BAD)
def test_bad_paths_are_clear_errors(tmp_path, bad) -> None:
    out = run(*bad, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.png").exists()


def test_example_writes_an_edit_folder_and_a_grid(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    out = run("example", "--out", str(tmp_path / "out"), "--seeds", "1000-1003", "--force")  # non-empty: --force
    assert out.returncode == 0, out.stderr
    written = {p.name: p.read_bytes() for p in (tmp_path / "out" / "edit").iterdir()}
    again = run("example", "--out", str(tmp_path / "out"), "--seeds", "1000-1003")  # without --force: refused
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "edit").iterdir()} == written
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    edit = oe.Edit.load(tmp_path / "out" / "edit")
    assert edit.manifest["recipe"]["name"] == "add_sunglasses"
    assert 0 < edit.manifest["metrics"]["relative_norm"] < 1
    from PIL import Image

    with Image.open(tmp_path / "out" / "before_after.png") as im:
        assert im.size[1] >= 2 * 128  # two rows (before, after) of 64 px faces shown at 2x


def test_an_example_is_written_at_the_strength_it_is_curated_at(tmp_path) -> None:
    from olam_edit.rules.spatial.examples import load_example

    _, settings = load_example("close_mouth_pairs")
    out = run("example", "close_mouth_pairs", "--out", str(tmp_path / "out"), "--seeds", "1000-1003")
    assert out.returncode == 0, out.stderr
    assert f"strength {settings['strength']:g}" in out.stdout
    edit = oe.Edit.load(tmp_path / "out" / "edit")
    assert edit.manifest["rule"].endswith(f"(strength {settings['strength']:g})")
    first_strength = settings["then"]["first_strength"]  # curated at two layers: main.6, then main.3
    assert [d.scale for d in edit.deltas.values()] == [first_strength * settings["strength"], settings["strength"]]
