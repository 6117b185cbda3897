"""Rule tensors for a hand-made request equal a hand computation; bad requests raise clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit.adapters import TorchGenerator
from olam_edit.errors import EmptySelectionError, LayerNotFoundError, RequestError
from olam_edit.rules.spatial.request import EditRequest, Selection, mask_from_image, mask_to_png
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.rules.spatial.tensors import Box, paste_box, round_to_key_grid


def _gen() -> TorchGenerator:
    return TorchGenerator(tiny_dcgan(dtype=torch.float64), (8, 1, 1), name="tiny")


def _box_mask(size: int, y0: int, y1: int, x0: int, x1: int, value: float = 1.0) -> np.ndarray:
    m = np.zeros((size, size))
    m[y0:y1, x0:x1] = value
    return m


def _request(layer: str = "3", **kw) -> EditRequest:
    """Copy and paste masks at layer 3's value grid (8x8), context at its key grid (4x4): no resizing."""
    return EditRequest(layer=layer, copy=Selection(3, _box_mask(8, 1, 3, 2, 4)),
                       paste=Selection(5, _box_mask(8, 4, 6, 4, 6)),
                       context=[Selection(7, _box_mask(4, 0, 2, 0, 2))], **kw)


def test_rule_tensors_match_a_hand_computation() -> None:
    gen = _gen()
    rw = Rewriter(gen, "3", progress=False, stats_samples=20)
    # layer "3" is ConvT 16->8 ch, keys 4x4, values 8x8 (value/key ratio 2).
    rule = rw.rule_tensors(_request())
    assert rule.copy_box == Box(1, 3, 2, 4)
    assert rule.paste_box == Box(4, 6, 4, 6)  # paste box centre (5, 5), clip 2x2 -> rows 4..5
    assert rule.fit_box == Box(4, 6, 4, 6)  # already on the key grid (even)
    assert torch.equal(rule.alpha, torch.ones(2, 2, dtype=torch.float64))
    _, v_paste = gen.keys_and_values("3", gen.latents([5]))
    _, v_copy = gen.keys_and_values("3", gen.latents([3]))
    expect = v_paste.clone()
    expect[..., 4:6, 4:6] = v_copy[..., 1:3, 2:4]
    assert torch.equal(rule.v_star, expect)
    fit = torch.zeros(1, 8, 8, dtype=torch.float64)
    fit[0, 4:6, 4:6] = 1
    assert torch.equal(rule.fit_mask, fit)
    x_ctx, _ = gen.keys_and_values("3", gen.latents([7]))
    assert torch.equal(rule.context_keys, x_ctx[0, :, 0:2, 0:2].reshape(16, -1).T)  # 16 keys -> 4x4, rows 0..1


def test_soft_alpha_and_clamped_paste() -> None:
    gen = _gen()
    req = EditRequest(layer="3", copy=Selection(3, _box_mask(8, 1, 4, 1, 4, value=0.5)),
                      paste=Selection(5, _box_mask(8, 7, 8, 7, 8)))
    rule = Rewriter(gen, "3", progress=False, stats_samples=20).rule_tensors(req)
    assert rule.copy_box == Box(1, 4, 1, 4) and torch.allclose(rule.alpha, torch.full((3, 3), 0.5, dtype=torch.float64))
    assert rule.paste_box == Box(5, 8, 5, 8)  # centred at (7.5, 7.5), clamped inside the 8x8 map
    assert rule.fit_box == Box(4, 8, 4, 8)  # rounded out to the 2-pixel key cells
    _, v_paste = gen.keys_and_values("3", gen.latents([5]))
    _, v_copy = gen.keys_and_values("3", gen.latents([3]))
    expect = v_paste.clone()
    expect[..., 5:8, 5:8] = 0.5 * v_paste[..., 5:8, 5:8] + 0.5 * v_copy[..., 1:4, 1:4]
    assert torch.allclose(rule.v_star, expect, atol=1e-15)
    assert rule.context_keys.shape[0] == 1  # no context: the paste region (one key cell) serves


