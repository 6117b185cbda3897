"""``olam-edit bench --space`` at tiny settings: the record's keys, every timing, and ratios that are the
quotients of the measured p50s (the numbers themselves are machine-dependent and not checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from olam_edit.cli import main
from olam_edit.eval.bench_space import ACTIONS, percentile, summarize


def test_bench_space_record(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("OLAM_EDIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "space.json"
    args = ["bench", "--space", "--quick", "--clients", "2", "--json", "--json-out", str(out)]
    monkeypatch.setattr(sys, "argv", ["olam-edit", *args])  # the command line the record says it ran
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert set(record) == {"ratios", "targets", "details", "timings", "_meta"}
    assert record["_meta"]["clients"] == [1, 2] and record["_meta"]["rounds"] == 1
    assert record["_meta"]["command"] == "olam-edit " + " ".join(args)
    details, ratios = record["details"], record["ratios"]
    for action in ACTIONS:
        for n in (1, 2):
            times = record["timings"][str(n)][action]
            assert len(times) == n and all(t > 0 for t in times)  # one timed press per visitor
            assert details[f"{action}_p50_{n}"] == pytest.approx(float(np.median(times)))
            assert details[f"{action}_p95_{n}"] == pytest.approx(float(np.percentile(times, 95)))
        for q in ("p50", "p95"):
            quotient = details[f"{action}_{q}_2"] / details[f"{action}_{q}_1"]
            assert ratios[f"space_{action}_{q}_ratio"] == pytest.approx(quotient)
        assert f"space_{action}_p50_ratio" in printed and record["targets"][f"space_{action}_p50_ratio"] == 2.0
    assert details["cores_busy_1"] > 0 and details["cpu_per_press_2"] > 0
    assert json.loads(printed.strip().splitlines()[-1]) == ratios  # --json: the ratios, last


def test_the_summary_is_percentiles_and_their_quotients() -> None:
    runs = {1: {"rewrite": [1.0, 3.0], "strength": [0.5]}, 8: {"rewrite": [2.0, 4.0, 9.0], "strength": [1.0, 3.0]}}
    got = summarize(runs)
    assert got["rewrite_p50_1"] == 2.0 and got["rewrite_p50_8"] == 4.0 and got["space_rewrite_p50_ratio"] == 2.0
    assert got["strength_p50_8"] == 2.0 and got["space_strength_p50_ratio"] == 4.0
    assert got["rewrite_p95_8"] == pytest.approx(percentile([2.0, 4.0, 9.0], 95)) == pytest.approx(8.5)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_bench_space_needs_two_clients(capsys) -> None:
    assert main(["bench", "--space", "--clients", "1"]) == 2
    assert "--clients must be at least 2" in capsys.readouterr().err
