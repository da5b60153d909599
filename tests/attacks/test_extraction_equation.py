"""Equation-solving extraction (Tramèr et al. 2016): exact recovery from d+1 score queries."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks.extraction import get_extraction_attack
from bastion.core.spec import InputSpec
from bastion.core.targets.base import DifferentiableTarget
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.core.threat import ThreatModel
from bastion.errors import TargetError, UsageError


def _logistic(k: int, d: int = 6, seed: int = 0):  # noqa: ANN202
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.random((300, d))  # float64, so the model's own arithmetic is float64
    y = ((x - 0.5) @ rng.normal(size=(d, k))).argmax(1)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(x, y)
    return model, SklearnTarget(model, InputSpec(shape=(d,), lower=0.0, upper=1.0)), x


@pytest.mark.parametrize("k", [2, 4])
def test_recovers_the_parameters_exactly_from_d_plus_1_queries(k: int) -> None:
    model, target, pool = _logistic(k)
    res = get_extraction_attack("equation-solving").run(target, pool)
    d = pool.shape[1]
    assert res.queries == d + 1 and res.fidelity == 1.0
    layer = res.surrogate.module
    w, b = layer.weight.numpy(), layer.bias.numpy()
    if k == 2:  # sigmoid: log-odds of class 1 are coef·x + intercept
        true_w, true_b = model.coef_, model.intercept_
    else:       # softmax: identifiable relative to class 0
        true_w, true_b = model.coef_[1:] - model.coef_[0], model.intercept_[1:] - model.intercept_[0]
    np.testing.assert_allclose(w, true_w, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b, true_b, rtol=0, atol=1e-8)
    probe = np.random.default_rng(5).random((50, d)).astype(np.float32)
    with target.uncounted():
        np.testing.assert_allclose(res.surrogate.predict_proba(probe), target.predict_proba(probe), atol=1e-6)
    assert isinstance(res.surrogate, DifferentiableTarget)  # usable by white-box attacks (transfer)


def test_a_wrong_model_class_is_not_recovered() -> None:
    """A non-linear model breaks the log-linear equations: fidelity shows it (the test can fail)."""
    def ring(z: np.ndarray) -> np.ndarray:  # class 1 inside a disc: not log-linear
        p = 1 / (1 + np.exp(20 * (((z - 0.5) ** 2).sum(1) - 0.08)))
        return np.stack([1 - p, p], axis=1)

    x = np.random.default_rng(1).random((400, 2)).astype(np.float32)
    target = CallableTarget(ring, [0, 1], InputSpec(shape=(2,), lower=0.0, upper=1.0))
    res = get_extraction_attack("equation-solving").run(target, x)
    assert res.fidelity < 0.9


def test_a_budget_below_d_plus_1_is_refused_before_any_query() -> None:
    _, target, pool = _logistic(3)
    with pytest.raises(UsageError, match=r"needs 7 queries .*\(d\+1\)·\(k-1\) = 14 equations.*leaves 5"):
        get_extraction_attack("equation-solving").run(target, pool, ThreatModel(query_budget=5))
    assert target.queries == 0
    target.query_budget = 3
    with pytest.raises(UsageError, match="budget leaves 3"):
        get_extraction_attack("equation-solving").run(target, pool)


def test_a_label_only_model_is_refused_with_why() -> None:
    spec = InputSpec(shape=(3,), lower=0.0, upper=1.0)
    target = CallableTarget(lambda z: np.eye(2)[(z.sum(1) > 1.5).astype(int)], [0, 1], spec)
    target.label_only = True
    with pytest.raises(TargetError, match="needs the model's scores.*labels only"):
        get_extraction_attack("equation-solving").run(target, np.random.default_rng(0).random((20, 3)))
