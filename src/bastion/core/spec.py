"""Input specifications: what a target accepts (shape, dtype, bounds, per-feature constraints).

Attacks read the spec to stay inside the declared bounds and to measure ε in each feature's own
scale (``FeatureSpec.scale``): for images every scale is 1, for tables a perturbation of ε moves a
feature by at most ``ε * scale`` (by default its standard deviation in the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bastion.errors import DataError

FeatureKind = Literal["continuous", "integer", "categorical"]


@dataclass
class FeatureSpec:
    """One column of a table: its kind, bounds, whether an attacker may change it, its ε scale.

    ``group`` ties the columns of one one-hot encoded categorical variable together.
    """

    name: str
    kind: FeatureKind = "continuous"
    lower: float = -np.inf
    upper: float = np.inf
    mutable: bool = True
    scale: float = 1.0
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "lower": _num(self.lower), "upper": _num(self.upper),
                "mutable": self.mutable, "scale": float(self.scale), "group": self.group}


@dataclass
class InputSpec:
    """Per-sample shape, dtype and value bounds of a target's inputs.

    ``lower``/``upper`` are scalars or arrays broadcastable to ``shape``; ``features`` is set for tables.
    """

    shape: tuple[int, ...]
    lower: float | np.ndarray = 0.0
    upper: float | np.ndarray = 1.0
    dtype: str = "float32"
    features: list[FeatureSpec] | None = None
    kind: Literal["image", "tabular", "vector"] = "vector"

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if self.features is not None:
            if len(self.features) != int(np.prod(self.shape)):
                raise DataError(f"{len(self.features)} feature specs for inputs of shape {self.shape}")
            self.lower = np.array([f.lower for f in self.features], dtype=np.float64)
            self.upper = np.array([f.upper for f in self.features], dtype=np.float64)
        lo, hi = np.broadcast_arrays(np.asarray(self.lower, np.float64), np.asarray(self.upper, np.float64))
        if np.any(lo > hi):
            raise DataError("input bounds are inverted: some lower bound is above its upper bound")

    # --- arrays attacks use -------------------------------------------------------------------
    def bounds_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds broadcast to the per-sample shape (float32)."""
        lo = np.broadcast_to(np.asarray(self.lower, np.float32), self.shape).copy()
        hi = np.broadcast_to(np.asarray(self.upper, np.float32), self.shape).copy()
        return lo, hi

    def scale_array(self) -> np.ndarray:
        """Per-feature ε scale broadcast to the per-sample shape (ones unless features say otherwise)."""
        if self.features is None:
            return np.ones(self.shape, np.float32)
        return np.array([f.scale for f in self.features], np.float32).reshape(self.shape)

    def mutable_mask(self) -> np.ndarray:
        """1 where an attacker may change the value, 0 where the feature is immutable."""
        if self.features is None:
            return np.ones(self.shape, np.float32)
        return np.array([1.0 if f.mutable else 0.0 for f in self.features], np.float32).reshape(self.shape)

    def clip(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds_arrays()
        return np.clip(x, lo, hi)

    def enforce(self, x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
        """Make adversarial inputs respect every constraint: bounds, and immutable features keep
        their original values. Every attack result passes through here."""
        x_adv = self.clip(x_adv)
        if self.features is not None:
            mask = self.mutable_mask().astype(bool)
            x_adv = np.where(mask, x_adv, x)
        return x_adv.astype(np.float32, copy=False)

    # --- validation ---------------------------------------------------------------------------
    def validate(self, x: np.ndarray, *, what: str = "inputs", atol: float = 1e-5) -> np.ndarray:
        """Check shape, finiteness and bounds; return ``x`` as a contiguous float32 array."""
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{what} have dtype {x.dtype}; numeric arrays are required")
        if x.ndim == len(self.shape):  # a single sample
            x = x[None]
        if tuple(x.shape[1:]) != self.shape:
            raise DataError(f"{what} have per-sample shape {tuple(x.shape[1:])}, the target expects {self.shape}")
        if len(x) == 0:
            raise DataError(f"{what} are empty")
        x = np.ascontiguousarray(x, dtype=np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            idx = np.argwhere(bad.reshape(len(x), -1).any(axis=1)).ravel()
            raise DataError(f"{what} contain NaN or infinite values (first bad sample: index {int(idx[0])}, "
                            f"{len(idx)} samples in all)", hint="clean or drop those samples first")
        lo, hi = self.bounds_arrays()
        below, above = x < lo - atol, x > hi + atol
        if below.any() or above.any():
            raise DataError(
                f"{what} fall outside the target's declared bounds [{_fmt(self.lower)}, {_fmt(self.upper)}] "
                f"(observed min {x.min():.4g}, max {x.max():.4g})",
                hint="scale the data to the model's input range, or declare the bounds of the target",
            )
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "kind": self.kind,
                "lower": _num(self.lower), "upper": _num(self.upper),
                "features": [f.to_dict() for f in self.features] if self.features else None}


def _num(v: Any) -> Any:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        f = float(a)
        return None if not np.isfinite(f) else f
    return [None if not np.isfinite(t) else float(t) for t in a.ravel()]


def _fmt(v: Any) -> str:
    a = np.asarray(v)
    return f"{float(a):.4g}" if a.ndim == 0 else "per-feature"


def tabular_spec(x: np.ndarray, feature_names: list[str] | None = None, *,
                 lower: np.ndarray | None = None, upper: np.ndarray | None = None) -> InputSpec:
    """A tabular InputSpec inferred from data: bounds default to the observed range, scale to the std."""
    x = np.asarray(x, np.float64)
    n_features = x.shape[1]
    names = feature_names or [f"x{i}" for i in range(n_features)]
    lo = x.min(axis=0) if lower is None else np.asarray(lower, np.float64)
    hi = x.max(axis=0) if upper is None else np.asarray(upper, np.float64)
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    features = [FeatureSpec(name=names[i], lower=float(lo[i]), upper=float(hi[i]), scale=float(std[i]))
                for i in range(n_features)]
    return InputSpec(shape=(n_features,), features=features, kind="tabular")


__all__ = ["FeatureSpec", "InputSpec", "tabular_spec"]
