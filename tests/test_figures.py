"""The README's figures are what the shipped JSON says, and a reduced re-run of each command agrees with it.

The evaluation and sweep figures are JSON files in ``olam_edit/eval/figures`` written by the command
printed beside each table in the README (recorded in the file as ``_meta.command``). They keep every
seed's in-region and collateral change, so the reduced re-runs here (40 of the 200 held-out seeds,
100 instead of 2001 baseline steps, rank 1 only in the sweep) are checked twice:

* seed by seed against the same seeds of the shipped run (the figure's own step-100 checkpoint for
  the baselines). The code is deterministic: on one machine it reproduces these values bit for bit,
  with one thread or two. Another CPU may pick other float32 kernels, which moves a per-seed mean in
  the sixth digit for the closed-form rewrite and somewhat more after 100 Adam steps; the tolerances
  (1e-3 relative for the rewrite, 1e-2 for the baselines) leave orders of magnitude for that, while
  any real drift (another seed range, another smoothness, another model or statistic) changes
  per-seed values by far more (a smoothness of 1 instead of 0.3 moves them by ~10%);
* as aggregates against the whole shipped run, within four times the reduced run's sampling error:
  40 seeds drawn from the 200 differ from the 200 by ``se_200 * sqrt(200 / 40 - 1)`` (one standard
  deviation; ``se_200`` is the figure's stated standard error), so a user re-running on fewer seeds
  knows what spread to expect. This is the looser check; the seed-by-seed one catches drifts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from cli_exe import EXE

from olam_edit.errors import RequestError
from olam_edit.eval.evaluate import DEFAULT_HELDOUT, DEFAULT_STEPS, GENERALITY_THRESHOLD
from olam_edit.eval.figures import (
    evaluate_table,
    fill_readme,
    invoked_command,
    load_figure,
    names,
    readme_block,
    sweep_table,
)
from olam_edit.rules.spatial.examples import load_example

ROOT = Path(__file__).resolve().parents[1]
REDUCED_SEEDS = "10000-10039"  # the first 40 of the figures' 200 held-out seeds
N_REDUCED, N_FULL = 40, 200
REL_TOL = {"rewrite": 1e-3, "baseline": 1e-2}  # seed by seed (see the module docstring)


def _section(readme: str, title: str) -> str:
    start = readme.index(title)
    end = readme.find("\n## ", start + len(title))
    return readme[start : end if end > 0 else None]


def _run(*args: str) -> subprocess.CompletedProcess:
    """The CLI on one thread: the numbers do not depend on the thread count (one or two give the same
    values, bit for bit), and the baselines' small steps run several times faster on shared CI cores."""
    assert EXE, "the olam-edit console script is not installed (pip install -e .)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=900, env=env)


# -- the README is the JSON ----------------------------------------------------------------------
def test_readme_tables_are_the_shipped_json() -> None:
    readme = (ROOT / "README.md").read_text()
    assert set(names()) >= {"evaluate_add_sunglasses", "sweep_add_sunglasses", "bench"}
    for name in names():
        assert f"<!-- figure: {name} -->" in readme, f"the README does not show figure {name}"
        assert readme_block(name) in readme, f"the README's {name} table is not what its JSON says"
    assert fill_readme(readme) == readme


@pytest.mark.parametrize(("name", "title"), [("evaluate_add_sunglasses", "## Measure an edit, choose a layer"),
                                             ("sweep_add_sunglasses", "## Measure an edit, choose a layer"),
                                             ("bench", "### Performance")])
def test_each_table_has_the_command_that_wrote_it_beside_it(name: str, title: str) -> None:
    section = _section((ROOT / "README.md").read_text(), title)
    command = load_figure(name)["_meta"]["command"]
    assert command and command.startswith("olam-edit ") and f"--json-out olam_edit/eval/figures/{name}.json" in command
    assert command in section and f"<!-- figure: {name} -->" in section


