"""The ``membership`` check: can an attacker tell which records the model was trained on?

Runs membership attacks (:data:`bastion.attacks.privacy.MEMBERSHIP_ATTACKS`: thresholds, shadow
models, LiRA, RMIA) on records the policy names as members and non-members (datasets by role, or
indices into them), with reference records for the attacks that train shadow or reference models
through the policy's trainer (in worker processes, cached). It measures, per attack, the ROC AUC,
the membership advantage, the TPR at 0.1 %, 1 % and 10 % FPR with Clopper-Pearson intervals (or
"not measurable with N non-members"), the AUC per class and the members most exposed (indices
only), plus the train/test accuracy gap: the advantage of Yeom et al.'s baseline (arXiv:1709.01604).

An attack that cannot run (a label-only model, a trainer that fails, too little reference data)
is reported with what went wrong and why; the other attacks still run, and the check is then an
error, never a pass.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.membership import (
    LOW_FPRS,
    MEMBERSHIP_ATTACKS,
    MembershipInference,
    MembershipResult,
    MembershipSplits,
    get_membership_attack,
)
from bastion.campaign.checks.base import (AttackChoice, AttackList, Check, CheckContext, CheckFailed, CheckParams,
                                          Interrupted, register_check)
from bastion.campaign.checks.records import RecordSet, select_records
from bastion.campaign.gates import GateView
from bastion.campaign.privacy_rules import GAP_RULE, MEMBERSHIP_RULE
from bastion.core.results import CheckResult, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionError

MEASURED = frozenset({"membership_auc", "membership_advantage", "tpr_at_fpr", "tpr_at_fpr_ci_low",
                      "tpr_at_fpr_ci_high", "membership_auc_by_class", "queries", "train_accuracy",
                      "test_accuracy", "accuracy_gap", "members", "non_members"})


class AttackSpec(AttackChoice):
    registry = MEMBERSHIP_ATTACKS
    what = "membership attack"


class MembershipParams(CheckParams):
    attacks: AttackList[AttackSpec] = Field(
        default_factory=lambda: [AttackSpec(attack="loss-threshold"), AttackSpec(attack="confidence-threshold")],
        description="Membership attacks to run: a name or {attack: NAME, params: {...}}.")
    members: RecordSet = Field(default_factory=lambda: RecordSet(role="members"))
    non_members: RecordSet = Field(default_factory=lambda: RecordSet(role="non_members"))
    reference: RecordSet | None = Field(default=None, description="Records for shadow and reference models "
                                        "(default: the 'reference' dataset when the policy has one).")
    max_records: int | None = Field(default=None, gt=0, description="At most this many members and non-members "
                                    "(a seeded sample of each).")
    query_budget: int | None = Field(default=None, gt=0)


@register_check
class MembershipCheck(Check):
    """Membership inference: which training records an attacker can identify from the model's answers."""

    kind = "membership"
    Params = MembershipParams
    metric_names = MEASURED
    threat_fields = ("query_budget",)

    def __init__(self, name: str, params: MembershipParams) -> None:
        super().__init__(name, params)
        self.params: MembershipParams = params
        self.attacks: list[MembershipInference] = [get_membership_attack(a.attack, **a.params) for a in params.attacks]

    def requirements(self) -> frozenset[str]:
        p = self.params
        needs = {p.members.role, p.non_members.role}
        if any(a.needs_trainer for a in self.attacks):
            needs.add("trainer")
        if p.reference is not None:
            needs.add(p.reference.role)
        elif any(a.needs_reference() for a in self.attacks):
            needs.add("reference")
        return frozenset(needs)

    def gate_view(self) -> GateView:
        names = frozenset(a.label for a in self.attacks)
        return GateView(self.name, frozenset({self.name, self.kind, *names}), MEASURED,
                        {"attack": names, "fpr": frozenset(f"{f:g}" for f in LOW_FPRS), "label": None})

    def run(self, ctx: CheckContext) -> CheckResult:
        from bastion.campaign.executors import make_executor

        target, _, _ = ctx.require_model(self.name)
        t0 = time.perf_counter()
        splits = self._splits(ctx, target)
        res = CheckResult(name=self.name, kind=self.kind, metrics={"attacks": {}, "notes": []})
        res.measure("members", len(splits.members_x), "count")
        res.measure("non_members", len(splits.non_members_x), "count")
        _accuracy_gap(res, target, splits, self.name)
        run = RunContext(seed=ctx.seed, executor=make_executor(ctx.options.get("workers"))).spawn(self.name)
        threat = ThreatModel(query_budget=self.params.query_budget)
        errors: list[str] = []
        results: list[MembershipResult] = []
        for attack in self.attacks:
            try:
                bar = ctx.bar(f"{self.name}: {attack.label}: models trained", attack.models()) if attack.models() \
                    else nullcontext(None)
                with bar as advance:
                    out = attack.run(target, splits, threat, run.spawn(attack.label, progress=advance), ctx.trainer)
            except KeyboardInterrupt:
                raise Interrupted(self._finish(res, results, errors + [f"{attack.label}: interrupted"], t0)) from None
            except BastionError as exc:
                errors.append(f"{attack.label}: {exc.message}")
                continue
            except Exception as exc:  # one attack's crash must not lose the others
                errors.append(f"{attack.label}: {type(exc).__name__}: {exc}")
                continue
            results.append(out)
        final = self._finish(res, results, errors, t0)
        if errors:
            raise CheckFailed(final)
        return final

    # --- inputs --------------------------------------------------------------------------------
    def _splits(self, ctx: CheckContext, target: Target) -> MembershipSplits:
        p = self.params
        xm, ym = self._records(ctx, target, p.members, "members")
        xn, yn = self._records(ctx, target, p.non_members, "non_members")
        if p.max_records is not None:
            rng = np.random.default_rng(ctx.seed)
            km = np.sort(rng.permutation(len(xm))[:p.max_records])
            kn = np.sort(rng.permutation(len(xn))[:p.max_records])
            xm, ym, xn, yn = xm[km], ym[km], xn[kn], yn[kn]
        ref = p.reference or (RecordSet(role="reference") if "reference" in ctx.datasets else None)
        xr = yr = None
        if ref is not None:
            xr, yr = self._records(ctx, target, ref, "reference")
        return MembershipSplits(xm, ym, xn, yn, xr, yr)

    def _records(self, ctx: CheckContext, target: Target, rs: RecordSet, where: str) -> tuple[np.ndarray, np.ndarray]:
        return select_records(ctx, target, rs, self.name, where)

    # --- results -------------------------------------------------------------------------------
    def _finish(self, res: CheckResult, results: list[MembershipResult], errors: list[str], t0: float) -> CheckResult:
        for r in results:
            r.record(res)
            res.metrics["attacks"][r.attack] = {
                "auc": r.auc, "advantage": r.advantage, "seconds": round(r.seconds, 2), "queries": r.queries,
                "repeats": r.repeats,
                "tpr_at_fpr": [p.model_dump(exclude_none=True) for p in r.tpr_at_low_fpr],
                "most_exposed": [e.model_dump() for e in r.exposed], "notes": r.notes}
            res.metrics["notes"] += [f"{r.attack}: TPR at FPR {p.fpr:g} {p.reason}" for p in r.tpr_at_low_fpr
                                     if not p.measurable]
        worst = max(results, key=_leak_rank, default=None)
        severity = _severity(worst) if worst is not None else None
        if worst is not None and severity is not None:
            res.findings.append(_finding(worst, severity, self.name))
        if errors:
            res.status = "error"
            res.reason = "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res


