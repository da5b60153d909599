"""Shared plumbing of the query-based attacks: per-sample query accounting, the queries-vs-success
curve, budget exhaustion inside a batch, and the geometry of a target's inputs in ε units."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.attacks.base import Attack, AttackResult, ProgressFn
from bastion.core.targets.base import Target
from bastion.core.targets.http_target import EndpointError
from bastion.errors import QueryBudgetExceeded

log = logging.getLogger(__name__)

CURVE_POINTS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000)


@dataclass
class Box:
    """A target's inputs seen in ε units: ``z = x / scale``; immutable features never move."""

    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, target: Target) -> Box:
        spec = target.input_spec
        lo, hi = spec.bounds_arrays()
        scale = spec.scale_array().astype(np.float64)
        return cls(lo.astype(np.float64), hi.astype(np.float64), scale, spec.mutable_mask().astype(np.float64))

    def apply(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """``x + scale * delta`` on mutable features, clipped to the bounds (float64)."""
        return np.clip(x + self.scale * delta * self.mask, self.lo, self.hi)


def margins(probs: np.ndarray, goal: np.ndarray, targeted: bool) -> np.ndarray:
    """Margin loss on log-probabilities (equal to the logit margin): ``< 0`` means fooled.
    Untargeted: ``log p_y - max_{j != y} log p_j``; targeted: ``max_{j != t} log p_j - log p_t``."""
    logp = np.log(np.clip(probs, 1e-30, None))
    rows = np.arange(len(goal))
    own = logp[rows, goal]
    other = logp.copy()
    other[rows, goal] = -np.inf
    best_other = other.max(axis=1)
    return best_other - own if targeted else own - best_other


class QueryAttack(Attack):
    """Base of the score- and decision-based attacks: ``max_queries`` per sample, the queries each
    sample spent, the query curve in ``extra["query_curve"]``, and a partial result when the
    target's hard budget runs out mid-batch."""

    family = "evasion-blackbox"
    needs_gradients = False

    def __init__(self, *, max_queries: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from bastion.errors import UsageError

        if int(max_queries) < 1:
            raise UsageError(f"max_queries must be >= 1, got {max_queries}")
        self.max_queries = int(max_queries)
        self._fooled_at: list[np.ndarray] = []
        self._spent: list[np.ndarray] = []
        self._budget_reason: str | None = None

    def _query(self, target: Target, x: np.ndarray) -> np.ndarray:
        """One batched query: probabilities for ``x`` (float64 in, float32 sent)."""
        return target.predict_proba(np.asarray(x, np.float32))

    def _record(self, fooled_at: np.ndarray, spent: np.ndarray) -> None:
        self._fooled_at.append(np.asarray(fooled_at, np.float64))
        self._spent.append(np.asarray(spent, np.int64))

    def _budget_hit(self, exc: QueryBudgetExceeded | EndpointError) -> None:
        """Stop querying (budget spent or endpoint failing); the batch keeps its best points and
        later batches are not attacked."""
        if self._budget_reason is None:
            what = "query budget exhausted" if isinstance(exc, QueryBudgetExceeded) else "the endpoint failed"
            self._budget_reason = f"{what}: {exc}"
            log.warning("%s: %s; keeping the best points found so far", self.name, self._budget_reason)

    @property
    def halted(self) -> bool:
        """True once the budget ran out or the endpoint failed during this run."""
        return self._budget_reason is not None

    def _run(self, target: Target, x: np.ndarray, y: np.ndarray, *, y_target: np.ndarray | None,
             progress: ProgressFn | None, query_budget: int | None) -> AttackResult:
        self._fooled_at, self._spent, self._budget_reason = [], [], None
        res = super()._run(target, x, y, y_target=y_target, progress=progress, query_budget=query_budget)
        if self._budget_reason and (res.complete or "interrupted" not in (res.reason or "")):
            res.complete, res.reason = False, self._budget_reason
        fooled_at = np.concatenate(self._fooled_at) if self._fooled_at else np.zeros(0)
        spent = np.concatenate(self._spent) if self._spent else np.zeros(0, np.int64)
        res.extra["query_curve"] = query_curve(fooled_at, self.max_queries)
        res.extra["queries_per_sample"] = {
            "attacked": int(len(spent)),
            "median": float(np.median(spent)) if len(spent) else None,
            "max": int(spent.max()) if len(spent) else None,
        }
        qlog = getattr(target, "query_log", None)
        if isinstance(qlog, dict):
            res.extra["query_log"] = dict(qlog)
        return res


def query_curve(fooled_at: np.ndarray, max_queries: int) -> dict[str, list[Any]]:
    """Success rate (over the attacked samples) against the per-sample queries spent."""
    points = sorted({q for q in CURVE_POINTS if q < max_queries} | {max_queries})
    n = max(len(fooled_at), 1)
    return {"queries": [int(q) for q in points],
            "success_rate": [float(np.sum(fooled_at <= q) / n) if len(fooled_at) else 0.0 for q in points]}
