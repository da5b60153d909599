"""Learning-based extraction (Knockoff Nets, Copycat CNN, Jacobian augmentation): a copy trained on
the model's answers within the query budget, from in-distribution, out-of-distribution or
synthetic queries; label-only models and budgets too small for the rounds are refused with why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from bastion.attacks.extraction import get_extraction_attack
from bastion.core.data import Dataset
from bastion.core.spec import InputSpec
from bastion.core.targets.base import DifferentiableTarget
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.core.threat import ThreatModel
from bastion.errors import TargetError, UsageError

SPEC = InputSpec(shape=(2,), lower=0.0, upper=1.0)
FAST = {"epochs": 60, "batch_size": 32, "lr": 1e-2}


def _disc(z: np.ndarray) -> np.ndarray:
    """A non-linear model: class 1 inside a disc (scores, not log-linear)."""
    p = 1 / (1 + np.exp(30 * (((z - 0.5) ** 2).sum(1) - 0.06)))
    return np.stack([1 - p, p], axis=1)


class Spy(CallableTarget):
    """The disc model, remembering every input it was asked about."""

    def __init__(self, label_only: bool = False) -> None:
        super().__init__(_disc, [0, 1], SPEC)
        self.label_only = label_only
        self.asked: list[np.ndarray] = []
        self.measuring = False

    @contextmanager
    def uncounted(self) -> Iterator[None]:  # bastion's own fidelity measurement: not the attacker's
        self.measuring = True
        try:
            with super().uncounted():
                yield
        finally:
            self.measuring = False

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if not self.measuring:
            self.asked.append(np.asarray(x))
        p = super().predict_proba(x)
        return np.eye(2)[p.argmax(1)] if self.label_only else p


def _pool(n: int = 500, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).random((n, 2)).astype(np.float32)
    return Dataset(x, _disc(x).argmax(1))


@pytest.mark.parametrize("name", ["knockoff", "copycat"])
def test_copy_from_natural_queries_within_the_budget(name: str) -> None:
    target = Spy()
    res = get_extraction_attack(name, rounds=2, **FAST).run(target, _pool(), ThreatModel(query_budget=300))
    assert res.curve.queries == [150, 300] and res.queries == 300 == sum(map(len, target.asked))
    assert res.fidelity >= 0.9 and res.accuracy is not None and res.accuracy >= 0.9
    assert isinstance(res.surrogate, DifferentiableTarget)  # usable by white-box and transfer attacks
    assert res.complete


def test_out_of_distribution_queries_are_the_only_ones_sent() -> None:
    target = Spy()
    ood = np.random.default_rng(9).random((200, 2)).astype(np.float32) * 0.6 + 0.2  # another distribution
    res = get_extraction_attack("knockoff", rounds=1, **FAST).run(target, _pool(), query_set=ood)
    sent = np.concatenate(target.asked)
    assert res.queries == 200 and {r.tobytes() for r in sent} <= {r.tobytes() for r in ood}
    assert res.fidelity > 0.8  # measured on the held-out pool, not on the queries


def test_jacobian_grows_a_small_seed_with_synthetic_queries_in_bounds() -> None:
    target = Spy()
    res = get_extraction_attack("jacobian", seed_size=20, rounds=4, step=0.05, **FAST).run(
        target, _pool(), ThreatModel(query_budget=100))
    assert res.curve.queries == [20, 40, 80, 100]  # doubles each round, capped by the budget
    sent = np.concatenate(target.asked)
    assert len(sent) == 100 and sent.min() >= 0 and sent.max() <= 1
    assert len({r.tobytes() for r in sent} & {r.tobytes() for r in _pool().x}) <= 20  # the rest is synthetic
    assert res.fidelity > 0.6


def test_label_only_models() -> None:
    with pytest.raises(TargetError, match="labels=scores trains on the model's probabilities.*labels only"):
        get_extraction_attack("knockoff", rounds=1, **FAST).run(Spy(label_only=True), _pool(), ThreatModel(query_budget=50))
    res = get_extraction_attack("copycat", rounds=1, **FAST).run(Spy(label_only=True), _pool(), ThreatModel(query_budget=300))
    assert res.fidelity >= 0.85


def test_budget_too_small_for_the_rounds_and_unknown_parameters() -> None:
    target = Spy()
    with pytest.raises(UsageError, match="3 queries cannot be split into 4 rounds"):
        get_extraction_attack("knockoff").run(target, _pool(), ThreatModel(query_budget=3))
    assert not target.asked
    with pytest.raises(UsageError, match="jacobian: give a number of queries or a query budget"):
        get_extraction_attack("jacobian").run(target, _pool())  # synthetic queries have no natural end
    assert not target.asked
    with pytest.raises(UsageError, match="labels"):
        get_extraction_attack("copycat", labels="soft")


def test_a_given_architecture_is_trained() -> None:
    import torch

    def linear() -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    res = get_extraction_attack("knockoff", rounds=1, architecture=linear, **FAST).run(
        SklearnTarget(_LinearModel(), SPEC), _pool(), ThreatModel(query_budget=200))
    assert isinstance(res.surrogate.module, torch.nn.Linear) and res.fidelity > 0.9


def _LinearModel():  # noqa: ANN202, N802
    from sklearn.linear_model import LogisticRegression

    x = _pool(300, 3).x
    return LogisticRegression().fit(x, (x[:, 0] > x[:, 1]).astype(int))
