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
from pydantic import BaseModel, Field

from bastion.core.arrays import Array
from bastion.core.capability import Configurable, metering
from bastion.core.data import check_label_indices
from bastion.core.params import Params
from bastion.core.registry import Registry
from bastion.core.repeated import Repeats, asked, query_repeats
from bastion.core.results import CheckResult, RocCurve
from bastion.core.run import RunContext
from bastion.core.stats import clopper_pearson
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, DataError, UsageError

LOW_FPRS = (0.001, 0.01, 0.1)
CONFIDENCE = 0.95  # of the Clopper-Pearson intervals
N_EXPOSED = 10


@dataclass(frozen=True)
class MembershipSplits:
    """Records known to be in the target's training set and records known not to be, with their
    labels as class indices of the target; optionally ``reference`` records from the same
    distribution, known not to be members, that attacks training shadow or reference models use."""

    members_x: np.ndarray
    members_y: np.ndarray
    non_members_x: np.ndarray
    non_members_y: np.ndarray
    reference_x: np.ndarray | None = None
    reference_y: np.ndarray | None = None

    def __post_init__(self) -> None:
        for part in ("members", "non_members"):
            x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
            if len(x) == 0:
                raise DataError(f"{part}: no records; membership inference needs both members and non-members")
            if len(x) != len(y):
                raise DataError(f"{part}: {len(x)} records but {len(y)} labels")
        if (self.reference_x is None) != (self.reference_y is None):
            raise DataError("reference: give both reference_x and reference_y, or neither")
        if self.reference_x is not None and len(self.reference_x) != len(self.reference_y):
            raise DataError(f"reference: {len(self.reference_x)} records but {len(self.reference_y)} labels")

    @property
    def has_reference(self) -> bool:
        return self.reference_x is not None and len(self.reference_x) > 0


class MembershipAttackParams(Params):
    """Parameters every membership attack has."""

    repeats: Repeats = None


class Roc(BaseModel):
    """Receiver operating characteristic: ``fpr[i]``, ``tpr[i]`` when predicting "member" for
    scores >= ``thresholds[i]`` (the first point, threshold +inf, predicts nobody; null in JSON)."""

    fpr: Array
    tpr: Array
    thresholds: Array
    auc: float


class OperatingPoint(BaseModel):
    """The best TPR reachable while the FPR stays at or below ``fpr``, with its Clopper-Pearson
    interval (``ci_low``, ``ci_high``, 95 %) over the ``members`` it was measured on.
    ``measurable`` is False when the non-members are too few for that FPR (fewer than 1/fpr:
    not one false positive is allowed); ``tpr`` is then None, never a made-up 0."""

    fpr: float
    tpr: float | None
    threshold: float | None = None
    true_positives: int | None = None
    members: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    measurable: bool = True
    reason: str | None = None


class ExposedRecord(BaseModel):
    """A member the attack singles out: its index among the members (never its values), its
    label and its score."""

    index: int
    label: int
    score: float


class MembershipResult(BaseModel):
    """Per-record scores of one membership attack and what they achieve: the ROC, its AUC, the
    membership advantage max(TPR - FPR), the TPR at low FPR with intervals, the AUC per class
    (of the records' labels; None where a class lacks members or non-members) and the members
    most exposed."""

    attack: str
    member_scores: Array
    non_member_scores: Array
    roc: Roc
    auc: float
    advantage: float
    tpr_at_low_fpr: list[OperatingPoint]
    per_class_auc: dict[int, float | None] = Field(default_factory=dict)
    exposed: list[ExposedRecord] = Field(default_factory=list)
    queries: int
    seconds: float
    repeats: int = Field(1, description="Queries per record whose answers were averaged (1: asked once).")
    notes: list[str] = Field(default_factory=list)

    def tpr_at(self, fpr: float) -> float | None:
        """The TPR at ``fpr`` (None when the non-members are too few to measure it)."""
        return operating_point(self.roc, fpr, len(self.member_scores), len(self.non_member_scores)).tpr

    def record(self, check: CheckResult) -> None:
        """Add this result's measurements (what gates read) and its ROC artifact to ``check``;
        a TPR that cannot be measured is recorded as not measured (None), with the reason."""
        check.measure("membership_auc", self.auc, "score", attack=self.attack)
        check.measure("membership_advantage", self.advantage, "ratio", attack=self.attack)
        for p in self.tpr_at_low_fpr:
            check.measure("tpr_at_fpr", p.tpr, "ratio", attack=self.attack, fpr=p.fpr)
            if p.measurable:
                check.measure("tpr_at_fpr_ci_low", p.ci_low, "ratio", attack=self.attack, fpr=p.fpr)
                check.measure("tpr_at_fpr_ci_high", p.ci_high, "ratio", attack=self.attack, fpr=p.fpr)
        for cls, auc in self.per_class_auc.items():
            check.measure("membership_auc_by_class", auc, "score", attack=self.attack, label=cls)
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


