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


@dataclass(frozen=True)
class DiscreteLayout:
    """Index arrays of a table's discrete constraints, computed once from its ``FeatureSpec`` list.

    ``int_cols``: integer columns (and categorical columns holding integer codes), with their
    bounds rounded inward (``int_lo``/``int_hi``, ±inf when unbounded). ``group_cols`` (groups x
    widest group): the columns of each one-hot group, padded where ``group_valid`` is False.
    ``scale``: every column's ε scale (float64).
    """

    int_cols: np.ndarray
    int_lo: np.ndarray
    int_hi: np.ndarray
    group_cols: np.ndarray
    group_valid: np.ndarray
    scale: np.ndarray

    def snap(self, x: np.ndarray, a: np.ndarray, allow: np.ndarray, l2_cap: np.ndarray) -> np.ndarray:
        """Discrete version of ``a`` (n, d): integers rounded to the nearest value and one-hot groups
        projected to their argmax where no column then moves more than ``allow`` (n, 1) ε units from
        ``x``, rounded toward ``x`` / kept at the original category otherwise; samples whose L2
        distance (ε units) would exceed ``l2_cap`` (n,) are rounded toward ``x`` throughout."""
        out = self._snap(x, a, allow)
        d = (out - x) / self.scale
        grew = np.sqrt((d * d).sum(axis=1)) > l2_cap
        if grew.any():  # rounding toward the original: no |delta_i| can grow
            out[grew] = self._snap(x[grew], a[grew], np.zeros((int(grew.sum()), 1)))
        return out

    def _snap(self, x: np.ndarray, a: np.ndarray, allow: np.ndarray) -> np.ndarray:
        out = a.copy()
        c = self.int_cols
        if len(c):
            ac, xc = a[:, c], x[:, c]
            near = np.minimum(np.maximum(np.round(ac), self.int_lo), self.int_hi)
            toward = np.minimum(np.maximum(np.where(ac >= xc, np.floor(ac), np.ceil(ac)), self.int_lo), self.int_hi)
            ok = np.abs(near - xc) / self.scale[c] <= allow
            out[:, c] = np.where(ac != xc, np.where(ok, near, toward), xc)
        if self.group_cols.size:
            g, valid = self.group_cols, self.group_valid
            pick = np.where(valid, a[:, g], -np.inf).argmax(axis=2)  # (n, groups); first on ties
            proj = (np.arange(g.shape[1]) == pick[..., None]).astype(np.float64)
            xg = x[:, g]
            ok = (~valid | (np.abs(proj - xg) / self.scale[g] <= allow[:, :, None])).all(axis=2)
            out[:, g[valid]] = np.where(ok[..., None], proj, xg)[:, valid]
        return out


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

    def discrete_layout(self) -> DiscreteLayout | None:
        """Where the discrete constraints apply (None when every feature is continuous): the one
        description that ``enforce`` and the gradient attacks' torch twin both read."""
        if self.features is None or all(f.kind == "continuous" for f in self.features):
            return None
        lo, hi = (np.asarray(b, np.float64).reshape(-1) for b in self.bounds_arrays())
        int_cols: list[int] = []
        groups: dict[str, list[int]] = {}
        for j, f in enumerate(self.features):
            if f.kind == "categorical" and f.group:
                groups.setdefault(f.group, []).append(j)
            elif f.kind != "continuous":  # integer, or a categorical column holding integer codes
                int_cols.append(j)
        cols = np.array(int_cols, np.int64)
        width = max((len(g) for g in groups.values()), default=0)
        group_cols = np.zeros((len(groups), width), np.int64)
        group_valid = np.zeros((len(groups), width), bool)
        for i, members in enumerate(groups.values()):
            group_cols[i] = members + [members[0]] * (width - len(members))  # padding, masked out
            group_valid[i, :len(members)] = True
        return DiscreteLayout(
            int_cols=cols,
            int_lo=np.where(np.isfinite(lo[cols]), np.ceil(lo[cols]), -np.inf),
            int_hi=np.where(np.isfinite(hi[cols]), np.floor(hi[cols]), np.inf),
            group_cols=group_cols, group_valid=group_valid,
            scale=np.array([f.scale for f in self.features], np.float64))

    def enforce(self, x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
        """Make adversarial inputs respect every constraint: bounds, immutable features keep their
        original values, integer features hold integers and one-hot groups stay one-hot (argmax
        projection). Every attack result passes through here.

        Rounding never enlarges the perturbation: per sample, neither its L∞ nor its L2 norm (in ε
        units) may grow, so a point inside the attack's ε-ball stays inside it. Where rounding to the
        nearest integer (or switching category) would grow it, the value is rounded toward the
        original instead (or the original category kept). The gradient attacks apply the same rules
        on torch tensors (``Geometry.enforce`` in ``bastion.attacks.evasion._torch``), read from the
        same ``discrete_layout``.
        """
        x_adv = self.clip(x_adv)
        if self.features is None:
            return x_adv.astype(np.float32, copy=False)
        mask = self.mutable_mask().astype(bool)
        x_adv = np.where(mask, x_adv, x)
        layout = self.discrete_layout()
        if layout is None:
            return x_adv.astype(np.float32, copy=False)
        n = len(x_adv)
        x2 = np.asarray(x, np.float64).reshape(n, -1)
        a2 = np.asarray(x_adv, np.float64).reshape(n, -1)
        d0 = (a2 - x2) / layout.scale
        linf0 = np.abs(d0).max(axis=1, initial=0.0)[:, None] + 1e-6
        l2_0 = np.sqrt((d0 * d0).sum(axis=1)) + 1e-6
        return layout.snap(x2, a2, linf0, l2_0).reshape(np.shape(x_adv)).astype(np.float32, copy=False)

    # --- validation ---------------------------------------------------------------------------
    def validate(self, x: np.ndarray, *, what: str = "inputs", atol: float = 1e-5) -> np.ndarray:
        """Check shape, finiteness and bounds; return ``x`` as a contiguous float32 array."""
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{what} have dtype {x.dtype}; numeric arrays are required")
        if np.iscomplexobj(x):  # a cast to float32 would silently drop the imaginary part
            raise DataError(f"{what} are complex ({x.dtype}); models under test take real-valued inputs",
                            hint="pass x.real, or split the real and imaginary parts into separate features")
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


FEATURE_KEYS = ("name", "kind", "lower", "upper", "mutable", "scale", "group")


def constraints_from_config(features: list[dict[str, Any]], feature_names: list[str], *,
                            base: list[FeatureSpec] | None = None,
                            x: np.ndarray | None = None) -> list[FeatureSpec]:
    """Feature constraints from a policy / API list of dicts, one per constrained column::

        [{"name": "age", "kind": "integer", "lower": 18, "upper": 99},
         {"name": "sex", "mutable": false},
         {"name": "color_red", "kind": "categorical", "group": "color"}, ...]

    Keys: ``name`` (required), ``kind`` (continuous | integer | categorical), ``lower``, ``upper``,
    ``mutable``, ``scale`` (> 0, ε units), ``group`` (columns of one one-hot variable). Columns not
    listed keep their ``base`` spec (default: unconstrained, scale 1). With ``x`` given, integer
    columns and one-hot groups are checked against the data. Contradictions raise DataError naming
    the column.
    """
    names = [str(n) for n in feature_names]
    if base is not None and len(base) != len(names):
        raise DataError(f"{len(base)} base feature specs for {len(names)} columns")
    out = {n: (base[i] if base is not None else FeatureSpec(name=n)) for i, n in enumerate(names)}
    out = {n: FeatureSpec(**{**f.__dict__, "name": n}) for n, f in out.items()}
    if not isinstance(features, list):
        raise DataError(f"feature constraints must be a list of mappings, got {type(features).__name__}")
    seen: set[str] = set()
    for i, item in enumerate(features):
        if not isinstance(item, dict) or "name" not in item:
            raise DataError(f"feature constraint #{i + 1} must be a mapping with a 'name'")
        name = str(item["name"])
        if name not in out:
            raise DataError(f"feature constraint #{i + 1} names an unknown column '{name}'",
                            hint=f"columns are: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
        if name in seen:
            raise DataError(f"column '{name}' is constrained twice")
        seen.add(name)
        unknown = set(item) - set(FEATURE_KEYS)
        if unknown:
            raise DataError(f"column '{name}': unknown constraint key(s) {', '.join(sorted(map(str, unknown)))}; "
                            f"allowed: {', '.join(FEATURE_KEYS)}")
        f = out[name]
        kind = item.get("kind", f.kind)
        if kind not in ("continuous", "integer", "categorical"):
            raise DataError(f"column '{name}': kind must be continuous, integer or categorical, got {kind!r}")
        try:
            lower = float(item["lower"]) if item.get("lower") is not None else f.lower
            upper = float(item["upper"]) if item.get("upper") is not None else f.upper
            scale = float(item["scale"]) if item.get("scale") is not None else f.scale
        except (TypeError, ValueError) as exc:
            raise DataError(f"column '{name}': lower, upper and scale must be numbers ({exc})") from exc
        mutable = item.get("mutable", f.mutable)
        if not isinstance(mutable, bool):
            raise DataError(f"column '{name}': mutable must be true or false, got {mutable!r}")
        group = item.get("group", f.group)
        group = None if group is None else str(group)
        if np.isnan(lower) or np.isnan(upper) or lower > upper:
            raise DataError(f"column '{name}': bounds are inverted or invalid (lower {lower} > upper {upper})")
        if not (scale > 0 and np.isfinite(scale)):
            raise DataError(f"column '{name}': scale must be a finite number > 0, got {scale}")
        if group is not None and kind != "categorical":
            if "kind" in item:
                raise DataError(f"column '{name}': a one-hot group member must have kind 'categorical', not {kind!r}")
            kind = "categorical"
        if kind == "categorical" and group is not None:
            lower, upper = max(lower, 0.0), min(upper, 1.0)
            if lower > 0 or upper < 1:
                raise DataError(f"column '{name}': a one-hot column needs bounds that include 0 and 1")
        out[name] = FeatureSpec(name=name, kind=kind, lower=lower, upper=upper, mutable=mutable, scale=scale,
                                group=group)
    specs = [out[n] for n in names]
    _check_groups(specs)
    if x is not None:
        _check_against_data(specs, np.asarray(x, np.float64))
    return specs


def _check_groups(specs: list[FeatureSpec]) -> None:
    groups: dict[str, list[FeatureSpec]] = {}
    for f in specs:
        if f.group is not None:
            groups.setdefault(f.group, []).append(f)
    for g, members in groups.items():
        if len(members) < 2:
            raise DataError(f"one-hot group '{g}' has a single column ('{members[0].name}'); a group needs two or more")
        if len({f.mutable for f in members}) > 1:
            raise DataError(f"one-hot group '{g}' mixes mutable and immutable columns "
                            f"({', '.join(f.name for f in members)}); make the whole group one or the other")


def _check_against_data(specs: list[FeatureSpec], x: np.ndarray) -> None:
    if x.ndim != 2 or x.shape[1] != len(specs):
        raise DataError(f"data of shape {x.shape} does not match {len(specs)} feature constraints")
    index = {f.name: j for j, f in enumerate(specs)}
    for j, f in enumerate(specs):
        col = x[:, j]
        if f.group is not None:
            bad = ~np.isin(col, (0.0, 1.0))
            if bad.any():
                raise DataError(f"column '{f.name}' of one-hot group '{f.group}' holds values other than 0/1 "
                                f"(e.g. {col[bad][0]:.4g} in row {int(np.flatnonzero(bad)[0])})")
        elif f.kind != "continuous" and np.any(col != np.round(col)):
            raise DataError(f"column '{f.name}' is declared {f.kind} but holds non-integer values")
    groups: dict[str, list[int]] = {}
    for f in specs:
        if f.group is not None:
            groups.setdefault(f.group, []).append(index[f.name])
    for g, cols in groups.items():
        sums = x[:, cols].sum(axis=1)
        if np.any(sums != 1):
            row = int(np.flatnonzero(sums != 1)[0])
            raise DataError(f"one-hot group '{g}' does not have exactly one 1 per row "
                            f"(row {row} sums to {sums[row]:g})")


__all__ = ["DiscreteLayout", "FeatureSpec", "InputSpec", "constraints_from_config", "tabular_spec"]
