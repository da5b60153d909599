"""The ``extraction`` check: can an attacker copy the model through its prediction API?

Runs extraction attacks (:data:`bastion.attacks.extraction.EXTRACTION_ATTACKS`: equation solving,
and the learning-based ones) within the threat's query budget on a pool of records the policy
names (a dataset role, default ``eval``). It measures, per attack, the fidelity (agreement of the
copy with the model on held-out pool records), the copy's accuracy where the pool has labels, and
the queries spent, and keeps each fidelity curve. The most faithful copy gives the finding
(``BASTION-EX-001``: ATLAS AML.T0024.002 and AML.T0005, OWASP ML05): high at fidelity >= 0.9,
medium at >= 0.75, low at >= 0.5.

An attack that cannot run (equation solving on a label-only model or with too small a budget) is
reported with what went wrong and why; the other attacks still run, and the check is then an
error, never a pass.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from bastion.attacks.extraction import EXTRACTION_ATTACKS, ExtractionResult, ModelExtraction, get_extraction_attack
from bastion.campaign.checks.base import Check, CheckContext, CheckFailed, CheckParams, Interrupted, register_check
from bastion.campaign.checks.membership import RecordSet
from bastion.campaign.privacy_rules import EXTRACTION_RULE
from bastion.campaign.gates import GateView
from bastion.core.data import Dataset, align_labels
from bastion.core.results import CheckResult, Finding, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.threat import ThreatModel
from bastion.errors import BastionError, UsageError

MEASURED = frozenset({"fidelity", "surrogate_accuracy", "queries"})
SEVERITY_AT = ((0.9, Severity.high), (0.75, Severity.medium), (0.5, Severity.low))


class ExtractionAttackSpec(CheckParams):
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("attack")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in EXTRACTION_ATTACKS:
            raise ValueError(f"unknown extraction attack '{v}'; available: {', '.join(EXTRACTION_ATTACKS)}")
        return v


class ExtractionCheckParams(CheckParams):
    attacks: list[ExtractionAttackSpec] = Field(
        default_factory=lambda: [ExtractionAttackSpec(attack="equation-solving")],
        description="Extraction attacks to run: a name or {attack: NAME, params: {...}}.")
    pool: RecordSet = Field(default_factory=lambda: RecordSet(role="eval"),
                            description="Records the attacker may query (part is held out to measure fidelity).")
    query_budget: int | None = Field(default=None, gt=0, description="Queries each attack may send.")

    @field_validator("attacks", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [{"attack": a} if isinstance(a, str) else a for a in v] if isinstance(v, list) else v

    @field_validator("attacks")
    @classmethod
    def _some(cls, v: list[ExtractionAttackSpec]) -> list[ExtractionAttackSpec]:
        if not v:
            raise ValueError("give at least one extraction attack")
        return v


@register_check
class ExtractionCheck(Check):
    """Model extraction: how faithful a copy an attacker gets within the query budget."""

    kind = "extraction"
    Params = ExtractionCheckParams
    metric_names = MEASURED
    threat_fields = ("query_budget",)

    def __init__(self, name: str, params: ExtractionCheckParams) -> None:
        super().__init__(name, params)
        self.params: ExtractionCheckParams = params
        self.attacks: list[ModelExtraction] = [get_extraction_attack(a.attack, **a.params) for a in params.attacks]

    def requirements(self) -> frozenset[str]:
        return frozenset({self.params.pool.role})

    def gate_view(self) -> GateView:
        names = frozenset(a.label for a in self.attacks)
        return GateView(self.name, frozenset({self.name, self.kind, *names}), MEASURED, {"attack": names})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, _, _ = ctx.require_model(self.name)
        t0 = time.perf_counter()
        pool = self._pool(ctx)
        res = CheckResult(name=self.name, kind=self.kind, metrics={"attacks": {}})
        run = RunContext(seed=ctx.seed).spawn(self.name)
        threat = ThreatModel(query_budget=self.params.query_budget)
        errors: list[str] = []
        results: list[ExtractionResult] = []
        for attack in self.attacks:
            try:
                out = attack.run(target, pool, threat, run)
            except KeyboardInterrupt:
                raise Interrupted(self._finish(res, results, errors + [f"{attack.label}: interrupted"], t0)) from None
            except BastionError as exc:
                errors.append(f"{attack.label}: {exc.message}")
                continue
            except Exception as exc:  # one attack's crash must not lose the others
                errors.append(f"{attack.label}: {type(exc).__name__}: {exc}")
                continue
            results.append(out)
            if out.interrupted:
                raise Interrupted(self._finish(res, results, errors + [f"{attack.label}: interrupted"], t0))
        final = self._finish(res, results, errors, t0)
        if errors:
            raise CheckFailed(final)
        return final

    def _pool(self, ctx: CheckContext) -> Dataset:
        """The pool's records, labels as class indices (so the copy's accuracy is measured too)."""
        rs, target = self.params.pool, ctx.target
        assert target is not None
        if rs.role == "eval":
            data, y = ctx.data, ctx.y
        elif rs.role in ctx.datasets:
            data = ctx.datasets[rs.role]
            y = align_labels(data, target)
        else:
            raise UsageError(f"check '{self.name}': the pool comes from the dataset role '{rs.role}', which the "
                             "policy does not give", hint=f"add 'datasets: {{{rs.role}: ...}}' to the policy")
        assert data is not None and y is not None
        idx = rs.select(len(data), "pool")
        return Dataset(np.asarray(data.x)[idx], np.asarray(y)[idx], name=data.name)

    def _finish(self, res: CheckResult, results: list[ExtractionResult], errors: list[str],
                t0: float) -> CheckResult:
        for r in results:
            r.record(res)
            res.metrics["attacks"][r.attack] = {
                "fidelity": r.fidelity, "accuracy": r.accuracy, "target_accuracy": r.target_accuracy,
                "queries": r.queries, "seconds": round(r.seconds, 2), "complete": r.complete, "reason": r.reason}
        best = max(results, key=lambda r: r.fidelity, default=None)
        if best is not None and (finding := _finding(best, self.name)) is not None:
            res.findings.append(finding)
        if errors:
            res.status = "error"
            res.reason = "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res


def _finding(r: ExtractionResult, check: str) -> Finding | None:
    severity = next((s for at, s in SEVERITY_AT if r.fidelity >= at), None)
    if severity is None:
        return None
    acc = (f" The copy is right on {r.accuracy:.1%} of them (the model on {r.target_accuracy:.1%})."
           if r.accuracy is not None and r.target_accuracy is not None else "")
    return get_rule(EXTRACTION_RULE).finding(
        title=f"{r.attack}: a copy agreeing with the model on {r.fidelity:.1%} of held-out inputs after "
              f"{r.queries} queries", check=check, severity=severity,
        description=f"The {r.attack} attack built a copy of the model from {r.queries} queries that agrees with it "
                    f"on {r.fidelity:.1%} of held-out inputs.{acc}",
        metrics={"attack": r.attack, "fidelity": r.fidelity, "queries": r.queries, "accuracy": r.accuracy})
