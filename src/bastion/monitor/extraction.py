"""Extraction detectors: watch one client's stream of queries for a model-stealing attack.

One detector instance follows one client (the guard keeps one per client; ``scan`` replays a
recorded client stream). A window's rows are the client's queries in order, each an input
flattened, followed by the model's ``outputs`` answer columns (its probabilities or one-hot label)
when the detector needs the predicted class.

- :class:`Prada` (Juuti et al. 2019, "PRADA: Protecting against DNN Model Stealing Attacks",
  arXiv:1805.02628): for each query, the minimum L2 distance to the client's earlier queries of the
  same predicted class (its growing set); natural queries give distances that look normally
  distributed, the synthetic ones of Jacobian-style attacks do not. Alarm when the Shapiro-Wilk
  statistic W of those distances drops below ``delta``. An exact repeat of one of the client's
  earlier queries is skipped: it tells the client nothing, and its distance 0 would set the test off
  on benign clients that repeat queries.
- :class:`QueryDistribution` (after Atli et al. 2020, "Extraction of Complex DNN Models: Real
  Threat or Boogeyman?", arXiv:1910.05429): Knockoff-style attackers query natural data from
  another distribution than the model's (they lack its training data), which PRADA misses. Fitted
  on in-distribution reference data, a query is "novel" when its distance to the nearest reference
  input exceeds the ``quantile`` of the reference's own; alarm when the client's share of novel
  queries is too high to be chance (exact binomial tail below ``alpha``).
- :class:`QueryCoverage` (after Kesarwani et al. 2018, "Model Extraction Warning in MLaaS
  Paradigm", ACSAC, arXiv:1711.07221: the extraction status of a client measured by how much of the
  feature space its queries cover): the owner's data is partitioned into cells per predicted class
  (k-means); alarm when the share of the model's data lying in cells the client has visited exceeds
  what benign sessions of ``session`` queries reach (calibrated at fit, false-alarm rate ``fpr``).

The first two compare a client's queries, one by one, with the model's data: an attacker who owns
data of the model's own distribution looks like a benign client to them. Coverage catches that
attacker by what it must do to copy the model, query all of its decision space; it cannot tell
such an attacker from a benign client with a long, varied session, nor see an attacker who spreads
queries over many clients (sybils) unless their streams are fed to one instance.
"""

from __future__ import annotations

import hashlib
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


def _scale(x: np.ndarray) -> np.ndarray:
    """Per-feature standard deviations of reference inputs (1 where a feature is constant)."""
    sd = x.std(axis=0)
    return np.where(sd > 1e-9, sd, 1.0)


# --- PRADA ----------------------------------------------------------------------------------------
class PradaParams(StreamParams):
    delta: float = Field(0.9, gt=0, lt=1, description="alarm when the Shapiro-Wilk W of the distances is below this")


@dataclass
class _PradaState:
    growing: dict[int, np.ndarray] = field(default_factory=dict)        # class -> its growing set (rows)
    kept: dict[int, list[float]] = field(default_factory=dict)          # class -> distances of the kept queries
    threshold: dict[int, float] = field(default_factory=dict)           # class -> T_c
    distances: list[float] = field(default_factory=list)                # D: every query's minimum distance
    asked: set[bytes] = field(default_factory=set)                      # digests of the queries seen


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

    @staticmethod
    def _new(x: np.ndarray, asked: set[bytes]) -> np.ndarray:
        """Which rows are not exact repeats of a query asked before (or earlier in the window); adds them."""
        new = np.zeros(len(x), bool)
        for i, row in enumerate(x):
            key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            if key not in asked:
                asked.add(key)
                new[i] = True
        return new

    def _update(self, window: np.ndarray, state: _PradaState) -> list[Alert]:
        from scipy.stats import shapiro

        x, labels = self._split(window)
        new = self._new(x, state.asked)
        x, labels = x[new], labels[new]
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
        scale = _scale(near)
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


# --- query coverage -------------------------------------------------------------------------------
class QueryCoverageParams(StreamParams):
    session: int = Field(200, ge=10, le=1_000_000, description="queries a benign client may send without an alarm "
                                                               "(the calibrated session length)")
    cells: int = Field(200, ge=2, le=100_000, description="cells of the partition of the model's data (about "
                                                          "`session`: fewer saturate, more need more reference data)")
    fpr: float = Field(0.001, ge=1e-4, lt=0.5, description="share of benign sessions of `session` queries that may "
                                                            "alarm (calibrated on 10 / fpr simulated sessions, at least 1,000)")


@dataclass
class _CoverageState:
    visited: np.ndarray  # cell -> visited by this client
    seen: int = 0


