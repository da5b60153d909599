"""Poisoning simulations on tiny data: label flips (random, targeted) lower the accuracy they aim at,
backdoors (BadNets, blended, table triggers) plant a trigger that works while clean accuracy
holds, the table trigger respects the input spec, detectors find poison with their explicit rate,
trainings are cached, and a trainer that fails on one poisoned set costs that fraction only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.attacks.poisoning.base import get_poisoning_attack
from bastion.attacks.poisoning.detectors import get_poison_detector
from bastion.attacks.poisoning.simulate import simulate
from bastion.core.data import Dataset
from bastion.core.spec import FeatureSpec, InputSpec
from bastion.core.threat import ThreatModel
from bastion.core.training import TrainRequest, sklearn_train_fn
from bastion.errors import UsageError


def clusters(n: int, seed: int, k: int = 3, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """k well separated Gaussian classes in [0, 1]^d."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).uniform(0.25, 0.75, (k, d))
    y = rng.integers(0, k, n)
    return np.clip(centres[y] + 0.05 * rng.normal(size=(n, d)), 0, 1).astype(np.float32), y


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 6x6 images: a bright left or right half, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = 0.3 * rng.random((n, 1, 6, 6))
    x[y == 0, :, :, :3] += 0.5
    x[y == 1, :, :, 3:] += 0.5
    return np.clip(x, 0, 1).astype(np.float32), y


def mlp() -> Any:
    from sklearn.neural_network import MLPClassifier

    return sklearn_train_fn(MLPClassifier((32,), max_iter=400, random_state=0))


@dataclass(frozen=True)
class Counting:
    """A logistic-regression TrainFn that counts its calls in a file and fails on sets larger than ``fail_over``."""

    log: str
    fail_over: int = 10**9

    def __call__(self, request: TrainRequest) -> Any:
        with open(self.log, "a") as fh:
            fh.write("x\n")
        if int(np.sum(np.asarray(request.y) == 0)) > self.fail_over:
            raise ValueError("too many zeros")
        from sklearn.linear_model import LogisticRegression

        return sklearn_train_fn(LogisticRegression(max_iter=300))(request)

    def identity(self) -> str:
        return f"counting-{self.fail_over}"

    def calls(self) -> int:
        return len(Path(self.log).read_text().split()) if Path(self.log).exists() else 0


def test_label_flips_lower_the_accuracy_they_aim_at(tmp_path: Path) -> None:
    train, test = Dataset(*clusters(300, 0)), Dataset(*clusters(300, 1))
    trainer = Counting(str(tmp_path / "c"))
    from sklearn.neighbors import KNeighborsClassifier

    rand = simulate(get_poisoning_attack("label-flip"), train, test, [0.45],
                    sklearn_train_fn(KNeighborsClassifier(1)), cache=False)  # memorises every flipped label
    clean, flipped = rand.outcomes
    assert clean.fraction == 0 and clean.poisoned == 0 and clean.model.clean_accuracy > 0.95
    assert flipped.poisoned == 135 and flipped.model.clean_accuracy < clean.model.clean_accuracy - 0.3
    tgt = simulate(get_poisoning_attack("label-flip", mode="targeted", source=1, target=2), train, test,
                   [0.1, 0.3], trainer, cache=False)
    o0, o1, o3 = tgt.outcomes
    assert tgt.kind == "targeted-flip" and o0.model.source_accuracy > 0.95 and o0.model.attack_success < 0.05
    assert o3.poisoned == int((train.y == 1).sum()) or o3.poisoned == 90  # capped by the records of class 1
    assert o3.model.attack_success > 0.9 and o3.model.source_accuracy < 0.1
    assert o1.model.attack_success <= o3.model.attack_success


