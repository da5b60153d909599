"""The label-only membership attack ``label-robustness`` (Choquette-Choo et al. 2021, calibrated per
record on reference models): it reads labels only, so it runs where the score attacks are refused;
it finds the members of a model that memorised them far above chance; the calibration matters
(without it the ranking of memorised mislabelled members inverts); its noise is seeded per record
and keeps every constraint of the input spec; it asks exactly 1 + copies x levels queries per
record; bad parameters and missing reference records are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.attacks.privacy import MembershipSplits, get_membership_attack
from bastion.attacks.privacy.label_only import noise_scale, noisy_views, robustness
from bastion.core.params import ParamError
from bastion.core.run import RunContext
from bastion.core.spec import FeatureSpec, InputSpec
from bastion.core.targets.base import Target
from bastion.core.training import TrainRequest, sklearn_train_fn
from bastion.errors import UsageError

D = 8
SPEC = InputSpec(shape=(D,), lower=0.0, upper=1.0)


def blobs(n: int, seed: int, flip: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping classes in [0, 1]^8, a share ``flip`` of the labels flipped."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.12 * rng.normal(size=(n, D)) + 0.08 * (2 * y[:, None] - 1), 0, 1).astype(np.float32)
    return x, np.where(rng.random(n) < flip, 1 - y, y)


class LabelsOnly(Target):
    """The label a fitted model gives, and nothing else (as a label-only API answers)."""

    label_only = True

    def __init__(self, inner: Any, spec: InputSpec = SPEC) -> None:
        super().__init__(list(inner.classes), spec, name="labels-api")
        self.inner, self.seen = inner, []

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(x))
        with self.inner.uncounted():
            return np.eye(self.n_classes)[self.inner.predict_proba(x).argmax(1)]


def forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return sklearn_train_fn(RandomForestClassifier(n_estimators=20, random_state=0))


@pytest.fixture(scope="module")
def memorised() -> tuple[LabelsOnly, MembershipSplits]:
    """Fully grown trees on 150 records with noisy labels: every member's label is right (memorised),
    a third of the non-members' are not."""
    xm, ym = blobs(150, 0)
    xn, yn = blobs(300, 1)
    xr, yr = blobs(400, 2)
    model = forest()(TrainRequest(xm, ym, seed=0, input_spec=SPEC, classes=[0, 1]))
    return LabelsOnly(model), MembershipSplits(xm, ym, xn, yn, xr, yr)


def test_it_runs_on_labels_only_and_finds_members(memorised) -> None:
    target, splits = memorised
    with pytest.raises(UsageError, match="answers labels only"):
        get_membership_attack("loss-threshold").run(target, splits)
    res = get_membership_attack("label-robustness", reference_models=4, cache=False).run(
        target, splits, ctx=RunContext(seed=0), trainer=forest())
    assert res.auc > 0.62 and res.tpr_at(0.1) > 0.15, (res.auc, res.tpr_at(0.1))  # chance: 0.5 and 0.1


def test_the_calibration_is_what_keeps_memorised_outliers_on_the_member_side(memorised) -> None:
    """Robustness alone ranks a memorised mislabelled member (right without noise, wrong under it)
    below an easy non-member; subtracting the reference models' robustness on the same record puts
    it back: the calibrated score beats the raw one."""
    target, splits = memorised
    res = get_membership_attack("label-robustness", reference_models=4, copies=8, cache=False).run(
        target, splits, ctx=RunContext(seed=0), trainer=forest())
    from bastion.attacks.privacy.membership import roc_curve

    ctx = RunContext(seed=0).spawn("raw")
    x = np.concatenate([splits.members_x, splits.non_members_x])
    y = np.concatenate([splits.members_y, splits.non_members_y])
    views = noisy_views(SPEC, x, 8, [0.05, 0.1, 0.2, 0.4], ctx)
    with target.uncounted():
        raw = robustness(np.stack([target.predict(v) for v in views]), y, 8, 4)
    raw_auc = roc_curve(raw[:150], raw[150:]).auc
    assert res.auc > raw_auc + 0.03, (res.auc, raw_auc)