class QueryCoverage(_ClientDetector):
    """The share of the model's data in regions one client's queries have visited (feature-space
    coverage, after Kesarwani et al. 2018), against what benign sessions of ``session`` queries reach."""

    name = "query-coverage"
    Params = QueryCoverageParams

    def _fit(self, reference: np.ndarray) -> Any:
        """Half of the reference is partitioned (k-means per predicted class) and weighs the cells;
        benign sessions drawn from the other half, without replacement, calibrate the threshold."""
        from sklearn.cluster import KMeans

        p: QueryCoverageParams = self.params  # type: ignore[assignment]
        x, labels = self._split(reference, fitted=False)
        need = 2 * max(p.cells, p.session)
        if len(x) < 2 * need:
            raise DataError(f"detector '{self.label}': the reference has {len(x)} inputs; with cells={p.cells} and "
                            f"session={p.session} it needs at least {2 * need} (half partitioned into cells, half "
                            "for calibration)", hint="pass more in-distribution reference data or lower cells/session")
        order = np.random.default_rng(0).permutation(len(x))
        part, calib = order[: len(x) // 2], order[len(x) // 2:]
        fit: dict[str, Any] = {"width": reference.shape[1], "scale": _scale(x[part])}
        z, lab = x[part] / fit["scale"], labels[part]
        centres, owner = [], []
        with warnings.catch_warnings():  # duplicated inputs give fewer distinct cells than asked: harmless
            warnings.simplefilter("ignore")
            for c, n_c in zip(*np.unique(lab, return_counts=True), strict=True):
                k = int(min(n_c, max(1, round(p.cells * n_c / len(part)))))
                centres.append(KMeans(k, n_init=3, random_state=0).fit(z[lab == c]).cluster_centers_)
                owner += [int(c)] * k
        fit["centres"], fit["owner"] = np.concatenate(centres), np.asarray(owner)
        fit["weight"] = np.bincount(self._cells(x[part], lab, fit), minlength=len(owner)) / len(part)
        pool = calib[: 20 * p.session]  # enough for sessions without replacement; the correction does the rest
        fit["threshold"] = self._calibrate(self._cells(x[pool], labels[pool], fit), fit["weight"])
        if fit["threshold"] > 0.99:
            raise DataError(f"detector '{self.label}': benign sessions of {p.session} queries already visit cells "
                            f"holding up to {fit['threshold']:.1%} of the data, so no client could stand out",
                            hint=f"use more cells (about session={p.session}) or a shorter session")
        return fit

    def _calibrate(self, cells: np.ndarray, weight: np.ndarray) -> float:
        """The (1 - fpr) quantile of the coverage of simulated benign sessions, its spread widened by
        the finite-population correction (sessions are drawn without replacement from ``cells``)."""
        p: QueryCoverageParams = self.params  # type: ignore[assignment]
        rng, sessions = np.random.default_rng(1), max(1000, int(np.ceil(10 / p.fpr)))
        cov = []
        for n in np.diff(np.append(np.arange(0, sessions, 1000), sessions)):  # blocks of 1,000 sessions
            draws = rng.random((n, len(cells))).argsort(axis=1)[:, : p.session]
            hit = np.zeros((n, len(weight)), bool)
            hit[np.arange(n)[:, None], cells[draws]] = True
            cov.append(hit @ weight)
        cov = np.concatenate(cov)
        mean = float(cov.mean())
        fpc = np.sqrt((len(cells) - 1) / (len(cells) - p.session))
        return min(1.0, mean + fpc * (float(np.quantile(cov, 1.0 - p.fpr)) - mean))

    @staticmethod
    def _cells(x: np.ndarray, labels: np.ndarray, fit: dict[str, Any]) -> np.ndarray:
        """Each input's cell: the nearest centre among its predicted class's (among all centres when
        the reference had no input of that class), in blocks."""
        centres, owner = fit["centres"], fit["owner"]
        sq = (centres ** 2).sum(1)
        known = np.isin(labels, owner)
        out = []
        for idx in np.array_split(np.arange(len(x)), max(1, len(x) // 1024 + 1)):
            z = x[idx] / fit["scale"]
            d = (z ** 2).sum(1)[:, None] - 2 * z @ centres.T + sq[None]
            d = np.where(known[idx, None] & (owner[None] != labels[idx, None]), np.inf, d)
            out.append(d.argmin(1))
        return np.concatenate(out)

    def _initial_state(self) -> _CoverageState:
        return _CoverageState(visited=np.zeros(len(self.reference_["owner"]), bool))

    def _update(self, window: np.ndarray, state: _CoverageState) -> list[Alert]:
        p: QueryCoverageParams = self.params  # type: ignore[assignment]
        x, labels = self._split(window)
        fit = self.reference_
        state.visited[self._cells(x, labels, fit)] = True
        state.seen += len(x)
        coverage = float(fit["weight"] @ state.visited)
        if state.seen < p.min_queries or coverage <= fit["threshold"]:
            return []
        return [Alert(detector=self.label, score=coverage, threshold=fit["threshold"],
                      message=f"this client's {state.seen} queries have visited regions holding {coverage:.1%} of the "
                              f"model's data; benign sessions of {p.session} queries reach {fit['threshold']:.1%} at "
                              f"most (false-alarm rate {p.fpr}): the spread of a learning-based extraction attack "
                              "(Knockoff, Copycat), also with data of the model's own distribution")]
