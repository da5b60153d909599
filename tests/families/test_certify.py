"""Certification contract: the exact L2 radius of a linear model, |w·x + b| / ||w||, checked by
stepping just past and just short of it; the base's invariants on radii and abstentions."""

from __future__ import annotations

import numpy as np
import pytest
from family_helpers import blobs

from bastion.certify import Certifier
from bastion.certify.base import ABSTAIN
from bastion.core.spec import InputSpec
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.errors import BastionRuntimeError


class LinearExact(Certifier):
    """Distance to the decision boundary of a binary logistic regression; abstains within ``min_radius``."""

    name = "linear-exact"
    norm = "l2"
    min_radius = 0.02

    def _certify(self, target, x, ctx):
        est = target.estimator
        margin = x @ est.coef_[0] + est.intercept_[0]
        radius = np.abs(margin) / np.linalg.norm(est.coef_[0])
        pred = (margin > 0).astype(int)
        abstain = radius < self.min_radius
        return np.where(abstain, ABSTAIN, pred), np.where(abstain, 0.0, radius)


@pytest.fixture(scope="module")
def linear():  # noqa: ANN201
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(300, 0)
    return SklearnTarget(LogisticRegression().fit(x, y), InputSpec(shape=(4,), lower=-10, upper=10)), *blobs(100, 1)


def test_certified_radius_is_the_distance_to_the_boundary(linear) -> None:
    target, x, y = linear
    res = LinearExact().certify(target, x, y)
    ok = ~res.abstained
    assert ok.sum() > 80 and np.all(res.radius[res.abstained] == 0)
    w = target.estimator.coef_[0] / np.linalg.norm(target.estimator.coef_[0])
    toward = np.where(res.prediction[ok] == 1, -1.0, 1.0)[:, None] * w  # direction to the boundary
    inside = x[ok] + 0.99 * res.radius[ok, None] * toward
    beyond = x[ok] + 1.01 * res.radius[ok, None] * toward
    assert np.array_equal(target.predict(inside), res.prediction[ok])  # holds within the radius
    assert np.all(target.predict(beyond) != res.prediction[ok])  # and the radius is tight


def test_certified_accuracy_falls_with_the_radius(linear) -> None:
    target, x, y = linear
    res = LinearExact().certify(target, x, y)
    curve = res.curve([0.0, 0.05, 0.1, 0.2, 1.0])
    assert curve == sorted(curve, reverse=True) and curve[-1] == 0.0
    assert curve[0] == pytest.approx(np.mean((res.prediction == y) & ~res.abstained))
    assert res.model_dump(mode="json")["norm"] == "l2"
    from bastion.core.results import CheckResult

    check = CheckResult(name="cert", kind="certification")
    res.record(check, [0.0, 0.1])
    assert check.values("certified_accuracy", radius=0.1) == [pytest.approx(curve[2])]
    assert check.values("abstain_rate") == [pytest.approx(np.mean(res.abstained))]


@pytest.mark.parametrize("pred,radius,msg", [
    ([0, 1], [0.1, -0.1], "negative, NaN or infinite radius"),
    ([0, 1], [0.1, np.nan], "negative, NaN or infinite radius"),
    ([ABSTAIN, 1], [0.3, 0.1], "abstained with a non-zero radius"),
    ([0, 2], [0.1, 0.1], "not class indices or -1"),
    ([0], [0.1], r"\(1,\) predictions"),
])
def test_base_refuses_unsound_certificates(linear, pred, radius, msg) -> None:
    target, x, y = linear

    class Fixed(Certifier):
        def _certify(self, target, x, ctx):
            return np.array(pred), np.array(radius)

    with pytest.raises(BastionRuntimeError, match=msg):
        Fixed().certify(target, x[:2], y[:2])
