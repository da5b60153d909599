"""Membership-inference contract: a loss-threshold attack written here (Yeom et al., 2018) on an
overfitted forest; the base's ROC, AUC and TPR at low FPR against scikit-learn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.attacks.privacy import MembershipInference, MembershipSplits, roc_curve, tpr_at_fpr
from bastion.errors import BastionRuntimeError, DataError, UsageError


class LossThreshold(MembershipInference):
    """Score = minus the cross-entropy loss of the record's own label."""

    name = "loss-threshold"

    def _score(self, target, splits, threat, ctx, trainer):
        def score(x, y):
            p = target.predict_proba(x)[np.arange(len(y)), y]
            return np.log(np.clip(p, 1e-12, 1))
        return score(splits.members_x, splits.members_y), score(splits.non_members_x, splits.non_members_y)


class Broken(MembershipInference):
    name = "broken"
    bad = "shape"

    def _score(self, target, splits, threat, ctx, trainer):
        n = len(splits.members_x)
        if self.bad == "shape":
            return np.zeros(n - 1), np.zeros(len(splits.non_members_x))
        return np.full(n, np.nan), np.zeros(len(splits.non_members_x))


class Shadow(LossThreshold):
    name = "shadow"
    needs_trainer = True


def splits_of(members, non_members) -> MembershipSplits:
    return MembershipSplits(*members, *non_members)


def test_loss_threshold_separates_members_of_an_overfitted_model(overfit) -> None:
    target, members, non_members = overfit
    res = LossThreshold().run(target, splits_of(members, non_members))
    assert res.auc > 0.65 and res.advantage > 0.3
    assert res.queries == len(members[0]) + len(non_members[0])
    assert [p.fpr for p in res.tpr_at_low_fpr] == [0.001, 0.01, 0.1]
    assert res.tpr_at(0.1) is not None  # 60 non-members: an FPR of 1 % or 0.1 % cannot be measured, and is not made up
    assert res.tpr_at(0.01) is None and res.tpr_at(0.001) is None
    assert res.tpr_at_low_fpr[1].reason == "not measurable with 60 non-members (an FPR of 0.01 needs at least 100)"
    doc = res.model_dump(mode="json")  # per-record scores become plain lists in JSON
    assert len(doc["member_scores"]) == 60 and doc["roc"]["thresholds"][0] is None  # +inf: JSON has none


def test_result_records_measurements_and_a_roc_artifact_into_a_check(overfit) -> None:
    from bastion.core.results import CheckResult

    target, members, non_members = overfit
    res = LossThreshold().run(target, splits_of(members, non_members))
    check = CheckResult(name="privacy", kind="membership")
    res.record(check)
    assert check.values("membership_auc", attack="loss-threshold") == [res.auc]
    assert check.values("tpr_at_fpr", fpr=0.1) == [res.tpr_at(0.1)]
    again = CheckResult.model_validate_json(check.model_dump_json())  # report.json round trip
    assert again.artifacts[0].type == "roc_curve" and again.artifacts[0].tpr == res.roc.tpr.tolist()


def test_roc_and_auc_match_scikit_learn(overfit) -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    target, members, non_members = overfit
    res = LossThreshold().run(target, splits_of(members, non_members))
    labels = np.r_[np.ones(60), np.zeros(60)]
    scores = np.r_[res.member_scores, res.non_member_scores]
    fpr, tpr, _ = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(res.roc.fpr, fpr)
    np.testing.assert_allclose(res.roc.tpr, tpr)
    assert res.auc == pytest.approx(roc_auc_score(labels, scores))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.lists(st.integers(0, 5), min_size=1, max_size=30),
       st.sampled_from([0.0, 0.05, 0.2, 0.5]))
def test_tpr_at_fpr_is_the_best_threshold_by_brute_force(pos, neg, alpha) -> None:
    """Integer scores force ties; the answer is the best TPR over every threshold with FPR <= alpha."""
    pos, neg = np.array(pos, float), np.array(neg, float)
    roc = roc_curve(pos, neg)
    best = max(np.mean(pos >= t) for t in [np.inf, *np.r_[pos, neg]] if np.mean(neg >= t) <= alpha)
    assert tpr_at_fpr(roc, alpha).tpr == pytest.approx(best)
    wins = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert roc.auc == pytest.approx(wins)  # the Mann-Whitney probability, ties one half


def test_base_refuses_bad_scores_and_splits(overfit) -> None:
    target, members, non_members = overfit
    splits = splits_of(members, non_members)
    with pytest.raises(BastionRuntimeError, match="59,.*60 members"):
        Broken().run(target, splits)
    nan = Broken()
    nan.bad = "nan"
    with pytest.raises(BastionRuntimeError, match="NaN"):
        nan.run(target, splits)
    with pytest.raises(DataError, match="non_members: no records"):
        MembershipSplits(*members, np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(DataError, match="member labels must be in"):
        LossThreshold().run(target, MembershipSplits(members[0], members[1] + 5, *non_members))
    with pytest.raises(DataError, match="members fall outside"):
        LossThreshold().run(target, MembershipSplits(members[0] + 2, members[1], *non_members))


def test_an_attack_that_trains_needs_a_trainer(overfit) -> None:
    target, members, non_members = overfit
    with pytest.raises(UsageError, match="needs a trainer"):
        Shadow().run(target, splits_of(members, non_members))
    assert Shadow().run(target, splits_of(members, non_members), trainer=object()).auc > 0.65


def test_parameters_are_one_pydantic_model_and_bad_ones_name_themselves() -> None:
    from pydantic import Field

    from bastion.core.params import Params

    class ShadowParams(Params):
        shadows: int = Field(4, ge=1)

    class WithParams(LossThreshold):
        Params = ShadowParams

    assert WithParams(shadows=8).params.shadows == 8
    with pytest.raises(UsageError, match=r"membership 'loss-threshold': shadows=0 is not allowed: .*greater than"):
        WithParams(shadows=0)
    with pytest.raises(UsageError, match="unknown parameter 'shadow'\n.*allowed: shadows"):
        WithParams(shadow=3)


def test_queries_are_charged_to_the_run_within_the_threat_budget(overfit) -> None:
    from bastion.core.run import RunContext
    from bastion.core.threat import ThreatModel
    from bastion.errors import QueryBudgetExceeded

    target, members, non_members = overfit
    ctx = RunContext(seed=0)
    LossThreshold().run(target, splits_of(members, non_members), ctx=ctx)
    assert ctx.ledger.spent == 120 and ctx.query_log.queries == 120
    with pytest.raises(QueryBudgetExceeded, match="budget of 100"):
        LossThreshold().run(target, splits_of(members, non_members), ThreatModel(query_budget=100), ctx)
