"""Several rules in one edit from the command line: ``olam-edit rewrite a.json b.json`` (the joint solve),
``--keep`` (an edit solved on top of earlier ones) and ``olam-edit merge`` (one edit that sums others),
each checked against the Python API computing the same thing, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run
from tiny_models import tiny_dcgan

from olam_edit.adapters import TorchGenerator, load_default
from olam_edit.edit.core import Edit
from olam_edit.rules.spatial.examples import load_example
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

EXAMPLES = Path(__file__).resolve().parent.parent / "olam_edit" / "rules" / "spatial" / "examples"
FILE_A, FILE_B = str(EXAMPLES / "add_sunglasses.json"), str(EXAMPLES / "close_mouth.json")
SAMPLES = 50  # key statistics: small, and the same number for the CLI and the reference


def _rewriter(gen, layer: str, **kwargs) -> Rewriter:
    return Rewriter(gen, layer, stats_samples=SAMPLES, progress=False, **kwargs)


def _assert_same_deltas(got: Edit, want: Edit, rtol: float = 1e-5) -> None:
    """The same layers, each with the same dense change dW (factors may differ by a sign of a direction)."""
    assert got.layers == want.layers
    for name in want.layers:
        w, g = want.deltas[name].dense(torch.float64), got.deltas[name].dense(torch.float64)
        assert float(w.norm()) > 0
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * float(w.abs().max()))


def _one_error_line(out, *words: str) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def solo(tmp_path_factory) -> dict[str, Path]:
    """Each curated rule solved alone by the CLI: the edit folders "a" and "b"."""
    root = tmp_path_factory.mktemp("solo")
    for name, path in (("a", FILE_A), ("b", FILE_B)):
        out = run("rewrite", path, "--out", str(root / name), "--samples", str(SAMPLES))
        assert out.returncode == 0, out.stderr
    return {"a": root / "a", "b": root / "b"}


def test_rewrite_of_two_request_files_is_the_joint_solve(tmp_path: Path) -> None:
    out = run("rewrite", FILE_A, FILE_B, "--out", str(tmp_path / "joint"), "--samples", str(SAMPLES))
    assert out.returncode == 0, out.stderr
    assert "solved 2 rules of main.6 jointly" in out.stdout
    got = Edit.load(tmp_path / "joint")
    (a, _), (b, _) = load_example("add_sunglasses"), load_example("close_mouth")
    want = _rewriter(load_default(), a.layer).rewrite([a, b])
    _assert_same_deltas(got, want)
    rules = got.manifest["recipe"]["rules"]
    assert [r["name"] for r in rules] == [a.name, b.name]
    assert got.manifest["solver"]["rules"] == 2
    alone = _rewriter(load_default(), a.layer).rewrite(a)  # the joint edit is not the first rule alone
    assert not torch.allclose(got.deltas[a.layer].dense(torch.float64), alone.deltas[a.layer].dense(torch.float64),
                              rtol=1e-3, atol=1e-6)


def test_rewrite_keep_solves_on_top_of_an_applied_edit(solo: dict[str, Path], tmp_path: Path) -> None:
    out = run("rewrite", FILE_B, "--keep", str(solo["a"]), "--out", str(tmp_path / "b_kept"),
              "--samples", str(SAMPLES))
    assert out.returncode == 0, out.stderr
    assert "kept 1 edit" in out.stdout
    got = Edit.load(tmp_path / "b_kept")
    gen, first = load_default(), Edit.load(solo["a"])
    first.apply(gen.model)
    b, _ = load_example("close_mouth")
    want = _rewriter(gen, b.layer, keep=[first]).rewrite(b)
    _assert_same_deltas(got, want)
    assert got.manifest["solver"]["kept_edits"] == [first.fingerprint]
    plain = Edit.load(solo["b"])  # solved without keeping: another change
    assert not torch.allclose(got.deltas[b.layer].dense(torch.float64), plain.deltas[b.layer].dense(torch.float64),
                              rtol=1e-3, atol=1e-6)


def test_merge_of_two_edits_is_edit_merge(solo: dict[str, Path], tmp_path: Path) -> None:
    out = run("merge", str(solo["a"]), str(solo["b"]), "--out", str(tmp_path / "merged"), "--scales", "1,0.5")
    assert out.returncode == 0, out.stderr
    assert "merged 2 edits: main.6 rank 2" in out.stdout
    got = Edit.load(tmp_path / "merged")
    parts = [Edit.load(solo["a"]), Edit.load(solo["b"])]
    want = Edit.merge(parts, scales=[1.0, 0.5])
    _assert_same_deltas(got, want, rtol=1e-6)
    dense = sum(s * p.deltas["main.6"].dense(torch.float64) for p, s in zip(parts, (1.0, 0.5), strict=True))
    torch.testing.assert_close(got.deltas["main.6"].dense(torch.float64), dense, rtol=1e-5, atol=1e-7)
    recorded = got.manifest["recipe"]["parts"]
    assert [(p["fingerprint"], p["scale"]) for p in recorded] == [(parts[0].fingerprint, 1.0),
                                                                   (parts[1].fingerprint, 0.5)]


def test_merge_refuses_a_non_empty_out_unless_forced(solo: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    refused = run("merge", str(solo["a"]), str(solo["b"]), "--out", str(tmp_path / "out"))
    _one_error_line(refused, "already exists", "--force")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    forced = run("merge", str(solo["a"]), str(solo["b"]), "--out", str(tmp_path / "out"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert Edit.load(tmp_path / "out").layers == ["main.6"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_request_files_of_different_layers_are_one_clear_error(tmp_path: Path) -> None:
    other = json.loads(Path(FILE_B).read_text())
    other["layer"] = "main.9"
    (tmp_path / "mouth9.json").write_text(json.dumps(other))
    out = run("rewrite", FILE_A, str(tmp_path / "mouth9.json"), "--out", str(tmp_path / "o"))
    line = _one_error_line(out, "mouth9.json", "main.9", "one layer", "olam-edit merge")
    assert "add_sunglasses.json" in line  # the layer the others are compared to, by its file
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("scales", ["1", "1,0.5,2", "1,x", "1,nan"])
def test_merge_refuses_scales_that_are_not_one_number_per_edit(solo: dict[str, Path], tmp_path: Path,
                                                               scales: str) -> None:
    out = run("merge", str(solo["a"]), str(solo["b"]), "--out", str(tmp_path / "o"), "--scales", scales)
    _one_error_line(out, "--scales", "2")
    assert not (tmp_path / "o").exists()


def _tiny_edit(folder: Path) -> Path:
    """An edit of another base model (a tiny seeded DCGAN), saved to ``folder``."""
    mask = np.zeros((16, 16))
    mask[4:10, 3:12] = 1
    gen = TorchGenerator(tiny_dcgan(), (8, 1, 1), name="tiny-dcgan")
    request = EditRequest(layer="3", copy=Selection(3, mask), paste=Selection(4, mask), context=[Selection(3, mask)])
    rw = Rewriter(gen, "3", stats_samples=16, progress=False, cache_dir=str(folder.parent))
    return rw.rewrite(request).save(folder)


def test_merge_refuses_edits_of_different_base_models(solo: dict[str, Path], tmp_path: Path) -> None:
    tiny = _tiny_edit(tmp_path / "tiny")
    out = run("merge", str(solo["a"]), str(tiny), "--out", str(tmp_path / "o"))
    _one_error_line(out, "different base models", "tiny (tiny-dcgan)", "face-dcgan64")
    assert not (tmp_path / "o").exists()