def test_masks_are_resized_like_pil_bilinear() -> None:
    """16 -> 8: output i averages inputs 2i-1..2i+2 with weights 1/8, 3/8, 3/8, 1/8 (renormalised at
    the border, where input -1 is missing: 3/7, 3/7, 1/7); the 2-D weights are the product."""
    from olam_edit.rules.spatial.tensors import resize_mask, tight_box

    m = resize_mask(_box_mask(16, 2, 6, 4, 8), (8, 8))
    assert tight_box(m, "copy") == Box(0, 4, 1, 5)  # faint edges count, as in the reference (> 0)
    row = {0: 1 / 7, 1: 7 / 8, 2: 7 / 8, 3: 1 / 8}  # rows 2..5 set: coverage of output rows 0..3
    col = {1: 1 / 8, 2: 7 / 8, 3: 7 / 8, 4: 1 / 8}  # cols 4..7 set: coverage of output cols 1..4
    for (i, a), (j, b) in [(r, c) for r in row.items() for c in col.items()]:
        assert float(m[i, j]) == pytest.approx(a * b, abs=1e-12)
    from PIL import Image

    src = Image.fromarray(_box_mask(16, 2, 6, 4, 8).astype(np.float32), mode="F")
    pil = np.asarray(src.resize((8, 8), Image.BILINEAR))
    assert np.abs(m.numpy() - pil).max() < 1e-6


def test_box_helpers() -> None:
    assert paste_box(3, 3, (0.0, 0.0), (8, 8)) == Box(0, 3, 0, 3)
    assert paste_box(2, 4, (4.0, 4.0), (8, 8)) == Box(3, 5, 2, 6)
    assert round_to_key_grid(Box(3, 5, 1, 4), 2.0, (8, 8)) == Box(2, 6, 0, 4)
    assert round_to_key_grid(Box(3, 5, 1, 4), 1.0, (8, 8)) == Box(3, 5, 1, 4)


def test_request_json_round_trip(tmp_path) -> None:
    soft = np.linspace(0, 1, 64).reshape(8, 8)
    req = EditRequest(layer="3", rank=2, copy=Selection(1, soft), paste=Selection(2, _box_mask(8, 2, 4, 2, 4)),
                      context=[Selection(4, _box_mask(8, 0, 3, 0, 3))], name="n", description="d")
    back = EditRequest.load(req.save(tmp_path / "r.json"))
    assert back.to_json() == req.to_json()
    assert np.abs(back.copy.mask - soft).max() <= 0.5 / 255 + 1e-12  # 8-bit PNG quantisation
    assert json.loads((tmp_path / "r.json").read_text())["copy"]["mask"].startswith("data:image/png;base64,")
    assert back.seeds == [1, 2, 4]


def test_masks_from_images() -> None:
    from PIL import Image

    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[2:5, 2:5] = (255, 255, 255, 255)
    m = mask_from_image(Image.fromarray(rgba, "RGBA"))
    assert m.shape == (10, 10) and m[3, 3] == 1.0 and m[0, 0] == 0.0
    assert np.array_equal(mask_from_image(mask_to_png(m)), m)
    with pytest.raises(RequestError, match="not a readable image"):
        mask_from_image(b"\x89PNG garbage")
    with pytest.raises(RequestError, match="2-D"):
        mask_from_image(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seeds(seed) -> None:
    with pytest.raises(RequestError, match="seed"):
        Selection(seed, np.ones((4, 4)))


def test_bad_requests_raise_and_leave_nothing(tmp_path) -> None:
    gen = _gen()
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    rw = Rewriter(gen, "3", progress=False, stats_samples=20)
    empty = _request()
    empty.paste = Selection(5, np.zeros((16, 16)))
    with pytest.raises(EmptySelectionError, match="paste mask is empty"):
        rw.rewrite(empty)
    full = _request()
    full.copy = Selection(3, np.ones((16, 16)))
    with pytest.raises(RequestError, match="whole image"):
        rw.rewrite(full)
    with pytest.raises(RequestError, match="another layer"):
        rw.rewrite(_request(layer="6"))
    with pytest.raises(RequestError, match="another model"):
        rw.rewrite(_request(model="someone/else"))
    with pytest.raises(LayerNotFoundError):
        Rewriter(gen, "99")
    with pytest.raises(oe.errors.UnsupportedLayerError, match="BatchNorm2d"):
        Rewriter(gen, "1")
    with pytest.raises(RequestError, match="incomplete"):
        EditRequest.from_json({"layer": "3"})
    assert all(torch.equal(v, before[k]) for k, v in gen.model.state_dict().items())
