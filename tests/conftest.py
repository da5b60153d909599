"""Shared fixtures for the whole suite: one demo-model cache per test session, small torch models.

Sub-folders add their own ``conftest.py`` for anything specific; keep this one small and generic.
"""

from __future__ import annotations

import sys
from pathlib import Path as _Path

sys.path.insert(0, str(_Path(__file__).resolve().parent))  # plain helper modules (constraint_checks)

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def bastion_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``BASTION_CACHE_DIR`` points at one temporary folder for the whole session, so the demo
    models train at most once per run and never touch the user's cache."""
    path = tmp_path_factory.mktemp("bastion-cache")
    saved = os.environ.get("BASTION_CACHE_DIR")
    os.environ["BASTION_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("BASTION_CACHE_DIR", None)
    else:
        os.environ["BASTION_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def digits_target(bastion_cache_dir: Path):  # noqa: ANN201 - a TorchTarget
    """The trained demo digits CNN (trained once per session into the session cache)."""
    from bastion.core.demo import digits_cnn

    return digits_cnn()


@pytest.fixture(scope="session")
def digits_data():  # noqa: ANN201 - a Dataset
    """The held-out demo digits (360 images of shape (1, 8, 8) in [0, 1])."""
    from bastion.core.demo import demo_data

    return demo_data("digits")


def make_mlp(n_in: int, n_classes: int, hidden: int = 16, seed: int = 0):  # noqa: ANN201 - nn.Module
    """A small random ReLU MLP taking inputs of shape (n_in,)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_classes))


def make_cnn(channels: int, size: int, n_classes: int, seed: int = 0):  # noqa: ANN201 - nn.Module
    """A small random CNN taking images of shape (channels, size, size)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * size * size, n_classes))


@pytest.fixture
def mlp_factory() -> Callable[..., object]:
    return make_mlp


@pytest.fixture
def cnn_factory() -> Callable[..., object]:
    return make_cnn


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
