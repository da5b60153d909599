"""Shared assertion for tests: adversarial inputs respect every feature constraint of a spec."""

from __future__ import annotations

import numpy as np

from bastion.core.spec import InputSpec


def assert_constraints_hold(spec: InputSpec, x: np.ndarray, xa: np.ndarray, *, bounds_atol: float = 0.0) -> None:
    """Bounds (within ``bounds_atol``), immutable columns unchanged, integer columns integral, and
    one-hot groups exactly one-hot."""
    assert spec.features is not None
    lo, hi = spec.bounds_arrays()
    assert np.all(xa >= lo - bounds_atol) and np.all(xa <= hi + bounds_atol)
    groups: dict[str, list[int]] = {}
    for j, f in enumerate(spec.features):
        if not f.mutable:
            np.testing.assert_array_equal(xa[:, j], x[:, j])
        if f.group:
            groups.setdefault(f.group, []).append(j)
        elif f.kind != "continuous":
            np.testing.assert_array_equal(xa[:, j], np.round(xa[:, j]))
    for cols in groups.values():
        block = xa[:, cols]
        assert np.all(np.isin(block, (0.0, 1.0))) and np.all(block.sum(axis=1) == 1)
