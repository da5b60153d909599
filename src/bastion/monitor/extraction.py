"""Extraction detectors: watch one client's stream of queries for a model-stealing attack.

One detector instance follows one client (the guard keeps one per client; ``scan`` replays a
recorded client stream). A window's rows are the client's queries in order, each an input
flattened, followed by the model's ``outputs`` answer columns (its probabilities or one-hot label)
when the detector needs the predicted class.

- :class:`Prada` (Juuti et al. 2019, "PRADA: Protecting against DNN Model Stealing Attacks",
  arXiv:1805.02628): for each query, the minimum L2 distance to the client's earlier queries of the
  same predicted class (its growing set); natural queries give distances that look normally
  distributed, the synthetic ones of Jacobian-style attacks do not. Alarm when the Shapiro-Wilk
  statistic W of those distances drops below ``delta``.
- :class:`QueryDistribution` (after Atli et al. 2020, "Extraction of Complex DNN Models: Real
  Threat or Boogeyman?", arXiv:1910.05429): Knockoff-style attackers query natural data from
  another distribution than the model's (they lack its training data), which PRADA misses. Fitted
  on in-distribution reference data, a query is "novel" when its distance to the nearest reference
  input exceeds the ``quantile`` of the reference's own; alarm when the client's share of novel
  queries is too high to be chance (exact binomial tail below ``alpha``).

Neither signal separates an attacker who owns data from the model's own distribution from a
benign client of the same distribution: their queries are alike, query by query. Against that
attacker only per-client query budgets help (bastion's extraction check measures the fidelity a
budget still allows).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from bastion.core.params import Params
from bastion.core.stats import binom_sf
from bastion.errors import DataError
from bastion.monitor.base import Alert, Detector


class StreamParams(Params):
    outputs: int = Field(0, ge=0, description="answer columns at the end of each row (the model's probabilities "
                                              "or one-hot label); 0: inputs only")
    min_queries: int = Field(50, ge=3, le=1_000_000, description="queries seen before the test may alarm")


class _ClientDetector(Detector):
    """Shared by the extraction detectors: rows of inputs and answers, and a width fixed by the fit."""

    Params: ClassVar[type[StreamParams]] = StreamParams

    def _split(self, window: np.ndarray, *, fitted: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and predicted classes of a window's rows (class 0 when there are no answer
        columns); once fitted, rows must be as wide as the reference's."""
        k = self.params.outputs
        if fitted and window.shape[1] != self.reference_["width"]:
            raise DataError(f"detector '{self.label}': rows of {window.shape[1]} values, but it was fitted on rows "
                            f"of {self.reference_['width']} (inputs and {k} answer columns)")
        if k and window.shape[1] <= k:
            raise DataError(f"detector '{self.label}': rows of {window.shape[1]} values cannot hold inputs and "
                            f"{k} answer columns")
        if not k:
            return window, np.zeros(len(window), np.int64)
        return window[:, :-k], window[:, -k:].argmax(1)


# --- PRADA ----------------------------------------------------------------------------------------
class PradaParams(StreamParams):
    delta: float = Field(0.9, gt=0, lt=1, description="alarm when the Shapiro-Wilk W of the distances is below this")


@dataclass
class _PradaState:
    growing: dict[int, np.ndarray] = field(default_factory=dict)        # class -> its growing set (rows)
    kept: dict[int, list[float]] = field(default_factory=dict)          # class -> distances of the kept queries
    threshold: dict[int, float] = field(default_factory=dict)           # class -> T_c
    distances: list[float] = field(default_factory=list)                # D: every query's minimum distance


