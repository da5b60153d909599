"""Extraction detectors on one client's stream: PRADA (Juuti et al. 2019) alarms on synthetic
Jacobian-style queries, the query-distribution signal (after Atli et al. 2020) on natural data from
another distribution, query coverage (after Kesarwani et al. 2018) on a long in-distribution stream
that neither of the others sees; none alarms on benign in-distribution streams; online equals offline."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bastion.errors import DataError, UsageError
from bastion.monitor import DETECTORS
from bastion.monitor.extraction import Prada, QueryCoverage, QueryDistribution

D, K = 16, 4


def _answers(x: np.ndarray) -> np.ndarray:
    """A fixed linear 'model': its one-hot labels are the answer columns of each row."""
    w = np.random.default_rng(42).normal(size=(D, K))
    return np.concatenate([x, np.eye(K)[(x @ w).argmax(1)]], axis=1)


def _natural(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return _answers(np.random.default_rng(seed).normal(size=(n, D)) + shift)


def _synthetic(n_seed: int, rounds: int, seed: int) -> np.ndarray:
    """Jacobian-style: a few natural seeds, then each round the last ones moved by ±λ per feature."""
    rng = np.random.default_rng(seed)
    cur = rng.normal(size=(n_seed, D))
    out = [cur]
    for _ in range(rounds):
        cur = cur + 0.1 * rng.choice([-1.0, 1.0], size=cur.shape)
        out.append(cur)
    return _answers(np.concatenate(out))


def _delay(det, stream: np.ndarray, window: int = 10) -> int | None:  # noqa: ANN001
    det.reset()
    for i in range(0, len(stream), window):
        if det.update(stream[i:i + window]):
            return i + window
    return None


def test_prada_alarms_on_synthetic_queries_not_on_natural_ones() -> None:
    det = Prada(outputs=K).fit(_natural(50, 0))
    assert all(_delay(det, _natural(300, s)) is None for s in range(1, 6))
    delay = _delay(det, _synthetic(20, 10, 7))
    assert delay is not None and delay <= 120
    det.reset()
    alert = [a for w in np.array_split(_synthetic(20, 10, 7), 22) for a in det.update(w)][0]
    assert alert.detector == "prada" and alert.score >= alert.threshold and "Shapiro-Wilk W" in alert.message


def test_query_distribution_alarms_on_another_distribution_only() -> None:
    det = QueryDistribution(outputs=K).fit(_natural(400, 0))
    assert all(_delay(det, _natural(1000, s)) is None for s in range(1, 6))
    delay = _delay(det, _natural(500, 9, shift=1.0))
    assert delay is not None and delay <= 100
    assert _delay(Prada(outputs=K).fit(_natural(50, 0)), _natural(500, 9, shift=1.0)) is None  # what PRADA misses


def test_online_and_offline_give_the_same_alerts() -> None:
    stream = _synthetic(20, 10, 3)
    windows = np.array_split(stream, 15)
    det = Prada(outputs=K).fit(_natural(50, 0))
    offline = det.scan(windows)
    det.reset()
    assert [a for w in windows for a in det.update(w)] == offline and offline


def test_bad_input_is_refused_with_what_and_why() -> None:
    det = QueryDistribution(outputs=K).fit(_natural(400, 0))
    with pytest.raises(DataError, match="rows of 10 values, but it was fitted on rows of 20"):
        det.update(np.zeros((3, 10)))
    with pytest.raises(DataError, match="at least 40 in-distribution inputs"):
        QueryDistribution().fit(np.zeros((10, 3)))
    with pytest.raises(DataError, match="cannot hold inputs and 4 answer columns"):
        Prada(outputs=4).fit(np.zeros((10, 4)))
    assert {"prada", "query-distribution"} <= set(DETECTORS)
    assert DETECTORS.get_object("prada") is Prada


def test_prada_skips_repeated_queries() -> None:
    """Regression: a benign client asking about the same 40 natural inputs again and again set PRADA
    off after 60 queries (each repeat added a distance 0); repeats now tell it nothing new."""
    det = Prada(outputs=K).fit(_natural(50, 0))
    assert _delay(det, np.tile(_natural(40, 6), (5, 1))) is None
    assert _delay(det, _natural(30, 5)[np.random.default_rng(0).integers(0, 30, 300)]) is None
    stream = _synthetic(20, 10, 7)
    assert _delay(det, np.concatenate([stream, stream])) == _delay(det, stream)  # still alarms on synthetic ones


def _naive_prada_w(stream: np.ndarray) -> float:
    """PRADA as the paper writes it: one query at a time, against the growing set of its class."""
    from scipy.stats import shapiro

    x, labels = stream[:, :-K], stream[:, -K:].argmax(1)
    grown: dict[int, list[np.ndarray]] = {}
    kept: dict[int, list[float]] = {}
    t: dict[int, float] = {}
    dist = []
    for row, c in zip(x, labels, strict=True):
        if c not in grown:
            grown[c], kept[c], t[c] = [row], [], 0.0
            continue
        d = min(float(np.linalg.norm(g - row)) for g in grown[c])
        dist.append(d)
        if d > t[c]:
            grown[c].append(row)
            kept[c].append(d)
            t[c] = max(t[c], float(np.mean(kept[c]) - np.std(kept[c])))
    return float(shapiro(dist).statistic)


def test_prada_in_batches_equals_the_papers_query_by_query_loop() -> None:
    stream = _synthetic(20, 10, 5)
    det = Prada(outputs=K, delta=0.999).fit(_natural(50, 0))
    (alert,) = det.update(stream)
    assert 1.0 - alert.score == pytest.approx(_naive_prada_w(stream), abs=1e-9)


def test_query_coverage_alarms_on_in_distribution_extraction_not_on_benign_sessions() -> None:
    det = QueryCoverage(outputs=K, session=50, cells=50).fit(_natural(400, 0))
    assert all(_delay(det, _natural(50, s)) is None for s in range(1, 21))  # benign sessions of the calibrated length
    few = _natural(10, 77)  # a benign client asking about the same few inputs, at length
    assert _delay(det, few[np.random.default_rng(3).integers(0, 10, 1000)]) is None
    attack = _natural(400, 30)  # Knockoff-style: natural data of the model's own distribution, at length
    delay = _delay(det, attack)
    assert delay is not None and 50 < delay <= 200
    assert _delay(Prada(outputs=K).fit(_natural(50, 0)), attack) is None  # what the other two signals miss
    assert _delay(QueryDistribution(outputs=K).fit(_natural(400, 0)), attack) is None
    windows = np.array_split(attack, 40)
    offline = det.scan(windows)
    det.reset()
    assert [a for w in windows for a in det.update(w)] == offline
    assert offline[0].detector == "query-coverage" and offline[0].score > offline[0].threshold
    assert "benign sessions of 50 queries" in offline[0].message


def test_query_coverage_sees_sybils_only_when_their_streams_are_fed_together() -> None:
    det = QueryCoverage(outputs=K, session=50, cells=50).fit(_natural(400, 0))
    attack = _natural(200, 31)
    clients = [copy.copy(det).reset() for _ in range(4)]  # one fit, a state per client
    for client, part in zip(clients, np.array_split(attack, 4), strict=True):
        assert not [a for w in np.array_split(part, 5) for a in client.update(w)]  # 50 queries each: benign-looking
    assert all(c.reference_ is det.reference_ for c in clients)  # a shared state would alarm by the 4th
    assert _delay(det, attack) is not None  # one instance for the 4 (Kesarwani et al.'s colluding users)


def test_query_coverage_refuses_what_cannot_work() -> None:
    with pytest.raises(UsageError, match="not fitted"):
        QueryCoverage(outputs=K).update(_natural(10, 1))
    det = QueryCoverage(outputs=K, session=50, cells=50).fit(_natural(400, 0))
    with pytest.raises(DataError, match="rows of 16 values, but it was fitted on rows of 20"):
        det.update(np.zeros((3, D)))
    with pytest.raises(DataError, match="reference has 300 inputs; with cells=50 and session=80 it needs at least 320"):
        QueryCoverage(outputs=K, session=80, cells=50).fit(_natural(300, 0))
    with pytest.raises(DataError, match="no client could stand out"):  # 4 cells: every session visits them all
        QueryCoverage(outputs=K, session=50, cells=4).fit(_natural(400, 0))
    with pytest.raises(UsageError, match="fpr"):
        QueryCoverage(fpr=0.0)
    assert DETECTORS.get_object("query-coverage") is QueryCoverage
