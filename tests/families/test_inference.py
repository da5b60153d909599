"""Attribute-inference and inversion contracts, with tiny attacks written here: the base hides
the attribute (NaN) and the data, and scores against a no-query baseline."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks.privacy import AttributeData, AttributeInference, ModelInversion
from bastion.core.data import Dataset
from bastion.core.spec import InputSpec
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.errors import BastionRuntimeError, DataError


class BestFit(AttributeInference):
    """Fill in each candidate value and keep the one that makes the record's own label most
    likely (Fredrikson et al., 2014)."""

    name = "best-fit"

    def _infer(self, target, task, threat, ctx):
        probs = []
        for v in task.candidates:
            filled = task.x.copy()
            filled[:, task.attribute] = v
            probs.append(target.predict_proba(filled)[np.arange(len(task.y)), task.y])
        return task.candidates[np.argmax(probs, axis=0)]


class Forgetful(AttributeInference):
    name = "forgetful"

    def _infer(self, target, task, threat, ctx):
        target.predict_proba(task.x)  # never filled the hidden column
        return np.zeros(len(task.x))


@pytest.fixture(scope="module")
def leaky():  # noqa: ANN201
    """Column 0 (binary) nearly decides the label, so the model's answers reveal it."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, 300)
    y = np.where(rng.random(300) < 0.9, s, 1 - s)
    x = np.c_[s, rng.random((300, 3))].astype(np.float32)
    model = LogisticRegression().fit(x, y)
    return SklearnTarget(model, InputSpec(shape=(4,))), x, y


def test_attribute_inference_beats_the_majority_baseline(leaky) -> None:
    target, x, y = leaky
    res = BestFit().run(target, AttributeData(x, y, attribute=0))
    assert res.metric == "accuracy"
    assert res.value == pytest.approx(np.mean(res.inferred == x[:, 0]))
    assert res.baseline == pytest.approx(max(np.mean(x[:, 0]), 1 - np.mean(x[:, 0])))
    assert res.value > 0.85 and res.advantage > 0.3
    assert res.queries == 2 * len(x)  # one query per candidate per record
    from bastion.core.results import CheckResult

    check = CheckResult(name="privacy", kind="attribute")
    res.record(check)
    assert check.values("attribute_advantage", attribute=0) == [pytest.approx(res.advantage)]


def test_the_attack_never_sees_the_attribute(leaky) -> None:
    target, x, y = leaky
    with pytest.raises(DataError, match="NaN"):
        Forgetful().run(target, AttributeData(x, y, attribute=0))
    with pytest.raises(DataError, match=r"feature index in \[0, 3\]"):
        BestFit().run(target, AttributeData(x, y, attribute=4))


def test_continuous_attribute_is_scored_by_rmse_against_the_mean_guess(leaky) -> None:
    target, x, y = leaky

    class Half(AttributeInference):
        def _infer(self, target, task, threat, ctx):
            assert task.candidates is None
            return np.full(len(task.x), 0.5)

    res = Half().run(target, AttributeData(x, y, attribute=1, kind="continuous"))
    truth = x[:, 1].astype(np.float64)
    assert res.value == pytest.approx(np.sqrt(np.mean((truth - 0.5) ** 2)))
    assert res.baseline == pytest.approx(truth.std())
    assert res.advantage == pytest.approx(res.baseline - res.value)


def test_categorical_inference_must_stay_within_the_candidates(leaky) -> None:
    target, x, y = leaky

    class OutOfRange(AttributeInference):
        def _infer(self, target, task, threat, ctx):
            return np.full(len(task.x), 7.0)

    with pytest.raises(BastionRuntimeError, match="outside the candidates"):
        OutOfRange().run(target, AttributeData(x, y, attribute=0))


class ClassPoints(ModelInversion):
    """Returns given points (an analytic stand-in for an inversion that found them)."""

    def __init__(self, points: np.ndarray) -> None:
        super().__init__()
        self.points = points

    def _invert(self, target, threat, ctx):
        return self.points


def test_inversion_distance_and_baseline_are_measured_against_the_private_class_means() -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.r_[np.full((10, 4), 0.25), np.full((10, 4), 0.75)].astype(np.float32)
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    target = SklearnTarget(LogisticRegression().fit(x, y), InputSpec(shape=(4,)))
    exact = ClassPoints(np.array([[0.25] * 4, [0.75] * 4], np.float32)).run(target, Dataset(x, y))
    assert exact.distance == pytest.approx(0.0) and exact.baseline == pytest.approx(0.5)  # 0.25 * sqrt(4)
    assert exact.advantage == pytest.approx(0.5) and exact.confidence.min() > 0.5
    mean = ClassPoints(np.full((2, 4), 0.5, np.float32)).run(target, Dataset(x, y))
    assert mean.advantage == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(BastionRuntimeError, match="outside the target's declared bounds"):
        ClassPoints(np.full((2, 4), 3.0, np.float32)).run(target, Dataset(x, y))
    with pytest.raises(BastionRuntimeError, match="1 reconstructions for 2 classes"):
        ClassPoints(np.full((1, 4), 0.5, np.float32)).run(target, Dataset(x, y))