def measurable_fpr(fpr: float, n_non_members: int) -> bool:
    """Whether ``n_non_members`` can measure an FPR of ``fpr``: at least one false positive must
    fit under it (n * fpr >= 1); below that only "no false positive at all" is observable."""
    return n_non_members * fpr >= 1.0 - 1e-9


def operating_point(roc: Roc, fpr: float, n_members: int, n_non_members: int,
                    confidence: float = CONFIDENCE) -> OperatingPoint:
    """The TPR at ``fpr`` with its Clopper-Pearson interval, or "not measurable with N
    non-members" where N * fpr < 1 (see :func:`measurable_fpr`)."""
    if not measurable_fpr(fpr, n_non_members):
        return OperatingPoint(fpr=fpr, tpr=None, members=n_members, measurable=False,
                              reason=f"not measurable with {n_non_members} non-members "
                                     f"(an FPR of {fpr:g} needs at least {int(np.ceil(1 / fpr - 1e-9))})")
    p = tpr_at_fpr(roc, fpr)
    tp = int(round(p.tpr * n_members))
    lo, hi = clopper_pearson(tp, n_members, confidence)
    return p.model_copy(update={"true_positives": tp, "members": n_members, "ci_low": lo, "ci_high": hi})


def check_disjoint(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Refuse two record sets that share a record (same values): it cannot be both."""
    rows = {r.tobytes(): i for i, r in enumerate(np.ascontiguousarray(a).reshape(len(a), -1))}
    shared = [(rows[r.tobytes()], j) for j, r in enumerate(np.ascontiguousarray(b).reshape(len(b), -1))
              if r.tobytes() in rows]
    if shared:
        i, j = shared[0]
        raise DataError(f"{what} share {len(shared)} record(s) (e.g. record {i} of the first is record {j} of the "
                        "second): a record cannot be both a member and a non-member",
                        hint="remove the shared records from one of the two sets")


class MembershipInference(Configurable, ABC):
    """Base of every membership-inference attack. Subclasses implement ``_score``; attacks that
    train shadow or reference models set ``needs_trainer`` and receive the run's TrainFn, and
    those that need scores (not labels) set ``needs_scores``.

    The base refuses, before any query, what would make the figures meaningless: records outside
    the target's input spec, labels that are not class indices, a record that is both a member
    and a non-member, a label-only target for an attack that needs scores, and no reference
    records for an attack that trains on them."""

    family: ClassVar[str] = "membership"
    Params: ClassVar[type[Params]] = MembershipAttackParams
    needs_trainer: ClassVar[bool] = False
    needs_scores: ClassVar[bool] = True

    def run(self, target: Target, splits: MembershipSplits, threat: ThreatModel | None = None,
            ctx: RunContext | None = None, trainer: Any = None) -> MembershipResult:
        """Score every record of ``splits`` and measure how well the scores separate members."""
        if self.needs_trainer and trainer is None:
            raise UsageError(f"membership attack '{self.label}' trains reference models and needs a trainer",
                             hint="give the policy a 'trainer' (python:train.py:fit or a scikit-learn estimator)")
        if self.needs_scores and target.label_only:
            raise UsageError(f"membership attack '{self.label}' needs the model's scores, but the target "
                             f"'{target.name}' answers labels only",
                             hint="run the label-only attack label-robustness, or test the model behind its scores")
        if self.needs_reference() and not splits.has_reference:
            raise UsageError(f"membership attack '{self.label}' trains its models on reference records, and there "
                             "are none", hint="give the policy 'datasets: {reference: ...}': records from the same "
                                              "source as the training data, not used to train the target")
        checked, notes = self._checked(target, splits)
        threat, rctx = threat or ThreatModel(), self.run_context(ctx)
        repeats = query_repeats(target, self.params.repeats, checked.members_x)  # type: ignore[attr-defined]
        if repeats > 1:
            notes.append(f"randomised target: each record asked {repeats} times and the answers averaged "
                         f"({repeats} queries per record; shadow and reference models' answers averaged alike)")
        with metering(rctx, target, threat=threat) as meter:
            sm, sn = self._score(asked(target, repeats), checked, threat, rctx, trainer)
        xm, xn = checked.members_x, checked.non_members_x
        sm, sn = self._check_scores(sm, len(xm), "members"), self._check_scores(sn, len(xn), "non-members")
        roc = roc_curve(sm, sn)
        top = np.argsort(-sm, kind="mergesort")[:N_EXPOSED]
        return MembershipResult(
            attack=self.label, member_scores=sm, non_member_scores=sn, roc=roc, auc=roc.auc,
            advantage=float(np.max(roc.tpr - roc.fpr)),
            tpr_at_low_fpr=[operating_point(roc, f, len(sm), len(sn)) for f in LOW_FPRS],
            per_class_auc=_per_class_auc(sm, sn, checked.members_y, checked.non_members_y, target.n_classes),
            exposed=[ExposedRecord(index=int(i), label=int(checked.members_y[i]), score=float(sm[i])) for i in top],
            queries=meter.queries, seconds=meter.seconds, repeats=repeats, notes=notes)

    def needs_reference(self) -> bool:
        """Whether the attack needs reference records (to train shadow or reference models on)."""
        return False

    def models(self) -> int:
        """How many shadow or reference models the attack trains (0: none)."""
        return 0

    def _checked(self, target: Target, splits: MembershipSplits) -> tuple[MembershipSplits, list[str]]:
        spec, k = target.input_spec, target.n_classes
        xm = spec.validate(splits.members_x, what="members")
        xn = spec.validate(splits.non_members_x, what="non-members")
        ym = check_label_indices(splits.members_y, len(xm), k, what="member labels")
        yn = check_label_indices(splits.non_members_y, len(xn), k, what="non-member labels")
        check_disjoint(xm, xn, "members and non-members")
        notes: list[str] = []
        xr = yr = None
        if splits.has_reference:
            xr = spec.validate(splits.reference_x, what="reference records")
            yr = check_label_indices(splits.reference_y, len(xr), k, what="reference labels")
            known = {r.tobytes() for r in np.ascontiguousarray(np.concatenate([xm, xn])).reshape(len(xm) + len(xn), -1)}
            keep = np.array([r.tobytes() not in known for r in np.ascontiguousarray(xr).reshape(len(xr), -1)], bool)
            if not keep.all():
                notes.append(f"{int((~keep).sum())} reference record(s) equal to a member or non-member were left out "
                             "of the reference data")
                xr, yr = xr[keep], yr[keep]
        return MembershipSplits(xm, ym, xn, yn, xr, yr), notes

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
        """Scores of the members and of the non-members (higher = more likely a member). ``target``
        is asked as the attacker asks it: through a :class:`~bastion.core.repeated.RepeatedQueries`
        view when it is randomised."""


def _per_class_auc(sm: np.ndarray, sn: np.ndarray, ym: np.ndarray, yn: np.ndarray, k: int) -> dict[int, float | None]:
    """The AUC of the records of each label (None where the label lacks members or non-members)."""
    out: dict[int, float | None] = {}
    for c in range(k):
        a, b = sm[ym == c], sn[yn == c]
        if len(a) or len(b):
            out[c] = roc_curve(a, b).auc if len(a) and len(b) else None
    return out


_HERE = "bastion.attacks.privacy"
MEMBERSHIP_ATTACKS: Registry[type[MembershipInference]] = Registry("membership attack", {
    "loss-threshold": f"{_HERE}.thresholds:LossThreshold",
    "confidence-threshold": f"{_HERE}.thresholds:ConfidenceThreshold",
    "shadow": f"{_HERE}.shokri:ShadowModelAttack",
    "lira": f"{_HERE}.lira:LiRA",
    "rmia": f"{_HERE}.rmia:RMIA",
    "label-robustness": f"{_HERE}.label_only:LabelRobustness",
}, group="bastion.membership_attacks")
"""Every membership attack by name: bastion's own and those of the ``bastion.membership_attacks``
entry points."""


def get_membership_attack(name: str, **params: Any) -> MembershipInference:
    """Build a registered membership attack by name, validating its parameters."""
    return MEMBERSHIP_ATTACKS.get_object(name)(**params)