def test_every_number_in_the_evaluation_section_is_in_a_figure() -> None:
    """Numbers with two or more decimals in the section's prose are the figures' (rounded as shown) or
    their recorded settings (the generality threshold)."""
    section = _section((ROOT / "README.md").read_text(), "## Measure an edit, choose a layer")
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    shown = {m for name in ("evaluate_add_sunglasses", "sweep_add_sunglasses") for m in
             re.findall(r"\d+\.\d\d+", readme_block(name))}
    shown.add(str(load_figure("evaluate_add_sunglasses")["_meta"]["threshold"]))
    stray = [x for x in re.findall(r"(?<![\w.])\d+\.\d\d+", prose) if x not in shown]
    assert not stray, f"numbers in the prose that no figure shows: {stray}"


def test_the_figures_were_made_with_the_commands_defaults() -> None:
    """What made 4.64 read as 4.36: the figure came from other seeds than the command shown uses.
    The shipped figure's settings are the command's defaults, so the command shown reproduces it."""
    fig = load_figure("evaluate_add_sunglasses")
    request, settings = load_example("add_sunglasses")
    expected = [s for s in DEFAULT_HELDOUT if s not in set(request.seeds)]
    assert fig["_per_seed"]["seeds"] == expected
    assert fig["_meta"]["seeds"] == [expected[0], expected[-1], len(expected)]
    assert fig["_meta"]["steps"] == {"finetune_layer": DEFAULT_STEPS, "finetune_all": DEFAULT_STEPS}
    assert fig["_meta"]["threshold"] == GENERALITY_THRESHOLD and fig["_meta"]["layer"] == request.layer
    assert "--seeds" not in fig["_meta"]["command"] and "--steps" not in fig["_meta"]["command"]
    sweep = load_figure("sweep_add_sunglasses")
    assert sweep["_per_seed"]["seeds"] == expected and "--seeds" not in sweep["_meta"]["command"]


def test_figure_aggregates_follow_from_their_per_seed_values() -> None:
    """With a fixed box every image has the same region size: each score is the mean over seeds."""
    fig = load_figure("evaluate_add_sunglasses")
    scores = {**{k: v for k, v in fig.items() if not k.startswith("_")}, **fig["_checkpoints"]}
    assert set(scores) == {"rewrite", "finetune_layer", "finetune_all", "finetune_layer@100", "finetune_all@100"}
    for name, s in scores.items():
        ins, outs = fig["_per_seed"][name]["in"], fig["_per_seed"][name]["out"]
        assert s["in_region"] == pytest.approx(sum(ins) / len(ins), rel=1e-5)
        assert s["collateral"] == pytest.approx(sum(outs) / len(outs), rel=1e-5)
        hits = [i - o > GENERALITY_THRESHOLD for i, o in zip(ins, outs, strict=True)]
        assert s["generality"] == pytest.approx(sum(hits) / len(hits))
        assert s["ratio"] == pytest.approx(s["in_region"] / s["collateral"])
    sweep = load_figure("sweep_add_sunglasses")
    assert sweep["_per_seed"]["seeds"] == fig["_per_seed"]["seeds"]  # the sweep's one-layer rows, on the same seeds
    assert fig["_meta"]["then"] == load_example("add_sunglasses")[1]["then"]  # the rewrite is the curated two-layer one


def test_tables_render_the_json() -> None:
    fig = load_figure("evaluate_add_sunglasses")
    lines = evaluate_table(fig).splitlines()
    r = fig["rewrite"]
    assert lines[1].split()[:3] == ["rewrite", f"{r['in_region']:.4f}", f"{r['collateral']:.4f}"]
    assert f"{r['ratio']:.2f} ± {r['ratio_se']:.2f}" in lines[1]
    assert lines[-1].startswith("finetune_all, 100 steps")
    sweep = load_figure("sweep_add_sunglasses")
    rows = sweep_table(sweep).splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [[r["layer"], str(r["rank"])] for r in sweep["rows"]]
    ratios = [r["ratio"] for r in sweep["rows"]]
    assert ratios == sorted(ratios, reverse=True)
    with pytest.raises(RequestError, match="no figure named"):
        load_figure("nope")


