"""Learning-based extraction (Knockoff Nets, Copycat CNN, Jacobian augmentation): a copy trained on
the model's answers within the query budget, from in-distribution, out-of-distribution or
synthetic queries; label-only models and budgets too small for the rounds are refused with why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest

from bastion.attacks.extraction import get_extraction_attack
from bastion.core.data import Dataset
from bastion.core.spec import InputSpec
from bastion.core.targets.base import DifferentiableTarget
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.core.threat import ThreatModel
from bastion.errors import DataError, TargetError, UsageError

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


# --- Knockoff Nets' adaptive strategy (Orekondy et al. 2019) ---------------------------------------
def _corner_and_edge() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An uninformative group (a corner: all class 0, answered with certainty) and an informative
    one (the disc's edge: both classes, uncertain answers); with each input's group."""
    rng = np.random.default_rng(1)
    corner = (rng.random((150, 2)) * 0.15).astype(np.float32)
    angle, radius = rng.random(150) * 2 * np.pi, np.sqrt(0.06) + rng.normal(0, 0.05, 150)
    edge = (0.5 + np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)).astype(np.float32)
    return np.concatenate([corner, edge]), np.r_[np.zeros(150), np.ones(150)], edge


def _adaptive(seed: int = 0, budget: int = 100, labelled: bool = True, **params):  # noqa: ANN202
    from bastion.core.run import RunContext

    x, groups, edge = _corner_and_edge()
    target = Spy()
    res = get_extraction_attack("knockoff", strategy="adaptive", clusters=2, **{"rounds": 1, **FAST, **params}).run(
        target, _pool(), ThreatModel(query_budget=budget), RunContext(seed=seed),
        query_set=Dataset(x, groups) if labelled else x)
    sent = np.concatenate(target.asked)
    on_edge = len({r.tobytes() for r in sent} & {r.tobytes() for r in edge})
    return res, sent, on_edge


def test_adaptive_spends_exactly_the_budget_on_distinct_inputs_of_the_query_set() -> None:
    res, sent, _ = _adaptive(budget=101, rounds=3, step=7)
    assert res.queries == 101 == len(sent) and res.curve.queries == [34, 67, 101] and res.complete
    assert len({r.tobytes() for r in sent}) == 101  # never the same input twice
    assert {r.tobytes() for r in sent} <= {r.tobytes() for r in _corner_and_edge()[0]}
    assert res.fidelity > 0.8


def test_adaptive_is_deterministic_for_a_seed() -> None:
    (a, sent_a, _), (b, sent_b, _) = _adaptive(seed=3), _adaptive(seed=3)
    assert np.array_equal(sent_a, sent_b) and a.fidelity == b.fidelity
    assert not np.array_equal(sent_a, _adaptive(seed=4)[1])


@pytest.mark.parametrize("labelled", [True, False])  # the attacker's own labels, or k-means clusters
def test_adaptive_policy_follows_its_reward(labelled: bool) -> None:
    # the loss reward favours the disc's edge (what the copy has yet to learn), the certainty reward
    # the corner (confident answers); random selection would split 100 queries about evenly
    for seed in range(2):
        assert _adaptive(seed, labelled=labelled, reward="loss")[2] >= 65
        assert _adaptive(seed, labelled=labelled, reward="certainty")[2] <= 35


def test_kmeans_separates_blobs_and_query_labels_must_match() -> None:
    from bastion.attacks.extraction.adaptive import kmeans

    centres = np.array([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]])
    truth = np.repeat(np.arange(3), 40)
    blobs = centres[truth] + np.random.default_rng(0).normal(0, 0.05, (120, 2))
    found = kmeans(blobs, 3, seed=0)
    assert all(len(set(found[truth == c])) == 1 for c in range(3)) and len(set(found)) == 3
    x, groups, _ = _corner_and_edge()
    with pytest.raises(DataError, match="query set has 300 inputs but 299 labels"):
        get_extraction_attack("knockoff", strategy="adaptive", rounds=1, **FAST).run(
            Spy(), _pool(), ThreatModel(query_budget=50), query_set=SimpleNamespace(x=x, y=groups[:-1]))