def _leak_rank(r: MembershipResult) -> tuple[int, float]:
    sev = _severity(r)
    return (sev.rank if sev is not None else -1, r.auc)


def _severity(r: MembershipResult) -> Severity | None:
    """High: at FPR <= 1 % the TPR is, with 95 % confidence, over 10x the FPR, or AUC >= 0.75;
    medium: over 3x, or AUC >= 0.6; low: over 1x (better than chance), or AUC >= 0.55."""
    low = [p for p in r.tpr_at_low_fpr if p.measurable and p.fpr <= 0.01 and p.ci_low is not None]

    def beats(factor: float) -> bool:
        return any(p.ci_low > factor * p.fpr for p in low)  # type: ignore[operator]

    if beats(10) or r.auc >= 0.75:
        return Severity.high
    if beats(3) or r.auc >= 0.6:
        return Severity.medium
    if beats(1) or r.auc >= 0.55:
        return Severity.low
    return None


def _finding(r: MembershipResult, severity: Severity, check: str) -> Any:
    rule = get_rule(MEMBERSHIP_RULE)
    measured = [p for p in r.tpr_at_low_fpr if p.measurable and p.fpr <= 0.01]
    at = (f"identifies {measured[0].tpr:.1%} of the training records at a {measured[0].fpr:.1%} false-positive rate "
          f"(95 % interval {measured[0].ci_low:.1%}–{measured[0].ci_high:.1%})" if measured else
          "reaches the AUC above (too few non-members to measure a TPR at 1 % FPR)")
    return rule.finding(
        title=f"{r.attack}: membership AUC {r.auc:.3f}, advantage {r.advantage:.1%}", check=check, severity=severity,
        description=f"The {r.attack} attack {at}. Chance would identify as many training records as it wrongly "
                    "accuses. The most exposed training records are listed by index (never their values).",
        metrics={"attack": r.attack, "auc": r.auc, "advantage": r.advantage,
                 "tpr_at_fpr": {f"{p.fpr:g}": p.tpr for p in r.tpr_at_low_fpr},
                 "most_exposed_members": [e.index for e in r.exposed]})


def _accuracy_gap(res: CheckResult, target: Target, s: MembershipSplits, check: str) -> None:
    """Train (members) and test (non-members) accuracy, and their gap: Yeom et al.'s baseline."""
    with target.uncounted():  # bastion's own measurement
        train = float(np.mean(target.predict_proba(s.members_x).argmax(1) == s.members_y))
        test = float(np.mean(target.predict_proba(s.non_members_x).argmax(1) == s.non_members_y))
    gap = train - test
    res.measure("train_accuracy", train, "ratio")
    res.measure("test_accuracy", test, "ratio")
    res.measure("accuracy_gap", gap, "ratio")
    if gap >= 0.02:
        rule = get_rule(GAP_RULE)
        res.findings.append(rule.finding(
            title=f"Train accuracy {train:.1%}, test accuracy {test:.1%} (gap {gap:.1%})", check=check,
            severity=Severity.medium if gap >= 0.1 else Severity.low,
            description=f"The model is right on {train:.1%} of its training records but on {test:.1%} of new ones: "
                        f"a membership advantage of {gap:.1%} for the attacker who guesses 'member' whenever the "
                        "model is right (Yeom et al. 2018).",
            metrics={"train_accuracy": train, "test_accuracy": test, "accuracy_gap": gap}))