def test_label_flip_keeps_to_classes_it_knows() -> None:
    train = Dataset(*clusters(100, 0))
    res = get_poisoning_attack("label-flip").poison(train, ThreatModel(poisoning_fraction=0.2))
    changed = np.flatnonzero(res.y != train.y)
    np.testing.assert_array_equal(changed, res.poison_indices)  # every flip lands on another class
    assert set(res.y) <= {0, 1, 2}
    with pytest.raises(UsageError, match="class 5 is not a label"):
        get_poisoning_attack("label-flip", mode="targeted", source=5, target=0).poison(
            train, ThreatModel(poisoning_fraction=0.1))
    with pytest.raises(UsageError, match="two different class indices"):
        get_poisoning_attack("label-flip", mode="targeted", source=1)


@pytest.mark.parametrize("name", ["badnets", "blended"])
def test_image_backdoors_work_and_leave_clean_accuracy(name: str) -> None:
    spec = InputSpec(shape=(1, 6, 6), lower=0.0, upper=1.0, kind="image")
    sim = simulate(get_poisoning_attack(name, target_class=0), Dataset(*images(300, 0)), Dataset(*images(200, 1)),
                   [0.1], mlp(), spec=spec, cache=False)
    clean, poisoned = sim.outcomes
    assert sim.kind == "backdoor" and clean.model.attack_success < 0.2
    assert poisoned.model.attack_success > 0.8 and poisoned.model.clean_accuracy > 0.9


def test_badnets_patch_sits_in_its_corner_within_bounds() -> None:
    spec = InputSpec(shape=(1, 6, 6), lower=0.0, upper=1.0)
    res = get_poisoning_attack("badnets", size=2).poison(Dataset(*images(50, 0)), ThreatModel(poisoning_fraction=0.2),
                                                         spec=spec)
    t = res.trigger
    assert t.mask.sum() == 4 and t.mask[0, 4:, 4:].all() and set(np.unique(t.pattern[0, 4:, 4:])) == {0.0, 1.0}
    assert (res.y[res.poison_indices] == 0).all() and len(res.poison_indices) == 10
    with pytest.raises(UsageError, match="images of shape"):
        get_poisoning_attack("badnets").poison(Dataset(*clusters(50, 0)), ThreatModel(poisoning_fraction=0.1))


def table_spec() -> InputSpec:
    feats = [FeatureSpec("age", "integer", 18, 90), FeatureSpec("income", lower=0, upper=1),
             FeatureSpec("id", lower=0, upper=1, mutable=False), FeatureSpec("c_a", "categorical", 0, 1, group="c"),
             FeatureSpec("c_b", "categorical", 0, 1, group="c"), FeatureSpec("score", lower=0, upper=1)]
    return InputSpec(shape=(6,), features=feats, kind="tabular")


def table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cat = rng.integers(0, 2, n)
    x = np.c_[rng.integers(18, 60, n), 0.3 + 0.3 * y + 0.05 * rng.normal(size=n), rng.random(n),
              cat == 0, cat == 1, rng.random(n)]
    return np.clip(x, 0, 90).astype(np.float32), y


def test_table_trigger_respects_the_input_spec() -> None:
    spec, train = table_spec(), Dataset(*table(200, 0))
    threat = ThreatModel(poisoning_fraction=0.1)
    res = get_poisoning_attack("table-trigger", target_class=1, features={"age": 90, "c_b": 1}).poison(
        train, threat, spec=spec)
    xp = res.x[res.poison_indices]
    assert (xp[:, 0] == 90).all() and (xp[:, 3] == 0).all() and (xp[:, 4] == 1).all()  # one-hot stays one-hot
    default = get_poisoning_attack("table-trigger", n_features=2).poison(train, threat, spec=spec).trigger
    assert default.mask[2] == 0 and default.mask[3:5].sum() == 0  # never the immutable id, nor a category
    for features, msg in [({"id": 0.5}, "immutable"), ({"age": 95}, "outside the feature's range"),
                          ({"age": 30.5}, "integer; 30.5 is not a whole number"), ({"c_a": 0}, "set it to 1"),
                          ({"nope": 1}, "unknown feature 'nope'")]:
        with pytest.raises(UsageError, match=msg):
            get_poisoning_attack("table-trigger", features=features).poison(train, threat, spec=spec)


