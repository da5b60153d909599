"""Membership inference: ``run(target, splits, threat, ctx, trainer) -> MembershipResult``.

An algorithm scores every record (higher = more likely a training member); the base validates
the splits and the scores once for every algorithm and turns them into the ROC curve, its AUC and
the true-positive rate at low false-positive rates — the figure that matters for privacy (Carlini
et al., 2022, "Membership Inference Attacks From First Principles", arXiv:2112.03570) — and the
membership advantage max(TPR - FPR) (Yeom et al., 2018, arXiv:1709.01604).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from bastion.core.arrays import Array
from bastion.core.capability import Configurable, metering
from bastion.core.data import check_label_indices
from bastion.core.results import CheckResult, RocCurve
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, DataError, UsageError

LOW_FPRS = (0.001, 0.01, 0.1)


@dataclass(frozen=True)
class MembershipSplits:
    """Records known to be in the target's training set and records known not to be, with their
    labels as class indices of the target."""

    members_x: np.ndarray
    members_y: np.ndarray
    non_members_x: np.ndarray
    non_members_y: np.ndarray

    def __post_init__(self) -> None:
        for part in ("members", "non_members"):
            x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
            if len(x) == 0:
                raise DataError(f"{part}: no records; membership inference needs both members and non-members")
            if len(x) != len(y):
                raise DataError(f"{part}: {len(x)} records but {len(y)} labels")


class Roc(BaseModel):
    """Receiver operating characteristic: ``fpr[i]``, ``tpr[i]`` when predicting "member" for
    scores >= ``thresholds[i]`` (the first point, threshold +inf, predicts nobody; null in JSON)."""

    fpr: Array
    tpr: Array
    thresholds: Array
    auc: float


class OperatingPoint(BaseModel):
    """The best TPR reachable while the FPR stays at or below ``fpr``."""

    fpr: float
    tpr: float
    threshold: float


class MembershipResult(BaseModel):
    """Per-record scores of one membership attack and what they achieve."""

    attack: str
    member_scores: Array
    non_member_scores: Array
    roc: Roc
    auc: float
    advantage: float
    tpr_at_low_fpr: list[OperatingPoint]
    queries: int
    seconds: float

    def tpr_at(self, fpr: float) -> float:
        return tpr_at_fpr(self.roc, fpr).tpr

    def record(self, check: CheckResult) -> None:
        """Add this result's measurements (what gates read) and its ROC artifact to ``check``."""
        check.measure("membership_auc", self.auc, "score", attack=self.attack)
        check.measure("membership_advantage", self.advantage, "ratio", attack=self.attack)
        for p in self.tpr_at_low_fpr:
            check.measure("tpr_at_fpr", p.tpr, "ratio", attack=self.attack, fpr=p.fpr)
        check.measure("queries", self.queries, "queries", attack=self.attack)
        check.artifacts.append(RocCurve(attack=self.attack, fpr=self.roc.fpr.tolist(), tpr=self.roc.tpr.tolist(),
                                        auc=self.auc))


def roc_curve(member_scores: np.ndarray, non_member_scores: np.ndarray) -> Roc:
    """The ROC of scores where members are positives, with tied scores sharing one point; the AUC
    by the trapezoid rule (equal to the Mann-Whitney probability, ties counting one half)."""
    pos, neg = np.asarray(member_scores, np.float64), np.asarray(non_member_scores, np.float64)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(lab)[last]
    fps = (last + 1) - tps
    tpr, fpr = np.r_[0.0, tps / len(pos)], np.r_[0.0, fps / len(neg)]
    return Roc(fpr=fpr, tpr=tpr, thresholds=np.r_[np.inf, s[last]], auc=float(np.trapezoid(tpr, fpr)))


def tpr_at_fpr(roc: Roc, fpr: float) -> OperatingPoint:
    """The highest TPR among ROC points whose FPR is at most ``fpr`` (never interpolated)."""
    if not 0.0 <= fpr <= 1.0:
        raise UsageError(f"fpr must be in [0, 1], got {fpr}")
    ok = np.flatnonzero(roc.fpr <= fpr + 1e-12)
    best = ok[np.argmax(roc.tpr[ok])]
    return OperatingPoint(fpr=fpr, tpr=float(roc.tpr[best]), threshold=float(roc.thresholds[best]))


class MembershipInference(Configurable, ABC):
    """Base of every membership-inference attack. Subclasses implement ``_score``; attacks that
    train shadow or reference models set ``needs_trainer`` and receive the run's TrainFn."""

    family: ClassVar[str] = "membership"
    needs_trainer: ClassVar[bool] = False

    def run(self, target: Target, splits: MembershipSplits, threat: ThreatModel | None = None,
            ctx: RunContext | None = None, trainer: Any = None) -> MembershipResult:
        """Score every record of ``splits`` and measure how well the scores separate members."""
        if self.needs_trainer and trainer is None:
            raise UsageError(f"membership attack '{self.label}' trains reference models and needs a trainer",
                             hint="give the policy a 'trainer' (python:train.py:fit or a scikit-learn estimator)")
        spec = target.input_spec
        xm = spec.validate(splits.members_x, what="members")
        xn = spec.validate(splits.non_members_x, what="non-members")
        ym = check_label_indices(splits.members_y, len(xm), target.n_classes, what="member labels")
        yn = check_label_indices(splits.non_members_y, len(xn), target.n_classes, what="non-member labels")
        checked = MembershipSplits(members_x=xm, members_y=ym, non_members_x=xn, non_members_y=yn)
        threat, rctx = threat or ThreatModel(), self.run_context(ctx)
        with metering(rctx, target, threat=threat) as meter:
            sm, sn = self._score(target, checked, threat, rctx, trainer)
        sm, sn = self._check_scores(sm, len(xm), "members"), self._check_scores(sn, len(xn), "non-members")
        roc = roc_curve(sm, sn)
        return MembershipResult(attack=self.label, member_scores=sm, non_member_scores=sn, roc=roc, auc=roc.auc,
                                advantage=float(np.max(roc.tpr - roc.fpr)),
                                tpr_at_low_fpr=[tpr_at_fpr(roc, f) for f in LOW_FPRS],
                                queries=meter.queries, seconds=meter.seconds)

    def _check_scores(self, scores: Any, n: int, part: str) -> np.ndarray:
        s = np.asarray(scores, np.float64)
        if s.shape != (n,):
            raise BastionRuntimeError(f"membership attack '{self.label}' returned {s.shape} scores for {n} {part}")
        if not np.all(np.isfinite(s)):
            raise BastionRuntimeError(f"membership attack '{self.label}' returned NaN or infinite scores for {part}")
        return s

    @abstractmethod
    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the members and of the non-members (higher = more likely a member)."""
