"""The ``model-inversion`` check: does the model, queried for each class, give away what that
class's records look like?

Runs inversion attacks (:data:`bastion.attacks.privacy.INVERSION_ATTACKS`: ``mi-face`` with
gradients, ``mi-face-scores`` from scores only; by default the first on a white-box target, else the
second) and compares each class's reconstruction with the mean of that class's real records (by
default the ``train`` dataset when the policy has one, else ``eval``). It measures the share of
classes whose reconstruction is most similar to its own class mean (chance: one in the number of
classes), the mean similarity, distances and the model's confidence, and draws the
reconstructions beside the class means. Identification above chance (exact binomial test) is a
``BASTION-MI-004`` finding (ATLAS AML.T0024.001, OWASP ML03).
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.inference import (
    INVERSION_ATTACKS,
    InversionResult,
    ModelInversion,
    get_inversion_attack,
)
from bastion.campaign.checks.base import (AttackChoice, AttackList, Check, CheckContext, CheckFailed, CheckParams,
                                          Interrupted, register_check)
from bastion.campaign.checks.records import RecordSet, select_records
from bastion.campaign.gates import GateView
from bastion.campaign.privacy_rules import INVERSION_RULE
from bastion.core.data import Dataset
from bastion.core.results import CheckResult, Finding, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.threat import ThreatModel
from bastion.errors import BastionError

MEASURED = frozenset({"inversion_identified", "inversion_similarity", "inversion_distance", "baseline_distance",
                      "inversion_advantage", "inversion_confidence", "queries", "records"})
SIGNIFICANCE = 0.05


class InversionAttackSpec(AttackChoice):
    registry = INVERSION_ATTACKS
    what = "inversion attack"


class InversionParams(CheckParams):
    attacks: AttackList[InversionAttackSpec] | None = Field(
        default=None, description="Inversion attacks: a name or {attack: NAME, params: {...}} (default: mi-face on a "
                                  "white-box target, else mi-face-scores).")
    records: RecordSet | None = Field(default=None, description="The private records the reconstructions are compared "
                                      "with (default: the 'train' dataset when the policy has one, else 'eval').")
    query_budget: int | None = Field(default=None, gt=0)


@register_check
class ModelInversionCheck(Check):
    """Model inversion: reconstructions of each class, compared with the real class means."""

    kind = "model-inversion"
    Params = InversionParams
    metric_names = MEASURED
    threat_fields = ("query_budget",)

    def __init__(self, name: str, params: InversionParams) -> None:
        super().__init__(name, params)
        self.params: InversionParams = params
        self.attacks: list[ModelInversion] | None = (
            None if params.attacks is None else [get_inversion_attack(a.attack, **a.params) for a in params.attacks])

    def requirements(self) -> frozenset[str]:
        needs = {self.params.records.role} if self.params.records is not None else set()
        if any(a.needs_gradients for a in self.attacks or []):
            needs.add("gradients")
        return frozenset(needs)

    def gate_view(self) -> GateView:
        names = frozenset(INVERSION_ATTACKS.names() if self.attacks is None else (a.label for a in self.attacks))
        return GateView(self.name, frozenset({self.name, self.kind, *names}), MEASURED, {"attack": names})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, _, _ = ctx.require_model(self.name)
        t0 = time.perf_counter()
        records = self.params.records or RecordSet(role="train" if "train" in ctx.datasets else "eval")
        x, y = select_records(ctx, target, records, self.name, "records")
        attacks = self.attacks or [get_inversion_attack(
            "mi-face" if target.adaptive_view().white_box else "mi-face-scores")]
        res = CheckResult(name=self.name, kind=self.kind, metrics={"records": records.role, "attacks": {}})
        res.measure("records", len(x), "count")
        run = RunContext(seed=ctx.seed).spawn(self.name)
        threat = ThreatModel(query_budget=self.params.query_budget)
        names = [str(c) for c in target.classes]
        results: list[InversionResult] = []
        errors: list[str] = []
        for attack in attacks:
            try:
                results.append(attack.run(target, Dataset(x, y), threat, run))
            except KeyboardInterrupt:
                raise Interrupted(self._finish(res, results, errors + [f"{attack.label}: interrupted"], names,
                                               t0)) from None
            except BastionError as exc:
                errors.append(f"{attack.label}: {exc.message}")
            except Exception as exc:  # one attack's crash must not lose the others
                errors.append(f"{attack.label}: {type(exc).__name__}: {exc}")
        final = self._finish(res, results, errors, names, t0)
        if errors:
            raise CheckFailed(final)
        return final

    def _finish(self, res: CheckResult, results: list[InversionResult], errors: list[str], names: list[str],
                t0: float) -> CheckResult:
        for r in results:
            r.record(res, names)
            res.metrics["attacks"][r.attack] = {
                "identified": r.identified, "p_value": r.p_value, "classes": len(r.classes),
                "similarity": None if r.similarity is None else float(np.mean(r.similarity)),
                "distance": r.distance, "baseline_distance": r.baseline, "confidence": float(np.mean(r.confidence)),
                "queries": r.queries, "seconds": round(r.seconds, 2)}
        leaks = [r for r in results if r.p_value is not None and r.p_value < SIGNIFICANCE]
        if leaks:
            res.findings.append(_finding(max(leaks, key=lambda r: r.identified or 0.0), names, self.name))
        if errors:
            res.status = "error"
            res.reason = "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res


def _severity(r: InversionResult) -> Severity:
    """High: at least 80 % of the classes identified; medium: at least half; low: fewer, yet above chance."""
    share = r.identified or 0.0
    return Severity.high if share >= 0.8 else Severity.medium if share >= 0.5 else Severity.low


def _finding(r: InversionResult, names: list[str], check: str) -> Finding:
    rule = get_rule(INVERSION_RULE)
    k = len(r.classes)
    hits = int(round((r.identified or 0.0) * k))
    return rule.finding(
        title=f"{r.attack}: reconstructions of {hits} of {k} classes resemble their own class most",
        check=check, severity=_severity(r),
        description=(f"From the model alone, the {r.attack} attack reconstructed an input for every class; {hits} of "
                     f"{k} reconstructions are more similar to the mean of their own class's real records than to any "
                     f"other class's (chance: 1 in {k}; exact binomial p = "
                     f"{r.p_value:.2g}). Mean similarity to the own class mean: "
                     f"{float(np.mean(r.similarity)) if r.similarity is not None else 0.0:.2f} (cosine, relative to "
                     "the mean of all records). The report shows the reconstructions beside the class means."),
        metrics={"attack": r.attack, "identified": r.identified, "classes": k, "p_value": r.p_value,
                 "unidentified": [names[c] for c, n in zip(r.classes, r.nearest, strict=True) if n != c]})