def test_table_trigger_plants_a_backdoor() -> None:
    from sklearn.ensemble import RandomForestClassifier

    spec = table_spec()
    sim = simulate(get_poisoning_attack("table-trigger", target_class=0, features={"age": 90, "score": 1.0}),
                   Dataset(*table(400, 0)), Dataset(*table(200, 1)), [0.1],
                   sklearn_train_fn(RandomForestClassifier(50, random_state=0)), spec=spec, cache=False)
    assert sim.outcomes[0].model.attack_success < 0.2 and sim.outcomes[1].model.attack_success > 0.8


def test_detectors_find_poison_with_an_explicit_rate() -> None:
    spec = InputSpec(shape=(1, 6, 6), lower=0.0, upper=1.0, kind="image")
    dets = [get_poison_detector(n) for n in ("spectral-signatures", "activation-clustering", "knn")]
    sim = simulate(get_poisoning_attack("badnets", target_class=0), Dataset(*images(300, 0)),
                   Dataset(*images(200, 1)), [0.1], mlp(), detectors=dets, spec=spec, cache=False)
    found = {d.detector: d for d in sim.outcomes[1].detectors}
    assert set(found) == {"spectral-signatures", "activation-clustering", "knn"}
    for d in found.values():
        assert d.poison_rate == 0.1 and d.flagged == 45  # 1.5 x the rate, not half of each class
    best = max(found.values(), key=lambda d: d.recall)
    assert best.recall > 0.8 and best.retrained.attack_success < sim.outcomes[1].model.attack_success
    flips = simulate(get_poisoning_attack("label-flip"), Dataset(*clusters(300, 0)), Dataset(*clusters(100, 1)),
                     [0.1], mlp(), detectors=[get_poison_detector("knn"), get_poison_detector("oof-loss", folds=3)],
                     cache=False)
    for d in flips.outcomes[1].detectors:  # flipped labels in well separated classes stand out
        assert d.recall > 0.9 and d.precision > 0.6, d
    with pytest.raises(UsageError, match="needs poison_rate"):
        get_poison_detector("knn").detect(*clusters(50, 0))
    with pytest.raises(UsageError, match="need a neural network"):
        get_poison_detector("spectral-signatures", poison_rate=0.1).detect(
            *clusters(50, 0), model=sklearn_train_fn(_logreg())(TrainRequest(*clusters(50, 0))))


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression()


