"""Stand-ins for a diffusion UNet's cross-attention, for measurements of the text rule without diffusers.

The text rule reads and writes only the cross-attention ``attn2.to_k`` / ``attn2.to_v`` projections
(text embedding of width d -> the block's width), so a module holding just those layers, under the
names diffusers gives them and flagged ``is_cross_attention`` like diffusers' ``Attention``, is solved
and measured exactly as the full UNet would be: :func:`olam_edit.adapters.diffusers.text.cross_attention_layers`
finds the same layers. Weights are random (``nn.Linear``'s default initialisation, seeded).
"""

from __future__ import annotations

import torch
from torch import nn

# Stable Diffusion 1.5: 16 cross-attention blocks (down 320, 320, 640, 640, 1280, 1280; mid 1280;
# up 1280 x3, 640 x3, 320 x3), each with to_k / to_v 768 -> width.
# Listed in diffusers' module order (down, up, mid).
SD15_BLOCKS = ([(f"down_blocks.{b}.attentions.{a}", w) for b, w in enumerate((320, 640, 1280)) for a in range(2)]
               + [(f"up_blocks.{b}.attentions.{a}", w) for b, w in ((1, 1280), (2, 640), (3, 320)) for a in range(3)]
               + [("mid_block.attentions.0", 1280)])
SD15_TEXT_DIM = 768
# The tests' tiny UNet2DConditionModel (block_out_channels (16, 32), one layer per block): 7 blocks.
TINY_BLOCKS = ([("down_blocks.0.attentions.0", 16), ("down_blocks.1.attentions.0", 32)]
               + [(f"up_blocks.{b}.attentions.{a}", w) for b, w in ((0, 32), (1, 16)) for a in range(2)]
               + [("mid_block.attentions.0", 32)])


class CrossAttention(nn.Module):
    """The two projections of a cross-attention block that read text embeddings."""

    is_cross_attention = True

    def __init__(self, text_dim: int, width: int) -> None:
        super().__init__()
        self.to_k = nn.Linear(text_dim, width, bias=False)
        self.to_v = nn.Linear(text_dim, width, bias=False)


def _put(root: nn.Module, path: str, module: nn.Module) -> None:
    node = root
    *parents, last = path.split(".")
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(last, module)


def attention_stack(blocks: list[tuple[str, int]], text_dim: int, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> nn.Module:
    """A module whose ``{block}.transformer_blocks.0.attn2.to_k`` / ``to_v`` read ``text_dim`` embeddings."""
    torch.manual_seed(seed)
    root = nn.Module()
    for path, width in blocks:
        _put(root, f"{path}.transformer_blocks.0.attn2", CrossAttention(text_dim, width))
    return root.to(dtype).eval()


def projection_names(model: nn.Module) -> list[str]:
    """The ``to_k`` and ``to_v`` of every cross-attention block, in order (as the diffusers adapter lists them)."""
    names = []
    for name, m in model.named_modules():
        if getattr(m, "is_cross_attention", False) and isinstance(getattr(m, "to_k", None), nn.Linear):
            names += [f"{name}.to_k", f"{name}.to_v"]
    return names


__all__ = ["SD15_BLOCKS", "SD15_TEXT_DIM", "TINY_BLOCKS", "CrossAttention", "attention_stack", "projection_names"]
