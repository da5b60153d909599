"""Shared plumbing of the query-based attacks: per-sample query accounting, the queries-vs-success
curve, budget exhaustion inside a batch, and the geometry of a target's inputs in ε units."""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

import numpy as np
from pydantic import Field

from bastion.attacks.base import MAX_QUERIES, AttackParams, AttackResult, AttackRun, EvasionAttack
from bastion.core.targets.base import Target
from bastion.errors import BastionRuntimeError, QueryBudgetExceeded

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


def margins(logp: np.ndarray, goal: np.ndarray, targeted: bool) -> np.ndarray:
    """Margin loss on log-probabilities (``Target.predict_log_proba``; equal to the logit margin,
    the loss of Andriushchenko et al. 2020): ``< 0`` means fooled.
    Untargeted: ``log p_y - max_{j != y} log p_j``; targeted: ``max_{j != t} log p_j - log p_t``."""
    rows = np.arange(len(goal))
    own = logp[rows, goal]
    other = logp.copy()
    other[rows, goal] = -np.inf
    best_other = other.max(axis=1)
    return best_other - own if targeted else own - best_other


class QueryAttackParams(AttackParams):
    max_queries: int = Field(1000, ge=1, le=MAX_QUERIES, description="Queries per sample.")


@dataclass
class QueryState:
    """Per run: when each attacked sample was first fooled (query number) and the queries it spent."""

    fooled_at: list[np.ndarray] = field(default_factory=list)
    spent: list[np.ndarray] = field(default_factory=list)


class QueryAttack(EvasionAttack):
    """Base of the score- and decision-based attacks: ``max_queries`` per sample, the queries each
    sample spent, the query curve in ``extra["query_curve"]``, and a partial result when the
    budget runs out or the target fails mid-batch (the batch keeps its best points; later batches
    are not attacked)."""

    family = "evasion-blackbox"
    needs_gradients = False
    Params: ClassVar[type[AttackParams]] = QueryAttackParams

    def _begin(self, run: AttackRun, target: Target) -> None:
        run.state = QueryState()

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        fooled_at, spent = np.full(len(x), np.inf), np.zeros(len(x), np.int64)
        out = x
        if run.stop is None:  # budget spent or target failing: later batches are left as they are
            try:
                out = self._search(target, x, goal, rows, run, fooled_at, spent)
            except _Halt as halt:
                out = halt.best
        run.state.fooled_at.append(fooled_at)
        run.state.spent.append(spent)
        return out

    @abstractmethod
    def _search(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray, run: AttackRun,
                fooled_at: np.ndarray, spent: np.ndarray) -> np.ndarray:
        """The attack on one batch; fills ``fooled_at`` (query at which each sample was first fooled)
        and ``spent``; on a failed query calls :meth:`halt` with the best points so far."""

    def halt(self, run: AttackRun, exc: BastionRuntimeError, best: np.ndarray) -> NoReturn:
        """Stop querying (budget spent or target failing), keeping ``best`` for this batch."""
        if run.stop is None:
            what = "query budget exhausted" if isinstance(exc, QueryBudgetExceeded) else "the target failed"
            run.stop = f"{what}: {exc}"
            log.warning("%s: %s; keeping the best points found so far", self.name, run.stop)
        raise _Halt(best)

    def _end(self, run: AttackRun, res: AttackResult) -> None:
        st: QueryState = run.state
        fooled_at = np.concatenate(st.fooled_at) if st.fooled_at else np.zeros(0)
        spent = np.concatenate(st.spent) if st.spent else np.zeros(0, np.int64)
        res.extra["query_curve"] = query_curve(fooled_at, self.max_queries)
        res.extra["queries_per_sample"] = {
            "attacked": int(len(spent)),
            "median": float(np.median(spent)) if len(spent) else None,
            "max": int(spent.max()) if len(spent) else None,
        }


class _Halt(Exception):
    def __init__(self, best: np.ndarray) -> None:
        super().__init__("halted")
        self.best = best


def query_curve(fooled_at: np.ndarray, max_queries: int) -> dict[str, list[Any]]:
    """Success rate (over the attacked samples) against the per-sample queries spent."""
    points = sorted({q for q in CURVE_POINTS if q < max_queries} | {max_queries})
    n = max(len(fooled_at), 1)
    return {"queries": [int(q) for q in points],
            "success_rate": [float(np.sum(fooled_at <= q) / n) if len(fooled_at) else 0.0 for q in points]}
