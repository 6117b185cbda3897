"""Issue 13, requests: every malformed or oversized request, smoothness and rank is one RequestError.

Each reproduction of the issue is one named test: seeds >= 2**64, a data URL without a comma,
invalid UTF-8, a list-of-strings mask, a non-string layer, non-finite or negative smoothness (API and
CLI), huge masks (refused from the PNG header, memory measured in a fresh process), a rank above
what the layer or the context supports (never clamped), and solves beyond the size bounds.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit.adapters import TorchGenerator
from olam_edit.adapters.base import check_seeds
from olam_edit.cli import main
from olam_edit.errors import EmptySelectionError, RequestError
from olam_edit.memory.solve import MAX_SOLVE_WORK, Problem, check_solve_size, estimate_solve
from olam_edit.rules.spatial.request import MAX_MASK_PIXELS, EditRequest, Selection, mask_to_png
from olam_edit.rules.spatial.rewriter import Rewriter

BUDGET_MB = 300  # peak memory above the process's baseline for any hostile mask


def _png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, compressed row by row (never held decoded in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _mask(y0: int = 4, y1: int = 10, x0: int = 4, x1: int = 10) -> np.ndarray:
    m = np.zeros((16, 16))
    m[y0:y1, x0:x1] = 1
    return m


def _request_json(**change: object) -> dict:
    sel = {"seed": 3, "mask": mask_to_png(_mask())}
    return {"layer": "3", "rank": 1, "copy": sel, "paste": {**sel, "seed": 5}, "context": [sel], **change}


def _refused(obj: object, match: str) -> RequestError:
    with pytest.raises(RequestError, match=match) as caught:
        EditRequest.from_json(obj)
    assert caught.value.got is not None or caught.value.expected is not None
    return caught.value


# ------------------------------------------------------------------------------------------ the schema
@pytest.mark.parametrize("seed", [2**64, 2**64 + 5, 10**400, -1, 1.5, True, "3", None])
def test_seed_out_of_range_or_not_an_integer_is_refused(seed: object) -> None:
    e = _refused(_request_json(copy={"seed": seed, "mask": mask_to_png(_mask())}), "seed")
    assert "2**64 - 1" in e.expected if e.expected else "2**64 - 1" in str(e)
    assert len(str(e)) < 400  # a huge integer is summarised, never printed


def test_largest_seed_is_accepted() -> None:
    assert Selection(2**64 - 1, _mask()).seed == 2**64 - 1
    assert EditRequest.from_json(_request_json(copy={"seed": 2**64 - 1, "mask": mask_to_png(_mask())})).copy.seed


def test_generator_refuses_seed_of_2_pow_64() -> None:
    gen = TorchGenerator(tiny_dcgan(), (8, 1, 1), name="tiny")
    with pytest.raises(RequestError, match=r"2\*\*64"):
        gen.images([2**64])
    with pytest.raises(RequestError, match="bits"):  # summarised, not printed digit by digit
        check_seeds([10**5000])
    assert check_seeds([0, 2**64 - 1]) == [0, 2**64 - 1]


@pytest.mark.parametrize(("mask", "match"), [
    ("data:image/png;base64", "not a base64 image data URL"),  # no comma
    ("data:image/png;base64,@@@", "not valid base64"),
    ("iVBORw0KGgo=", "not a base64 image data URL"),
    (_url(b"not a png at all"), "not a readable image"),
    (["a", "b"], "must hold numbers"),
    ([["a", "b"], ["c", "d"]], "must hold numbers"),
    (5, "mask is not valid"),
    ({"x": 1}, "mask is not valid"),
])
def test_malformed_masks_are_refused(mask: object, match: str) -> None:
    _refused(_request_json(paste={"seed": 1, "mask": mask}), match)


@pytest.mark.parametrize(("change", "match"), [
    ({"layer": 6}, "layer is not valid"),
    ({"layer": None}, "layer is not valid"),
    ({"layer": ""}, "layer is not valid"),
    ({"rank": "2"}, "rank is not valid"),
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": 10**6}, "rank must be a positive integer"),
    ({"model": 5}, "model is not valid"),
    ({"name": ["x"]}, "name is not valid"),
    ({"context": "all"}, "context is not valid"),
    ({"context": [5]}, "needs 'seed' and 'mask'"),
])
def test_mistyped_fields_are_refused(change: dict, match: str) -> None:
    _refused(_request_json(**change), match)


def test_request_file_with_invalid_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(b'{"layer": "\xff\xfe"}')
    with pytest.raises(RequestError, match="not UTF-8"):
        EditRequest.load(path)


def test_request_file_nested_5000_deep_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(RequestError, match="nests too deeply"):
        EditRequest.load(path)


def test_valid_request_round_trips(tmp_path: Path) -> None:
    req = EditRequest.from_json(_request_json())
    back = EditRequest.load(req.save(tmp_path / "r.json"))
    assert back.to_json() == req.to_json() and np.array_equal(back.copy.mask, req.copy.mask)


# ------------------------------------------------------------------------------------------ big masks
@pytest.mark.parametrize("side", [12000, 20000])
def test_huge_png_mask_is_refused_from_its_header(side: int) -> None:
    raw = _png(side, side)
    assert len(raw) < 2_000_000  # a small file claiming a huge image
    with pytest.raises(RequestError, match="too large") as caught:
        Selection(1, raw)
    assert f"{side} x {side}" in str(caught.value.got) and "4096" in str(caught.value.expected)
    _refused(_request_json(paste={"seed": 1, "mask": _url(raw)}), "too large")


def test_huge_array_and_pil_masks_are_refused() -> None:
    from PIL import Image

    with pytest.raises(RequestError, match="too large"):
        Selection(1, np.zeros((4097, 4097), dtype=np.uint8))
    with pytest.raises(RequestError, match="too large"):
        Selection(1, Image.new("L", (5000, 5000)))


def test_masks_of_one_request_are_bounded_together() -> None:
    big = {"seed": 1, "mask": _url(_png(4096, 4096))}
    with pytest.raises(RequestError, match="too large together"):
        EditRequest.from_json(_request_json(copy=big, paste=big, context=[big]))


_MEASURE = textwrap.dedent("""
    import base64, json, resource, sys
    from olam_edit.errors import RequestError
    import numpy as np
    from olam_edit.rules.spatial.request import EditRequest, mask_to_png
    raw = open(sys.argv[1], "rb").read()
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    sel, small = {"seed": 1, "mask": url}, {"seed": 2, "mask": mask_to_png(np.ones((4, 4)))}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        req = EditRequest.from_json({"layer": "main.6", "copy": sel, "paste": small})
        outcome = "accepted %dx%d" % req.copy.mask.shape
    except RequestError as e:
        outcome = "refused: " + str(e)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "peak_mb": (after - before) / 1024}))
