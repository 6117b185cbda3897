"""Tiny seeded models built in-process for the tests (no downloads)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_dcgan(nz: int = 8, ngf: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A 16x16 DCGAN-style generator: ConvT stack with BatchNorm (eval mode) and a Conv2d head."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False),
        nn.BatchNorm2d(ngf * 4),
        nn.ReLU(),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf * 2),
        nn.ReLU(),
        nn.Conv2d(ngf * 2, ngf * 2, 3, 1, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(ngf * 2, 3, 4, 2, 1, bias=False),
        nn.Tanh(),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(dtype)


def tiny_mlp(d: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)).to(dtype)


def latents(n: int, nz: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, nz, 1, 1, generator=g).to(dtype)


def single_layer(kind: str, cin: int = 6, cout: int = 5, seed: int = 0) -> nn.Sequential:
    """One bias-free float64 layer of the given kind wrapped in a Sequential (layer name '0')."""
    torch.manual_seed(seed)
    layer = {
        "linear": lambda: nn.Linear(cin, cout, bias=False),
        "conv2d": lambda: nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        "conv2d_strided": lambda: nn.Conv2d(cin, cout, 3, stride=2, padding=2, dilation=2, bias=False),
        "conv_transpose2d": lambda: nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
    }[kind]()
    return nn.Sequential(layer).double()


def key_map(kind: str, cin: int = 6, n: int = 2, hw: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        return torch.randn(n * hw * hw, cin, generator=g, dtype=torch.float64)
    return torch.randn(n, cin, hw, hw, generator=g, dtype=torch.float64)
