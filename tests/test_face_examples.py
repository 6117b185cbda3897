"""The curated examples on the embedded face model: local, visible changes on held-out seeds."""

from __future__ import annotations

import pytest
import torch

from olam_edit.adapters import load_default
from olam_edit.rules.spatial.examples import list_examples, load_example
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.rules.spatial.stages import solve_example


@pytest.fixture(scope="module")
def gen():
    return load_default()


def test_examples_ship_with_the_package() -> None:
    assert {"add_sunglasses", "close_mouth"} <= set(list_examples())


@pytest.mark.parametrize("name", ["add_sunglasses", "close_mouth", "add_beard", "add_moustache"])
def test_curated_edit_is_local_on_heldout_seeds(gen, name: str, tmp_path) -> None:
    """Mean |change| inside the paste box (fixed before the edit was made) is >= 3x the change outside,
    and the picture outside it is not darkened as a whole."""
    request, settings = load_example(name)
    rw = Rewriter(gen, request.layer, smoothness=settings["smoothness"], ridge=settings["ridge"],
                  cache_dir=str(tmp_path), progress=False)
    edit = solve_example(gen, request, settings, progress=False, first=rw)  # as the example is shown
    first, last = settings["heldout"]
    seeds = list(range(first, last + 1))
    assert not set(seeds) & set(request.seeds)
    signed = (gen.images(seeds, edit) - gen.images(seeds)).mean(1)  # [200, 64, 64]
    diff = signed.abs()
    y0, y1, x0, x1 = settings["region"]
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[y0:y1, x0:x1] = True
    inside, outside = float(diff[:, region].mean()), float(diff[:, ~region].mean())
    rel = edit.manifest["metrics"]["relative_norm"]
    print(f"{name}: in={inside:.4f} out={outside:.4f} ratio={inside / outside:.2f} ||dW||/||W||={rel:.3f}")
    assert inside >= 3 * outside
    # no whole-picture dimming, which brightness-based judges would count as effect: add_sunglasses'
    # second stage without keep_top gives -0.066 here, the shipped rules -0.037 (add_beard) or less
    assert float(signed[:, ~region].mean()) > -0.05
    assert inside > 0.05  # visible: about 6% of the pixel range on average inside the region
    assert 0.05 < rel < 1.0