""")


def _peak(tmp_path: Path, width: int, height: int) -> dict:
    png = tmp_path / "mask.png"
    png.write_bytes(_png(width, height))
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(png)], capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("side", [12000, 20000])
def test_hostile_mask_peak_memory_stays_under_budget(tmp_path: Path, side: int) -> None:
    got = _peak(tmp_path, side, side)
    assert got["outcome"].startswith("refused: a mask image is too large")
    assert got["peak_mb"] < BUDGET_MB


def test_mask_at_the_cap_decodes_under_budget(tmp_path: Path) -> None:
    assert 4096 * 4096 == MAX_MASK_PIXELS
    got = _peak(tmp_path, 4096, 4096)
    assert got["outcome"] == "accepted 4096x4096" and got["peak_mb"] < BUDGET_MB


def test_cli_refuses_huge_request_mask_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_request_json(paste={"seed": 1, "mask": _url(_png(12000, 12000))})))
    code = main(["rewrite", str(path), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "too large" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ smoothness
BAD_SMOOTHNESS = [-1.0, -1e-9, float("nan"), float("-inf"), float("inf"), 1e300]


def _gen() -> TorchGenerator:
    return TorchGenerator(tiny_dcgan(dtype=torch.float64), (8, 1, 1), name="tiny")


@pytest.mark.parametrize("smoothness", BAD_SMOOTHNESS)
def test_rewriter_refuses_bad_smoothness(smoothness: float) -> None:
    with pytest.raises(RequestError, match="smoothness must be a finite number >= 0"):
        Rewriter(_gen(), "3", smoothness=smoothness)
    rw = Rewriter(_gen(), "3", progress=False, stats_samples=8)
    with pytest.raises(RequestError, match="smoothness"):
        rw.rewrite(EditRequest.from_json(_request_json()), smoothness=smoothness)
    assert rw._stats is None  # refused before any statistics were collected


@pytest.mark.parametrize("text", ["-1", "-1e-9", "nan", "-inf", "inf"])
def test_cli_refuses_bad_smoothness(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = EditRequest.from_json(_request_json()).save(tmp_path / "r.json")
    with pytest.raises(SystemExit) as caught:
        main(["rewrite", str(path), "--out", str(tmp_path / "out"), f"--smoothness={text}"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "smoothness must be a finite number >= 0" in err and "Traceback" not in err


def test_solver_refuses_bad_smoothness_directly() -> None:
    rw = Rewriter(_gen(), "3", progress=False, stats_samples=8)
    req = EditRequest.from_json(_request_json())
    rule = rw.rule_tensors(req)
    problem = Problem(rw.handle, rule.x_paste, rule.v_star, rule.fit_mask)
    D = torch.eye(rw.handle.key_dim, dtype=torch.float64)[:1]  # [1, in]
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(RequestError, match="smoothness"):
            oe.solve_lambda(problem, D, torch.eye(rw.handle.key_dim, dtype=torch.float64), bad)


# ------------------------------------------------------------------------------------------------ rank
@pytest.mark.parametrize("rank", [17, 257, 1000])
def test_rank_above_the_layers_key_dimension_is_refused_not_clamped(rank: int) -> None:
    rw = Rewriter(_gen(), "3", progress=False, stats_samples=8)
    assert rw.handle.key_dim == 16
    with pytest.raises(RequestError, match=r"out of range for this layer") as caught:
        rw.rewrite(EditRequest.from_json(_request_json(rank=rank)))
    assert "[1, 16]" in str(caught.value.expected) and rw._stats is None
    with pytest.raises(RequestError, match="out of range"):
        oe.context_directions(torch.randn(40, 16, dtype=torch.float64), None, torch.eye(16, dtype=torch.float64), rank)


def test_rank_above_what_the_context_keys_span_is_refused() -> None:
    g = torch.Generator().manual_seed(7)
    two = torch.randn(2, 16, generator=g, dtype=torch.float64)  # [2, 16]
    keys = two.repeat(10, 1)  # [20, 16]: 20 keys, 2 directions
    assert oe.context_directions(keys, None, torch.eye(16, dtype=torch.float64), 2).shape == (2, 16)
    with pytest.raises(EmptySelectionError, match="span fewer directions"):
        oe.context_directions(keys, None, torch.eye(16, dtype=torch.float64), 3)


def test_manifest_rank_is_the_rank_of_the_directions() -> None:
    rw = Rewriter(_gen(), "3", progress=False, stats_samples=40)
    edit = rw.rewrite(EditRequest.from_json(_request_json(rank=2)))
    assert edit.manifest["solver"]["rank"] == 2 == edit.deltas["3"].directions.shape[0]


# ---------------------------------------------------------------------------------------- solve bounds
def _face_request(rank: int) -> EditRequest:
    from olam_edit.rules.spatial.examples import load_example

    req, _ = load_example("close_mouth")
    return EditRequest.from_json({**req.to_json(), "rank": rank})


@pytest.mark.parametrize("rank", [255, 256])
def test_rank_255_or_256_on_main6_is_refused_up_front_with_the_estimate(tmp_path: Path, rank: int) -> None:
    from olam_edit.adapters import load_default

    rw = Rewriter(load_default(), "main.6", cache_dir=str(tmp_path), progress=False)
    with pytest.raises(RequestError, match="too large to solve") as caught:
        rw.rewrite(_face_request(rank))
    got = str(caught.value.got)
    assert f"{rank * 16} unknowns" in got and "GiB" in got and " s" in got
    assert rw._stats is None and not any(tmp_path.iterdir())  # nothing collected, nothing written


def test_solve_estimate_follows_the_problem_size() -> None:
    from olam_edit.adapters import load_default

    gen = load_default()
    rw = Rewriter(gen, "main.6", progress=False)
    rule = rw.rule_tensors(_face_request(1))
    problem = Problem(rw.handle, rule.x_paste, rule.v_star, rule.fit_mask)
    small, big = estimate_solve(problem, 1), estimate_solve(problem, 256)
    assert (small.unknowns, big.unknowns) == (16, 4096)
    n_pos = rule.v_star[0, 0].numel()  # one sample's value grid
    assert big.rows == n_pos + 4096 and big.systems == 1 and big.rhs == rule.v_star.shape[1]
    assert big.work == float(big.rows) * 4096**2 > MAX_SOLVE_WORK > small.work
    assert check_solve_size(problem, 8).unknowns == 128  # a usual rank passes