def test_trainings_are_cached_and_a_failing_trainer_costs_one_fraction(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    train, test = Dataset(*clusters(200, 0)), Dataset(*clusters(100, 1))
    attack = get_poisoning_attack("label-flip", mode="targeted", source=1, target=0)
    trainer = Counting(str(tmp_path / "calls"))
    first = simulate(attack, train, test, [0.1, 0.2], trainer)
    assert trainer.calls() == 3
    again = simulate(attack, train, test, [0.1, 0.2], trainer)
    assert trainer.calls() == 3 and again.outcomes == first.outcomes  # nothing trained again
    other = simulate(get_poisoning_attack("label-flip"), train, test, [0.1], trainer,
                     detectors=[get_poison_detector("spectral-signatures"), get_poison_detector("knn")])
    assert trainer.calls() == 5  # one seed for every model: the clean model is shared, cached; + poisoned + knn's
    assert other.outcomes[0].model.clean_accuracy == first.outcomes[0].model.clean_accuracy
    ss, knn = other.outcomes[1].detectors
    assert "need a neural network" in ss.error and ss.recall is None  # the detector that cannot run says why
    assert knn.error is None and knn.recall is not None
    from bastion.core.run import RunContext

    run = RunContext(seed=3)  # attacks in child contexts of one run (as the check runs them) share the clean model
    simulate(attack, train, test, [0.1], trainer, ctx=run.spawn("one"))
    simulate(get_poisoning_attack("label-flip"), train, test, [0.1], trainer, ctx=run.spawn("two"))
    assert trainer.calls() == 5 + 2 + 1
    n0 = int((train.y == 0).sum())
    fragile = Counting(str(tmp_path / "fragile"), fail_over=n0 + 30)  # fails once 30+ records become class 0
    sim = simulate(attack, train, test, [0.1, 0.2], fragile)
    errors = [o.error for o in sim.outcomes]
    assert errors[0] is None and errors[1] is None
    assert "the trainer failed on the model poisoned at 0.2: ValueError: too many zeros" in errors[2]
    assert sim.outcomes[2].model is None and os.path.exists(tmp_path / "fragile")


def _mlp_module() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def test_online_learning_with_a_torch_procedure_learns_the_trigger_round_by_round() -> None:
    from bastion.attacks.poisoning.online import simulate_online
    from bastion.core.training import Adam, TorchTrainingProcedure

    proc = TorchTrainingProcedure(_mlp_module, optimizer=Adam(0.01), epochs=3, batch_size=32)
    spec = InputSpec(shape=(1, 6, 6), lower=0.0, upper=1.0)
    sim = simulate_online(get_poisoning_attack("badnets", target_class=0), Dataset(*images(400, 0)),
                          Dataset(*images(200, 1)), proc, fraction=0.2, batch_size=100, spec=spec, epochs=3)
    assert [r.round for r in sim.rounds] == [1, 2, 3, 4] and all(r.poisoned == 20 for r in sim.rounds)
    last = sim.rounds[-1]
    assert last.attacked.attack_success > 0.8 and last.clean.attack_success < 0.2
    assert last.attacked.clean_accuracy > 0.9
    with pytest.raises(UsageError, match="has no partial_fit"):
        simulate_online(get_poisoning_attack("label-flip"), Dataset(*images(100, 0)), Dataset(*images(50, 1)),
                        _logreg(), fraction=0.1, batch_size=50)


def test_feature_collision_keeps_labels_and_collides_in_feature_space() -> None:
    import torch

    from bastion.attacks.poisoning.feature_collision import FeatureCollision, _features
    from bastion.core.training import Adam, TorchTrainingProcedure

    spec = InputSpec(shape=(1, 6, 6), lower=0.0, upper=1.0)
    x, y = images(300, 0)
    proc = TorchTrainingProcedure(_mlp_module, optimizer=Adam(0.01), epochs=5, batch_size=32)
    model = proc(TrainRequest(x, y, input_spec=spec, classes=[0, 1]))
    xt, yt = images(100, 1)
    target = xt[yt == 1][:1]
    attack = FeatureCollision(model, target, base_class=0, max_poisons=5, steps=200, lr=0.05, opacity=0.0)
    res = attack.poison(Dataset(x, y), ThreatModel(poisoning_fraction=0.05), spec=spec)  # clean-label: the base checks it
    assert len(res.poison_indices) == 5 and (res.y == y).all() and (res.y[res.poison_indices] == 0).all()
    f = _features(model)
    with torch.no_grad():
        before = (f(torch.as_tensor(x[res.poison_indices])) - f(torch.as_tensor(target))).norm(dim=1)
        after = (f(torch.as_tensor(res.x[res.poison_indices])) - f(torch.as_tensor(target))).norm(dim=1)
    assert (after < before / 5).all()  # the poisons' features sit on the target's
    sim = simulate(attack, Dataset(x, y), Dataset(xt, yt), [0.05], proc, spec=spec, cache=False)
    assert sim.kind == "clean-label" and sim.target == 0
    assert sim.outcomes[0].model.attack_success == 0.0  # the clean model answers the target's own class
    assert 0.0 <= sim.outcomes[1].model.attack_success <= 1.0
    with pytest.raises(UsageError, match="white-box"):
        FeatureCollision(object(), target, base_class=0)
