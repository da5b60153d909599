"""Randomised answers averaged over repeated queries (bastion.core.repeated): membership inference and
extraction behind output noise ask each input as often as the defense declares, every repeat counted;
a deterministic target is asked once."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bastion.attacks.extraction import get_extraction_attack
from bastion.attacks.privacy import MembershipSplits, get_membership_attack
from bastion.core.defense import DEFENSES, harden_like
from bastion.core.repeated import REPEATS_DEFAULT, RepeatedQueries, query_repeats
from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.training import TrainRequest, sklearn_train_fn
from bastion.errors import QueryBudgetExceeded

D = 128


def records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.15 * rng.normal(size=(n, D)) + 0.03 * (2 * y[:, None] - 1), 0, 1)
    return x.astype(np.float32), y


def overfit() -> tuple[Target, MembershipSplits]:
    """A logistic regression on 128 features fitted to 40 records: members get higher, but not
    saturated, probabilities of their label (the leak lives where noise can hide it)."""
    (xm, ym), (xn, yn) = records(40, 0), records(200, 1)
    spec = InputSpec(shape=(D,), lower=0.0, upper=1.0)
    target = sklearn_train_fn(LogisticRegression(C=1.0, max_iter=2000))(
        TrainRequest(xm, ym, seed=0, input_spec=spec, classes=[0, 1]))
    return target, MembershipSplits(xm, ym, xn, yn)


NOISE = {"scale": 0.2, "eot_samples": 64}


def test_the_averaging_attacker_gets_back_what_single_queries_lose() -> None:
    target, splits = overfit()
    noisy = DEFENSES["output-noise"](**NOISE).wrap(target, seed=0)
    n = len(splits.members_x) + len(splits.non_members_x)
    clear = get_membership_attack("loss-threshold").run(target, splits)
    once = get_membership_attack("loss-threshold", repeats=1).run(noisy, splits)
    averaged = get_membership_attack("loss-threshold").run(noisy, splits)  # the defense declares 64 draws
    assert clear.auc > 0.75 and clear.repeats == 1 and clear.queries == n
    assert once.auc < clear.auc - 0.1 and once.queries == n
    assert abs(averaged.auc - clear.auc) < 0.05
    assert averaged.repeats == 64 and averaged.queries == 64 * n and "asked 64 times" in averaged.notes[0]


def test_a_deterministic_defense_is_asked_once_per_input() -> None:
    target, splits = overfit()
    rounded = DEFENSES["rounding"](decimals=2).wrap(target)
    n = len(splits.members_x) + len(splits.non_members_x)
    res = get_membership_attack("confidence-threshold").run(rounded, splits)
    assert res.repeats == 1 and res.queries == n == rounded.queries and res.notes == []
    ext = get_extraction_attack("knockoff", queries=160, rounds=1, epochs=2).run(rounded, splits.non_members_x)
    assert ext.repeats == 1 and ext.queries == 160


def test_extraction_repeats_within_its_query_budget() -> None:
    target, splits = overfit()
    noisy = DEFENSES["output-noise"](scale=0.2).wrap(target, seed=0)  # eot_samples 16 by default
    ext = get_extraction_attack("knockoff", queries=160, rounds=2, epochs=2).run(noisy, splits.non_members_x)
    assert ext.repeats == 16 and ext.queries == 160 and ext.curve.queries == [80, 160]  # 10 inputs, 16 queries each
    capped = get_extraction_attack("knockoff", rounds=1, epochs=2).run(noisy, splits.non_members_x,
                                                                      ThreatModel(query_budget=100))
    assert capped.queries == 96  # the budget buys 6 inputs asked 16 times


def test_repeats_are_counted_against_the_budget() -> None:
    target, splits = overfit()
    noisy = DEFENSES["output-noise"](scale=0.2).wrap(target, seed=0)
    with pytest.raises(QueryBudgetExceeded):
        get_membership_attack("loss-threshold").run(noisy, splits, ThreatModel(query_budget=1000))
    assert get_membership_attack("loss-threshold").run(noisy, splits, ThreatModel(query_budget=240 * 16)).queries \
        == 240 * 16


class Noisy(Target):
    """A model whose answers carry fresh noise, with undeclared randomness (``remote`` optional)."""

    def __init__(self, remote: bool = False) -> None:
        super().__init__([0, 1], InputSpec(shape=(2,), lower=0.0, upper=1.0))
        self.remote, self.rng = remote, np.random.default_rng(0)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = np.clip(x[:, 0] + self.rng.normal(0, 0.1, len(x)), 0, 1)
        return np.column_stack([1 - p, p])


def test_how_many_repeats_comes_from_the_declarations() -> None:
    target, splits = overfit()
    x = splits.members_x
    assert query_repeats(target, None, x) == 1  # deterministic: probed locally, asked once
    assert query_repeats(DEFENSES["output-noise"](eot_samples=8).wrap(target), None, x) == 8
    assert query_repeats(DEFENSES["reverse-sigmoid"]().wrap(target), None, x) == 1
    assert query_repeats(DEFENSES["output-noise"]().wrap(target), 3, x) == 3  # the attack's own choice
    xs = np.full((4, 2), 0.5, np.float32)
    assert query_repeats(Noisy(), None, xs) == REPEATS_DEFAULT  # found randomised by two identical calls
    assert query_repeats(Noisy(remote=True), None, xs) == 1  # a remote target is not probed...
    declared = Noisy(remote=True)
    declared.randomized = True
    assert query_repeats(declared, None, xs) == REPEATS_DEFAULT  # ...it is declared randomised


def test_the_view_averages_answers_and_their_logs() -> None:
    target = Noisy()
    view = RepeatedQueries(target, 200)
    x = np.full((3, 2), 0.3, np.float32)
    p = view.predict_proba(x)
    assert np.allclose(p[:, 1], 0.3, atol=0.03) and target.queries == 600 == view.queries
    target.rng = np.random.default_rng(1)
    q = view.predict_proba(x)
    target.rng = np.random.default_rng(1)
    assert np.allclose(np.exp(view.predict_log_proba(x)), q)  # log-mean-exp of the same draws
    with view.uncounted():
        view.predict_proba(x)
    assert target.queries == 1800  # 3 counted calls of 3 inputs × 200


def test_shadow_answers_are_averaged_like_the_targets() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(2), size=(3, 200))
    noisy = DEFENSES["output-noise"](scale=0.2).wrap(Noisy())
    one = np.exp(harden_like(noisy, np.log(p), np.random.default_rng(1)))
    many = np.exp(harden_like(noisy, np.log(p), np.random.default_rng(1), draws=64))
    assert many.shape == p.shape and np.allclose(many.sum(-1), 1)
    assert np.std(many - p) < 0.5 * np.std(one - p)


def test_attribute_inference_averages_repeated_answers_too() -> None:
    """Fredrikson's attack on a forest that memorised its records: noise on the answers hides the
    sensitive column from one query per candidate, not from 64."""
    from sklearn.ensemble import RandomForestClassifier

    from bastion.attacks.privacy import AttributeData, get_attribute_attack
    from bastion.core.targets.sklearn_target import SklearnTarget

    rng = np.random.default_rng(0)
    x = np.c_[rng.integers(0, 3, 400), rng.random((400, 3))].astype(np.float32)
    y = rng.integers(0, 2, 400)
    forest = SklearnTarget(RandomForestClassifier(n_estimators=50, random_state=0).fit(x[:200], y[:200]),
                           InputSpec(shape=(4,), lower=0.0, upper=3.0))
    data = AttributeData(x[:100], y[:100], 0)
    clear = get_attribute_attack("fredrikson").run(forest, data)
    noisy = DEFENSES["output-noise"](scale=0.2, eot_samples=64).wrap(forest, seed=0)
    once = get_attribute_attack("fredrikson", repeats=1).run(noisy, data)
    averaged = get_attribute_attack("fredrikson").run(noisy, data)
    assert clear.repeats == 1 and clear.queries == 300  # one query per record and candidate
    assert once.value < clear.value - 0.15 and averaged.value > clear.value - 0.06
    assert averaged.repeats == 64 and averaged.queries == 64 * 300
