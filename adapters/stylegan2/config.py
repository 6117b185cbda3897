"""The architecture of a StyleGAN2 generator as plain data (what a checkpoint's shapes or config say)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from olam_edit.errors import WeightFileError, explain

if TYPE_CHECKING:
    pass


# Bounds on a network read from a file, checked before any module is built (the official configs:
# 1024px, style_dim = z_dim = 512, 8 mapping layers, at most 512 channels, 3 image channels, about
# 30 M generator parameters). Module constants, read at each call: a user may raise them.
MAX_SIZE = 4096
MAX_DIM = 4096  # style_dim and z_dim
MAX_MAPPING_LAYERS = 32
MAX_CHANNELS = 2048
MAX_IMG_CHANNELS = 4
MAX_PARAMETERS = 256 * 10**6  # 8x config-f at 1024px; 1 GiB of float32


def size_bounds() -> dict[str, tuple[int, int]]:
    """Each architecture number a checkpoint states, with the inclusive range it must lie in."""
    return {"size": (4, MAX_SIZE), "style_dim": (1, MAX_DIM), "z_dim": (1, MAX_DIM),
            "n_mlp": (1, MAX_MAPPING_LAYERS), "channels": (1, MAX_CHANNELS), "img_channels": (1, MAX_IMG_CHANNELS)}


def check_sizes(source: str, **values: object) -> None:
    """Refuse (WeightFileError naming the field, the value and its bound) any of ``values`` (names of
    :func:`size_bounds`; ``channels`` may be a list of counts) that is not an int in its range.

    Runs before any module or tensor is built, so a file claiming ``z_dim = 10**7`` costs nothing.
    """
    bounds = size_bounds()
    for name, value in values.items():
        low, high = bounds[name]
        for item in value if isinstance(value, list | tuple) else [value]:
            if type(item) is not int or not low <= item <= high:
                shown = item if type(item) is int and abs(item) < 10**18 else type(item).__name__
                raise WeightFileError(explain(
                    f"{source}: the network's {name} is outside the loader's bound", got=shown,
                    expected=f"an integer in [{low}, {high}]",
                    fix="The file is damaged or was crafted; nothing was built. For a larger network of "
                        "your own, raise olam_edit.adapters.stylegan2.config.MAX_*."))


FLAVORS = ("rosinality", "nvlabs")


NOISE_MODES = ("random", "const", "none")


BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


LRELU_SLOPE = 0.2


LRELU_GAIN = math.sqrt(2.0)


EPS = 1e-8


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Channels per resolution of the official configs (rosinality's table), up to ``size``."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
             128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
             512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: ch for res, ch in table.items() if res <= size}


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator.

    ``channels`` maps every resolution 4 .. size to its feature channels; when empty it follows
    ``channel_multiplier`` (config-f: 2). ``z_dim`` defaults to ``style_dim``. ``conv_clamp`` (NVlabs
    training option, often 256) clamps every layer output. ``flavor`` picks whose demodulation
    epsilon to reproduce: rosinality adds 1e-8 to the squared norm of the effective weight, NVlabs to
    that of the stored weight.
    """

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channels: dict[int, int] = field(default_factory=dict)
    z_dim: int = 0
    lr_mlp: float = 0.01
    img_channels: int = 3
    conv_clamp: float | None = None
    flavor: str = "rosinality"

    def __post_init__(self) -> None:
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 4, got {self.size}")
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {self.flavor!r}")
        chans = {int(r): int(c) for r, c in (self.channels or default_channels(self.size,
                                                                                self.channel_multiplier)).items()}
        missing = [r for r in self.resolutions if r not in chans]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")
        object.__setattr__(self, "channels", {r: chans[r] for r in self.resolutions})
        object.__setattr__(self, "z_dim", self.z_dim or self.style_dim)

    @property
    def resolutions(self) -> list[int]:
        """Block resolutions 4, 8, ..., size."""
        return [2**i for i in range(2, int(math.log2(self.size)) + 1)]

    @property
    def num_ws(self) -> int:
        """Number of per-layer latents (rosinality's n_latent, NVlabs' num_ws)."""
        return 2 * int(math.log2(self.size)) - 2

    def to_dict(self) -> dict:
        """JSON-ready dict (resolution keys as strings)."""
        out = asdict(self)
        out["channels"] = {str(r): c for r, c in self.channels.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> StyleGAN2Config:
        """Inverse of :meth:`to_dict`; raises ``TypeError`` on unknown fields."""
        data = dict(data)
        data["channels"] = {int(r): int(c) for r, c in data.get("channels", {}).items()}
        return cls(**data)
