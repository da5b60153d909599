"""Small data helpers for the capability-family contract tests (imported by the test modules)."""

from __future__ import annotations

import numpy as np

from bastion.core.spec import InputSpec


def blobs(n: int, seed: int, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes in [0, 1]^d (float32 inputs, int labels)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.12 * rng.normal(size=(n, d)) + 0.08 * (2 * y[:, None] - 1), 0, 1)
    return x.astype(np.float32), y


def unit_spec(d: int = 4) -> InputSpec:
    return InputSpec(shape=(d,), lower=0.0, upper=1.0)