class Prada(_ClientDetector):
    """PRADA: the Shapiro-Wilk normality of each query's distance to the client's earlier ones."""

    name = "prada"
    Params = PradaParams

    def _fit(self, reference: np.ndarray) -> Any:
        self._split(reference, fitted=False)
        return {"width": reference.shape[1]}

    def _initial_state(self) -> _PradaState:
        return _PradaState()

    @staticmethod
    def _grow(rows: np.ndarray, c: int, state: _PradaState) -> None:
        """PRADA's loop over one class's queries of a window, in order: distances to the growing set
        as it was before the window in one batch, then to the rows this window added."""
        grown = state.growing.get(c)
        before = (np.full(len(rows), np.inf) if grown is None else np.sqrt(np.maximum(
            (rows ** 2).sum(1)[:, None] - 2 * rows @ grown.T + (grown ** 2).sum(1)[None], 0.0)).min(1))
        added: list[np.ndarray] = []
        for row, dmin in zip(rows, before.tolist(), strict=True):
            if added:
                dmin = min(dmin, float(np.sqrt(((np.stack(added) - row) ** 2).sum(1).min())))
            if not np.isfinite(dmin):  # the class's first query starts its growing set
                added.append(row)
                state.kept[c], state.threshold[c] = [], 0.0
                continue
            state.distances.append(dmin)
            if dmin > state.threshold[c]:
                added.append(row)
                kept = state.kept[c]
                kept.append(dmin)
                state.threshold[c] = max(state.threshold[c], float(np.mean(kept) - np.std(kept)))
        if added:
            state.growing[c] = np.concatenate([g for g in (grown, np.stack(added)) if g is not None])

    def _update(self, window: np.ndarray, state: _PradaState) -> list[Alert]:
        from scipy.stats import shapiro

        x, labels = self._split(window)
        for c in np.unique(labels).tolist():
            self._grow(x[labels == c], c, state)
        if len(state.distances) < self.params.min_queries:
            return []
        with warnings.catch_warnings():  # scipy warns that its p-value is rough past 5000 values; W is not
            warnings.simplefilter("ignore")
            w = float(shapiro(np.asarray(state.distances)).statistic)
        p: PradaParams = self.params  # type: ignore[assignment]
        if not np.isfinite(w) or w >= p.delta:
            return []
        return [Alert(detector=self.label, score=1.0 - w, threshold=1.0 - p.delta,
                      message=f"distances between this client's queries are not normally distributed (Shapiro-Wilk "
                              f"W = {w:.3f} < {p.delta} over {len(state.distances)} queries): synthetic queries, "
                              "as in a Jacobian-augmentation extraction attack")]


# --- query distribution ---------------------------------------------------------------------------
class QueryDistributionParams(StreamParams):
    quantile: float = Field(0.95, gt=0.5, lt=1, description="a query is novel past this quantile of in-distribution "
                                                            "nearest-neighbour distances")
    alpha: float = Field(1e-6, gt=0, lt=0.5, description="alarm when the binomial tail of the novel count is below "
                                                         "this (small: the test is repeated at every window)")


@dataclass
class _CountState:
    seen: int = 0
    novel: int = 0


class QueryDistribution(_ClientDetector):
    """The share of a client's queries far from the model's data (out-of-distribution natural data)."""

    name = "query-distribution"
    Params = QueryDistributionParams

    def _fit(self, reference: np.ndarray) -> Any:
        """Half of the reference is the neighbourhood; the other half calibrates the novelty threshold."""
        p: QueryDistributionParams = self.params  # type: ignore[assignment]
        x, _ = self._split(reference, fitted=False)
        if len(x) < 40:
            raise DataError(f"detector '{self.label}': the reference needs at least 40 in-distribution inputs, "
                            f"got {len(x)}")
        order = np.random.default_rng(0).permutation(len(x))
        near, calib = x[order[: len(x) // 2]], x[order[len(x) // 2:]]
        scale = np.where(near.std(axis=0) > 1e-9, near.std(axis=0), 1.0)
        state = {"width": reference.shape[1], "near": near / scale, "scale": scale}
        state["threshold"] = float(np.quantile(self._nearest(calib, state), p.quantile))
        return state

    @staticmethod
    def _nearest(x: np.ndarray, fit: dict[str, Any]) -> np.ndarray:
        """Each input's distance to its nearest reference input (standardised features), in blocks."""
        near, z = fit["near"], x / fit["scale"]
        sq = (near ** 2).sum(1)
        out = [np.sqrt(np.maximum(((b ** 2).sum(1)[:, None] - 2 * b @ near.T + sq[None]).min(1), 0.0))
               for b in np.array_split(z, max(1, len(z) // 1024 + 1))]
        return np.concatenate(out)

    def _initial_state(self) -> _CountState:
        return _CountState()

    def _update(self, window: np.ndarray, state: _CountState) -> list[Alert]:
        p: QueryDistributionParams = self.params  # type: ignore[assignment]
        x, _ = self._split(window)
        fit = self.reference_
        state.seen += len(x)
        state.novel += int((self._nearest(x, fit) > fit["threshold"]).sum())
        if state.seen < p.min_queries:
            return []
        tail = binom_sf(state.novel, state.seen, 1.0 - p.quantile)
        if tail >= p.alpha:
            return []
        score = -np.log10(max(tail, 1e-300))
        return [Alert(detector=self.label, score=float(score), threshold=float(-np.log10(p.alpha)),
                      message=f"{state.novel} of this client's {state.seen} queries lie far from the model's data "
                              f"(expected {1 - p.quantile:.0%}; binomial tail {tail:.1e}): out-of-distribution queries, "
                              "as in a Knockoff or Copycat extraction attack")]
