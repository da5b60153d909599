"""HopSkipJump: decision-based (labels only), always adversarial, distances shrink with queries,
budgets per sample, same answer whether the target returns scores or labels."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks import HopSkipJump, get_attack
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.threat import ThreatModel
from bastion.errors import UsageError


@pytest.fixture(scope="module")
def scores(digits_target):  # noqa: ANN001, ANN201
    import torch

    torch.set_num_threads(1)
    return CallableTarget(lambda z: digits_target.predict_proba(z), list(range(10)), digits_target.input_spec)


@pytest.fixture(scope="module")
def labels(digits_target):  # noqa: ANN001, ANN201
    t = CallableTarget(lambda z: np.eye(10)[digits_target.predict_proba(z).argmax(1)], list(range(10)),
                       digits_target.input_spec)
    t.label_only = True  # type: ignore[attr-defined]
    return t


@pytest.fixture(scope="module")
def xy(digits_data):  # noqa: ANN001, ANN201
    return digits_data.x[:24], digits_data.y[:24]


def test_registered_minimal_decision_based() -> None:
    a = get_attack("hopskipjump", max_queries=100)
    assert isinstance(a, HopSkipJump) and a.minimal and not a.needs_gradients and a.family == "evasion-blackbox"
    for bad in ({"init_evals": 0}, {"gamma": 0}, {"init_trials": 0}, {"max_evals": 5, "init_evals": 10}):
        with pytest.raises(UsageError):
            HopSkipJump(**bad)


def test_labels_only_give_the_same_answer_as_scores(scores, labels, xy) -> None:  # noqa: ANN001
    x, y = xy
    a = HopSkipJump(max_queries=250, seed=1).run(scores, x, y)
    b = HopSkipJump(max_queries=250, seed=1).run(labels, x, y)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert a.eps is None  # a minimal attack reports no ε


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_more_queries_smaller_perturbations(scores, xy, norm: str) -> None:  # noqa: ANN001
    x, y = xy
    short = HopSkipJump(norm=norm, max_queries=120).run(scores, x, y)
    long = HopSkipJump(norm=norm, max_queries=700).run(scores, x, y)
    ok = short.clean_pred == y
    assert short.success[ok].all() and long.success[ok].all()  # always returns adversarial points
    assert long.x_adv.min() >= 0 and long.x_adv.max() <= 1
    m_short, m_long = np.median(short.norms[norm][ok]), np.median(long.norms[norm][ok])
    assert m_long < 0.8 * m_short
    spent = long.extra["queries_per_sample"]
    assert spent["max"] <= 700 and spent["attacked"] == ok.sum()
    assert long.queries <= len(x) + 700 * ok.sum()
    curve = long.extra["query_curve"]
    assert curve["success_rate"][-1] == pytest.approx(1.0) and np.all(np.diff(curve["success_rate"]) >= 0)


def test_beats_the_noise_start(scores, xy) -> None:  # noqa: ANN001
    """Far better than the random starting points: the median L2 drops well below theirs."""
    x, y = xy
    res = HopSkipJump(max_queries=600).run(scores, x, y)
    ok = res.clean_pred == y
    start = HopSkipJump(max_queries=60).run(scores, x, y)  # little more than the initial search
    assert np.median(res.norms["l2"][ok]) < 0.6 * np.median(start.norms["l2"][ok])


def test_hard_budget_partial(scores, xy) -> None:  # noqa: ANN001
    x, y = xy
    res = HopSkipJump(max_queries=500, batch_size=8).run(scores, x, y, ThreatModel(query_budget=600))
    assert not res.complete and "budget" in res.reason and res.queries <= 600
