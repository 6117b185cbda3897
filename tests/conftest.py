"""Shared fixtures: everything offline, seeded, on CPU."""

from __future__ import annotations

import os

import pytest
import torch

pytest_plugins = ["hub_server"]  # fixtures fake_hub and hf_sandbox (tests/hub_server.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: extra intra-op threads only add contention. Use with pytest.mark.usefixtures."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
