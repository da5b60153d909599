"""Membership attacks (thresholds, shadow models, LiRA, RMIA) on a logistic regression that overfits
40 records in 32 dimensions: they find members far above chance; shadow models are cached (a
second run trains nothing), checked on read, and train in worker processes; Clopper-Pearson
intervals match scipy's; bad input gets a message that says what and why."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.attacks.privacy import MembershipSplits, clopper_pearson, get_membership_attack
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.training import TrainRequest, sklearn_train_fn
from bastion.errors import BastionRuntimeError, DataError, UsageError

D = 32
SPEC = InputSpec(shape=(D,), lower=0.0, upper=1.0)


def records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two barely separated classes: a model fitted on few of them memorises its records."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return np.clip(0.5 + 0.15 * rng.normal(size=(n, D)) + 0.03 * (2 * y[:, None] - 1), 0, 1).astype(np.float32), y


@dataclass(frozen=True)
class CountingTrainer:
    """A logistic regression TrainFn that counts its calls in a file (worker processes too)."""

    log: str
    fail: str = ""

    def __call__(self, request: TrainRequest) -> Any:
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        if self.fail == "raise":
            raise ValueError("boom")
        if self.fail == "unusable":
            return "not a model"
        from sklearn.linear_model import LogisticRegression

        return sklearn_train_fn(LogisticRegression(C=10.0, max_iter=500))(request)

    def identity(self) -> str:
        return f"counting-logreg-{self.fail}"

    def calls(self) -> int:
        return len(self.pids())

    def pids(self) -> list[int]:
        p = Path(self.log)
        return [int(line) for line in p.read_text().split()] if p.exists() else []


@pytest.fixture(scope="module")
def setting() -> tuple[Any, MembershipSplits]:
    xm, ym = records(40, 0)
    xn, yn = records(200, 1)
    xr, yr = records(80, 2)
    from sklearn.linear_model import LogisticRegression

    target = sklearn_train_fn(LogisticRegression(C=10.0, max_iter=500))(
        TrainRequest(xm, ym, seed=0, input_spec=SPEC, classes=[0, 1]))
    return target, MembershipSplits(xm, ym, xn, yn, xr, yr)


@pytest.mark.parametrize("name, params", [
    ("lira", {"mode": "offline", "shadow_models": 4}),
    ("lira", {"mode": "online", "shadow_models": 8}),
    ("lira", {"mode": "offline", "shadow_models": 1}),
    ("rmia", {"reference_models": 1}),
    ("shadow", {"shadow_models": 4}),
])
def test_shadow_attacks_find_members_far_above_chance(setting, tmp_path: Path, name: str,
                                                      params: dict[str, Any]) -> None:
    target, splits = setting
    trainer = CountingTrainer(str(tmp_path / "calls"))
    res = get_membership_attack(name, cache=False, **params).run(target, splits, ctx=RunContext(seed=0),
                                                                 trainer=trainer)
    assert res.auc > 0.6 and res.tpr_at(0.1) > 0.15, (res.auc, res.tpr_at(0.1))  # chance: 0.5 and 0.1
    assert trainer.calls() == params.get("shadow_models", params.get("reference_models"))
    assert res.queries >= len(splits.members_x) + len(splits.non_members_x)


def test_thresholds_need_no_trainer_and_lira_beats_them_at_low_fpr(setting, tmp_path: Path) -> None:
    target, splits = setting
    loss = get_membership_attack("loss-threshold").run(target, splits)
    conf = get_membership_attack("confidence-threshold").run(target, splits)
    assert loss.auc > 0.6 and conf.auc > 0.5
    lira = get_membership_attack("lira", mode="online", shadow_models=8, cache=False).run(
        target, splits, trainer=CountingTrainer(str(tmp_path / "calls")))
    assert lira.tpr_at(0.01) > loss.tpr_at(0.01)


def test_the_cache_prevents_training_again_and_is_checked_on_read(setting, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    target, splits = setting
    trainer = CountingTrainer(str(tmp_path / "calls"))
    attack = get_membership_attack("lira", mode="offline", shadow_models=3)
    first = attack.run(target, splits, ctx=RunContext(seed=0), trainer=trainer)
    assert trainer.calls() == 3
    again = attack.run(target, splits, ctx=RunContext(seed=0), trainer=trainer)
    assert trainer.calls() == 3  # nothing trained again
    np.testing.assert_array_equal(first.member_scores, again.member_scores)
    rmia = get_membership_attack("rmia", reference_models=3).run(target, splits, ctx=RunContext(seed=0),
                                                                 trainer=trainer)
    assert trainer.calls() == 3 and rmia.auc > 0.6  # the same offline models serve RMIA
    files = sorted((tmp_path / "cache" / "shadows").rglob("*.npz"))
    assert len(files) == 3
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"tampered")  # altered: its hash no longer matches
    attack.run(target, splits, ctx=RunContext(seed=0), trainer=trainer)
    assert trainer.calls() == 4  # only the altered one trained again
    other = CountingTrainer(str(tmp_path / "calls"), fail="x")  # another trainer identity: its own models
    attack.run(target, splits, ctx=RunContext(seed=0), trainer=other)
    assert other.calls() == 7


def test_shadow_models_train_in_worker_processes(setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.campaign.executors import LocalExecutor

    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    target, splits = setting
    trainer = CountingTrainer(str(tmp_path / "calls"))
    attack = get_membership_attack("lira", mode="offline", shadow_models=2, cache=False)
    serial = attack.run(target, splits, ctx=RunContext(seed=0), trainer=trainer)
    parallel = attack.run(target, splits, ctx=RunContext(seed=0, executor=LocalExecutor(2)), trainer=trainer)
    assert trainer.calls() == 4 and os.getpid() not in trainer.pids()[2:]  # trained in the workers
    np.testing.assert_allclose(parallel.member_scores, serial.member_scores)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (7, 150), (1, 1000)])
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_tpr_comes_with_its_interval_only_where_the_fpr_is_measurable(setting) -> None:
    target, splits = setting
    res = get_membership_attack("loss-threshold").run(target, splits)  # 200 non-members
    at = {p.fpr: p for p in res.tpr_at_low_fpr}
    assert not at[0.001].measurable and at[0.001].tpr is None
    assert at[0.001].reason == "not measurable with 200 non-members (an FPR of 0.001 needs at least 1000)"
    p = at[0.01]
    assert p.measurable and p.ci_low <= p.tpr <= p.ci_high
    assert (p.ci_low, p.ci_high) == pytest.approx(clopper_pearson(p.true_positives, 40))
    assert p.true_positives == round(p.tpr * 40)


def test_result_has_per_class_slices_and_exposed_indices(setting) -> None:
    target, splits = setting
    res = get_membership_attack("loss-threshold").run(target, splits)
    assert set(res.per_class_auc) == {0, 1} and all(0 <= a <= 1 for a in res.per_class_auc.values())
    top = res.exposed[0]
    assert top.score == res.member_scores.max() and top.label == splits.members_y[top.index]
    assert "x" not in top.model_dump()  # indices, never the records' values


def test_bad_input_says_what_and_why(setting, tmp_path: Path) -> None:
    target, splits = setting
    with pytest.raises(DataError, match="members and non-members share 5 record"):
        get_membership_attack("loss-threshold").run(target, MembershipSplits(
            splits.members_x, splits.members_y, np.concatenate([splits.non_members_x, splits.members_x[:5]]),
            np.r_[splits.non_members_y, splits.members_y[:5]]))
    lira = get_membership_attack("lira", mode="offline", shadow_models=2, cache=False)
    with pytest.raises(BastionRuntimeError, match="the trainer failed on shadow model 0: ValueError: boom"):
        lira.run(target, splits, trainer=CountingTrainer(str(tmp_path / "c"), fail="raise"))
    with pytest.raises(BastionRuntimeError, match="unusable model for shadow model 0: str has no predict_proba"):
        lira.run(target, splits, trainer=CountingTrainer(str(tmp_path / "c"), fail="unusable"))
    no_ref = MembershipSplits(splits.members_x, splits.members_y, splits.non_members_x, splits.non_members_y)
    with pytest.raises(UsageError, match="membership attack .lira. trains its models on reference records, and there are none"):
        lira.run(target, no_ref, trainer=CountingTrainer(str(tmp_path / "c")))
    with pytest.raises(UsageError, match="online LiRA needs at least 2 shadow models"):
        get_membership_attack("lira", mode="online", shadow_models=1).run(target, splits, trainer=object())


def test_a_label_only_model_is_refused_where_scores_are_needed(setting) -> None:
    from bastion.core.targets.base import Target

    target, splits = setting

    class Labels(Target):
        label_only = True

        def _predict_proba(self, x: np.ndarray) -> np.ndarray:
            return np.eye(2)[target.predict_proba(x).argmax(1)]

    labels = Labels([0, 1], SPEC, name="labels-api")
    with pytest.raises(UsageError, match="needs the model's scores, but the target 'labels-api' answers labels only"):
        get_membership_attack("loss-threshold").run(labels, splits)


def test_augmented_queries_are_averaged_and_refused_for_tables(setting, tmp_path: Path) -> None:
    target, splits = setting
    lira = get_membership_attack("lira", mode="offline", shadow_models=2, augment="flip", cache=False)
    with pytest.raises(UsageError, match="augment='flip' transforms images; these records are not images"):
        lira.run(target, splits, trainer=CountingTrainer(str(tmp_path / "c")))
    from sklearn.linear_model import LogisticRegression

    spec = InputSpec(shape=(1, 4, 8), lower=0.0, upper=1.0, kind="image")  # the same records as 4x8 images
    images = MembershipSplits(*(a.reshape(-1, 1, 4, 8) if a.ndim == 2 else a for a in (
        splits.members_x, splits.members_y, splits.non_members_x, splits.non_members_y, splits.reference_x,
        splits.reference_y)))
    model = sklearn_train_fn(LogisticRegression(C=10.0, max_iter=500))(
        TrainRequest(images.members_x, images.members_y, seed=0, input_spec=spec, classes=[0, 1]))
    plain = get_membership_attack("lira", mode="offline", shadow_models=2, cache=False).run(
        model, images, trainer=CountingTrainer(str(tmp_path / "c")))
    flipped = lira.run(model, images, trainer=CountingTrainer(str(tmp_path / "c")))
    assert flipped.queries == 2 * plain.queries and flipped.auc > 0.5  # mirrored random features add noise here


def _tiny_mlp() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


@pytest.mark.parametrize("kind", ["sklearn", "torch"])
def test_a_cached_model_answers_new_queries_without_training(setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             kind: str) -> None:
    """The model itself is kept (estimator as skops, module weights as arrays): other records to
    score (here fewer members) need no training, only queries to the cached models."""
    from sklearn.linear_model import LogisticRegression

    from bastion.core import training

    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    target, splits = setting
    calls: list[int] = []
    if kind == "sklearn":
        real = training.fit_estimator
        monkeypatch.setattr(training, "fit_estimator", lambda est, req: calls.append(1) or real(est, req))
        trainer: Any = sklearn_train_fn(LogisticRegression(C=10.0, max_iter=500))
    else:
        real_fit = training.TorchTrainingProcedure.fit
        monkeypatch.setattr(training.TorchTrainingProcedure, "fit",
                            lambda self, req, *a, **k: calls.append(1) or real_fit(self, req, *a, **k))
        trainer = training.TorchTrainingProcedure(model=_tiny_mlp, epochs=3)
    lira = get_membership_attack("lira", mode="offline", shadow_models=2, variance="per-record")
    first = lira.run(target, splits, trainer=trainer)
    assert len(calls) == 2
    fewer = MembershipSplits(splits.members_x[:20], splits.members_y[:20], splits.non_members_x,
                             splits.non_members_y, splits.reference_x, splits.reference_y)
    again = lira.run(target, fewer, trainer=trainer)
    assert len(calls) == 2  # nothing trained: the cached models answered the new queries
    np.testing.assert_allclose(again.member_scores, first.member_scores[:20])
    kept = "estimator.skops" if kind == "sklearn" else "weights.npz"
    assert len(list((tmp_path / "cache").rglob(kept))) == 2


def test_shift_moves_images_one_pixel_four_ways() -> None:
    from bastion.attacks.privacy.shadows import augmented

    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0
    moved = augmented(x, "shift")
    assert len(moved) == 5 and moved[0] is x
    assert [tuple(np.argwhere(m[0, 0])[0]) for m in moved[1:]] == [(2, 1), (0, 1), (1, 2), (1, 0)]
    edge = augmented(np.ones((1, 1, 3, 3), np.float32), "shift")[1]
    assert edge[0, 0, 0].sum() == 0 and edge.sum() == 6  # the uncovered row is zeros, not wrapped around
