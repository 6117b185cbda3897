"""Rule tensors: turn a request's copy / paste / context selections into keys, targets and weights.

Following the paper's reference code:
- copy: the copy mask, resized to the value grid, gives a tight box; the copy sample's values inside
  it are the clip and the soft mask inside it is alpha;
- paste: the clip is centred on the centre of the paste mask's box (clamped inside the map), and the
  target is (1 - alpha) * v0 + alpha * clip there, the paste sample's own values elsewhere;
- fit: the pasted box rounded out to the key grid (ratio 2 on up-sampling layers); every value in
  it is fitted (copy where alpha > 0, unchanged elsewhere);
- context: every key under a context mask (resized to the key grid), weighted by the soft mask; the
  paste selection serves when there is no context.
Unlike the reference, keys are not cropped: the fit runs on the whole key map with a mask on the fit
box, so the values at the box's border see every key that really contributes to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from olam_edit.errors import EmptySelectionError, RequestError, explain


@dataclass(frozen=True)
class Box:
    """A half-open box ``[y0, y1) x [x0, x1)`` on some grid."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def center(self) -> tuple[float, float]:
        return (self.y0 + self.y1) / 2, (self.x0 + self.x1) / 2

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def resize_mask(mask: np.ndarray | Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of a soft mask to ``size`` = (h, w), float64 in [0, 1]."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float64)[None, None]  # [1, 1, H, W]
    if tuple(m.shape[-2:]) == tuple(size):
        return m[0, 0].clone()
    out = F.interpolate(m, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].clamp(0, 1)  # [h, w]


def tight_box(mask: Tensor, what: str) -> Box:
    """The tight box of ``mask > 0``; an empty or whole-image mask is refused."""
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if ys.numel() == 0:
        raise EmptySelectionError(explain(f"the {what} mask is empty at this layer's resolution",
                                          fix="Paint a larger region (or pick a layer with a finer grid)."))
    if bool((mask >= 1 - 1e-6).all()):
        raise RequestError(explain(f"the {what} mask covers the whole image", expected="a region",
                                   fix="Paint only the part of the image the rule is about."))
    return Box(int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)


def paste_box(clip_h: int, clip_w: int, center: tuple[float, float], grid: tuple[int, int]) -> Box:
    """A clip-sized box centred at ``center``, shifted to lie inside ``grid`` (as the paper clamps)."""
    top = min(max(math.floor(center[0] - clip_h / 2 + 0.5), 0), grid[0] - clip_h)
    left = min(max(math.floor(center[1] - clip_w / 2 + 0.5), 0), grid[1] - clip_w)
    return Box(top, top + clip_h, left, left + clip_w)


def round_to_key_grid(box: Box, ratio: float, grid: tuple[int, int]) -> Box:
    """Grow a value-grid box so that it covers whole key cells (value/key resolution ``ratio``)."""
    def out(lo: int, hi: int, n: int) -> tuple[int, int]:
        return max(0, math.floor(math.floor(lo / ratio) * ratio)), min(n, math.ceil(math.ceil(hi / ratio) * ratio))

    (y0, y1), (x0, x1) = out(box.y0, box.y1, grid[0]), out(box.x0, box.x1, grid[1])
    return Box(y0, y1, x0, x1)


@dataclass
class RuleTensors:
    """Everything the solver needs, plus the geometry for inspection and tests."""

    x_paste: Tensor  # [1, in, h, w] key map of the paste sample
    v_star: Tensor  # [1, out, H, W] target value map
    fit_mask: Tensor  # [1, H, W] 1 inside the fit box
    context_keys: Tensor  # [n, in]
    context_weights: Tensor  # [n]
    copy_box: Box
    paste_box: Box
    fit_box: Box
    alpha: Tensor  # [copy_box.height, copy_box.width]


def composite(v_paste: Tensor, v_copy: Tensor, copy_mask: Tensor, paste_mask: Tensor
              ) -> tuple[Tensor, Box, Box, Tensor]:
    """Target values: the copy clip alpha-composited onto the paste sample's values.

    All maps are at the value grid; returns (v_star, copy box, paste box, alpha).
    """
    grid = (v_paste.shape[-2], v_paste.shape[-1])  # the value grid (h, w)
    cbox = tight_box(copy_mask, "copy")
    pbox = paste_box(cbox.height, cbox.width, tight_box(paste_mask, "paste").center, grid)
    alpha = copy_mask[cbox.slices()].to(v_paste)  # [bh, bw]
    clip = v_copy[..., cbox.y0 : cbox.y1, cbox.x0 : cbox.x1]  # [1, out, bh, bw]
    v_star = v_paste.clone()
    region = v_star[..., pbox.y0 : pbox.y1, pbox.x0 : pbox.x1]
    v_star[..., pbox.y0 : pbox.y1, pbox.x0 : pbox.x1] = (1 - alpha) * region + alpha * clip
    return v_star, cbox, pbox, alpha


def weighted_keys(x: Tensor, mask: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """Keys ``[n, in]`` of a key map ``[1, in, h, w]`` under a soft mask, and their weights ``[n]``."""
    w = resize_mask(mask, (x.shape[-2], x.shape[-1])).reshape(-1).to(x.device)  # [h*w]
    keys = x[0].reshape(x.shape[1], -1).T.to(torch.float64)  # [h*w, in]
    keep = w > 0
    return keys[keep], w[keep]
