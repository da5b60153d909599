"""Extraction contract: a logistic surrogate fitted from the target's answers, in rounds; the base
holds out part of the pool, checks each surrogate and the budget, and draws the fidelity curve."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks.extraction import ModelExtraction
from bastion.core.data import Dataset
from bastion.core.targets.base import Target
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, DataError, UsageError
from family_helpers import blobs, unit_spec


class FitLogistic(ModelExtraction):
    """Query ``rounds`` equal slices of the pool; after each, fit a logistic regression on every
    label seen so far (Tramèr et al., 2016, equation-solving in its simplest form)."""

    name = "fit-logistic"
    rounds = 4

    def _extract(self, target, pool, threat, ctx):
        from sklearn.linear_model import LogisticRegression

        seen_x, seen_y = [], []
        for part in np.array_split(pool, self.rounds):
            seen_x.append(part)
            seen_y.append(target.predict(part))
            model = LogisticRegression().fit(np.concatenate(seen_x), np.concatenate(seen_y))
            yield SklearnTarget(model, target.input_spec, name="surrogate")


@pytest.fixture(scope="module")
def victim():  # noqa: ANN201
    from sklearn.neural_network import MLPClassifier

    x, y = blobs(400, 3)
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0).fit(x, y)
    return SklearnTarget(model, unit_spec()), Dataset(*blobs(500, 4))


def test_surrogate_is_a_target_with_a_rising_fidelity_curve(victim) -> None:
    target, pool = victim
    res = FitLogistic().run(target, pool)
    assert isinstance(res.surrogate, Target)
    assert res.curve.queries == [100, 200, 300, 400]  # 500 minus the 20% held out, in 4 rounds
    assert res.fidelity == res.curve.fidelity[-1] > 0.9
    assert res.curve.fidelity[-1] >= res.curve.fidelity[0] - 0.05
    assert res.accuracy is not None and res.target_accuracy is not None
    assert abs(res.accuracy - res.target_accuracy) < 0.1
    assert "surrogate" not in res.model_dump(mode="json")  # a model, not report data
    assert len(res.accuracy_curve) == 4 and res.curve.type == "fidelity_curve"
    assert res.surrogate.predict_proba(pool.x[:5]).shape == (5, 2)  # usable as any target


def test_result_records_into_a_check(victim) -> None:
    from bastion.core.results import CheckResult

    target, pool = victim
    res = FitLogistic().run(target, pool)
    check = CheckResult(name="theft", kind="extraction")
    res.record(check)
    assert check.values("fidelity", attack="fit-logistic") == [res.fidelity]
    assert check.values("queries") == [400.0]
    assert CheckResult.model_validate_json(check.model_dump_json()).artifacts[0].fidelity == res.curve.fidelity


def test_the_held_out_inputs_never_reach_the_attack(victim) -> None:
    target, pool = victim
    shown: list[np.ndarray] = []

    class Spy(FitLogistic):
        def _extract(self, target, pool, threat, ctx):
            shown.append(pool)
            yield from super()._extract(target, pool, threat, ctx)

    Spy(holdout=0.3).run(target, pool)
    assert len(shown[0]) == 350
    pool_rows = {r.tobytes() for r in pool.x}
    shown_rows = {r.tobytes() for r in shown[0]}
    assert shown_rows <= pool_rows and len(pool_rows - shown_rows) == 150  # 30% never shown


def test_base_enforces_budget_and_surrogate_shape(victim) -> None:
    target, pool = victim
    res = FitLogistic().run(target, pool, ThreatModel(query_budget=150))  # the ledger stops round 2
    assert not res.complete and "budget of 150" in res.reason and res.curve.queries == [100] and res.queries == 100

    class NotATarget(FitLogistic):
        def _extract(self, target, pool, threat, ctx):
            yield object()

    with pytest.raises(BastionRuntimeError, match="yielded a object, not a Target"):
        NotATarget().run(target, pool)

    class WrongShape(FitLogistic):
        def _extract(self, target, pool, threat, ctx):
            from sklearn.linear_model import LogisticRegression
            from bastion.core.spec import InputSpec

            yield SklearnTarget(LogisticRegression().fit(pool[:, :2], target.predict(pool)), InputSpec(shape=(2,)))

    with pytest.raises(BastionRuntimeError, match=r"inputs \(2,\).*\(4,\)"):
        WrongShape().run(target, pool)


def test_budget_and_interrupt_keep_the_last_surrogate(victim) -> None:
    target, pool = victim
    target.query_budget = target.queries + 250  # the target's own hard limit: spent in round 3
    try:
        res = FitLogistic().run(target, pool)
    finally:
        target.query_budget = None
    assert not res.complete and "query budget exhausted" in res.reason
    assert res.curve.queries == [100, 200] and res.fidelity == res.curve.fidelity[-1]

    class Interrupted(FitLogistic):
        def _extract(self, target, pool, threat, ctx):
            gen = super()._extract(target, pool, threat, ctx)
            yield next(gen)
            raise KeyboardInterrupt

    res = Interrupted().run(target, pool)
    assert res.interrupted and not res.complete and res.curve.queries == [100]


def test_pool_and_parameters_are_checked(victim) -> None:
    target, pool = victim
    with pytest.raises(DataError, match="too small"):
        FitLogistic().run(target, pool.x[:2])
    with pytest.raises(UsageError, match="holdout=1.5 is not allowed"):
        FitLogistic(holdout=1.5)