def test_invoked_command_reads_the_command_line() -> None:
    argv = ["/x/bin/olam-edit", "--debug", "evaluate", "add_sunglasses", "--json-out", "a b.json"]
    assert invoked_command("evaluate", argv) == "olam-edit evaluate add_sunglasses --json-out 'a b.json'"
    assert invoked_command("sweep", argv) is None


# -- reduced re-runs -----------------------------------------------------------------------------
def _close_seed_by_seed(got: dict, want: dict, seeds: list[int], want_seeds: list[int], rel: float) -> None:
    index = [want_seeds.index(s) for s in seeds]
    for field in ("in", "out"):
        expect = [want[field][i] for i in index]
        assert got[field] == pytest.approx(expect, rel=rel, abs=1e-6), field


def _within_sampling_error(got: dict, want: dict) -> None:
    """|reduced - full| <= 4 sd, with sd = se_full * sqrt(N_full / N_reduced - 1) (a 40-of-200 subset)."""
    factor = 4 * math.sqrt(N_FULL / N_REDUCED - 1)
    assert abs(got["ratio"] - want["ratio"]) <= factor * want["ratio_se"]
    assert abs(got["generality"] - want["generality"]) <= factor * max(want["generality_se"], 1 / N_FULL)


def test_evaluate_figure_reproduces_on_fewer_seeds_and_steps(tmp_path) -> None:
    fig = load_figure("evaluate_add_sunglasses")
    args = shlex.split(fig["_meta"]["command"])[1:]
    args = args[: args.index("--json-out")]  # the figure's own command ...
    out = _run(*args, "--seeds", REDUCED_SEEDS, "--steps", "100", "--out", str(tmp_path),  # ... reduced
               "--json-out", str(tmp_path / "reduced.json"))
    assert out.returncode == 0, out.stderr
    assert "baseline 2/2: finetune_all" in out.stderr and "<" in out.stderr  # the bars with their ETA
    got = json.loads((tmp_path / "reduced.json").read_text())
    seeds = got["_per_seed"]["seeds"]
    assert len(seeds) == N_REDUCED and seeds == fig["_per_seed"]["seeds"][:N_REDUCED]
    pairs = {"rewrite": "rewrite", "finetune_layer": "finetune_layer@100", "finetune_all": "finetune_all@100"}
    for mine, theirs in pairs.items():
        rel = REL_TOL["rewrite" if mine == "rewrite" else "baseline"]
        _close_seed_by_seed(got["_per_seed"][mine], fig["_per_seed"][theirs], seeds, fig["_per_seed"]["seeds"], rel)
        _within_sampling_error(got[mine], fig[theirs] if mine == "rewrite" else fig["_checkpoints"][theirs])


def test_sweep_figure_reproduces_on_fewer_seeds_and_rows(tmp_path) -> None:
    fig = load_figure("sweep_add_sunglasses")
    args = shlex.split(fig["_meta"]["command"])[1:]
    args = args[: args.index("--json-out")]
    args[args.index("--layers") + 1] = "main.3,main.9"  # main.6 rank 1 is the evaluation figure's rewrite
    args[args.index("--ranks") + 1] = "1"
    out = _run(*args, "--seeds", REDUCED_SEEDS, "--out", str(tmp_path), "--json-out", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "sweep [1/2] main.3 rank 1" in out.stderr and "sweep [2/2] main.9 rank 1" in out.stderr
    got = json.loads((tmp_path / "r.json").read_text())
    want_rows = {f"{r['layer']} r{r['rank']}": r for r in fig["rows"]}
    assert {f"{r['layer']} r{r['rank']}" for r in got["rows"]} == {"main.3 r1", "main.9 r1"}
    for row in got["rows"]:
        key = f"{row['layer']} r{row['rank']}"
        _close_seed_by_seed(got["_per_seed"][key], fig["_per_seed"][key], got["_per_seed"]["seeds"],
                            fig["_per_seed"]["seeds"], REL_TOL["rewrite"])
        _within_sampling_error(row, want_rows[key])