def test_queries_and_scores_follow_the_parameters_and_the_seed(memorised, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path))
    target, splits = memorised
    n = len(splits.members_x) + len(splits.non_members_x)

    def run(seed: int) -> Any:
        return get_membership_attack("label-robustness", copies=4, levels=[0.1, 0.3], reference_models=1).run(
            target, splits, ctx=RunContext(seed=seed), trainer=forest())

    a, b, c = run(3), run(3), run(4)
    assert a.queries == n * (1 + 4 * 2)
    assert np.array_equal(a.member_scores, b.member_scores) and not np.array_equal(a.member_scores, c.member_scores)
    assert np.all(np.abs(a.member_scores) <= 1)


def test_a_record_draws_the_same_noise_whatever_the_others() -> None:
    x, _ = blobs(40, 5)
    full = noisy_views(SPEC, x, 3, [0.1, 0.2], RunContext(seed=1))
    part = noisy_views(SPEC, x[:7], 3, [0.1, 0.2], RunContext(seed=1))
    assert len(full) == 1 + 3 * 2
    for a, b in zip(full, part, strict=True):
        np.testing.assert_array_equal(a[:7], b)


def test_noisy_copies_keep_the_input_constraints() -> None:
    """An immutable feature never moves, an integer feature stays integral within its bounds; an
    unbounded feature's noise scale is the records' spread."""
    feats = [FeatureSpec(name="age", kind="integer", lower=18, upper=90), FeatureSpec(name="zip", mutable=False),
             FeatureSpec(name="income")]
    spec = InputSpec(shape=(3,), lower=np.array([18, -np.inf, -np.inf]), upper=np.array([90, np.inf, np.inf]),
                     features=feats, kind="tabular")
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(20, 80, 60), rng.integers(0, 9, 60), rng.normal(5e4, 1e4, 60)], 1).astype(np.float32)
    scale = noise_scale(spec, x)
    assert scale[0] == 72 and scale[1] == 0 and abs(scale[2] - x[:, 2].std()) < 1
    seen = np.concatenate(noisy_views(spec, x, 4, [0.1, 0.4], RunContext(seed=0))[1:])
    assert np.all(seen[:, 0] == np.round(seen[:, 0])) and seen[:, 0].min() >= 18 and seen[:, 0].max() <= 90
    assert np.array_equal(seen[:, 1], np.tile(x[:, 1], 8))  # the zip code never moves
    assert seen[:, 2].std() > x[:, 2].std()  # income is perturbed


def test_robustness_counts_the_clean_answer_as_one_level() -> None:
    y = np.array([1, 0])
    labels = np.array([[1, 0],           # clean: both right
                       [1, 0], [0, 0],   # level 1: record 0 right once of 2, record 1 twice
                       [0, 0], [0, 1]])  # level 2: record 0 never, record 1 once
    np.testing.assert_allclose(robustness(labels, y, 2, 2), [(1 + 0.5 + 0) / 3, (1 + 1 + 0.5) / 3])


@pytest.mark.parametrize("params, field", [({"levels": [0.1, -1]}, "levels"), ({"levels": []}, "levels"),
                                           ({"copies": 0}, "copies"), ({"levels": [11]}, "levels"),
                                           ({"reference_models": 0}, "reference_models")])
def test_bad_parameters_are_refused_by_name(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as err:
        get_membership_attack("label-robustness", **params)
    assert err.value.field == field


def test_without_reference_records_it_says_what_it_needs(memorised) -> None:
    target, splits = memorised
    bare = MembershipSplits(splits.members_x, splits.members_y, splits.non_members_x, splits.non_members_y)
    with pytest.raises(UsageError, match="trains its models on reference records, and there are none"):
        get_membership_attack("label-robustness").run(target, bare, trainer=forest())


def test_a_budget_too_small_is_refused_before_any_query(memorised) -> None:
    from bastion.core.threat import ThreatModel

    target, splits = memorised
    before = target.queries
    with pytest.raises(UsageError, match=r"asks 29250 queries \(450 records x \(1 \+ 16 copies x 4 levels\) x 1 "
                                         r"repeat\(s\)\), more than the query budget of 1000"):
        get_membership_attack("label-robustness").run(target, splits, ThreatModel(query_budget=1000),
                                                      trainer=forest())
    assert target.queries == before
