"""The ``attribute-inference`` check: can an attacker who knows a record's other columns and label
learn its sensitive column from the model?

Runs attribute attacks (:data:`bastion.attacks.privacy.ATTRIBUTE_ATTACKS`: ``fredrikson``,
``learned``) on the records the policy names (by default the ``train`` dataset, else ``eval``),
with the attacker's background records whose attribute is known (``known``; by default the
``reference`` dataset when the policy has one). Per attack it measures the accuracy, that of the
baseline that never queries the model (an imputation learner fitted on the known records — the
same learner without the model's answers — else the majority value) and the gain over it with a
95 % interval and an exact McNemar p-value; a gain the interval puts above zero is a
``BASTION-MI-003`` finding (ATLAS AML.T0024.001, OWASP ML03).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from bastion.attacks.privacy.inference import (
    ATTRIBUTE_ATTACKS,
    AttributeData,
    AttributeInference,
    AttributeResult,
    get_attribute_attack,
)
from bastion.campaign.checks.base import (AttackChoice, AttackList, Check, CheckContext, CheckFailed, CheckParams,
                                          Interrupted, register_check)
from bastion.campaign.checks.records import RecordSet, select_records
from bastion.campaign.gates import GateView
from bastion.campaign.privacy_rules import ATTRIBUTE_RULE
from bastion.core.data import Dataset
from bastion.core.results import CheckResult, Finding, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionError, UsageError

MEASURED = frozenset({"attribute_accuracy", "baseline_accuracy", "attribute_advantage", "attribute_advantage_ci_low",
                      "attribute_advantage_ci_high", "queries", "records", "known_records"})
SIGNIFICANCE = 0.05


class AttributeAttackSpec(AttackChoice):
    registry = ATTRIBUTE_ATTACKS
    what = "attribute attack"


class AttributeParams(CheckParams):
    attribute: int | str = Field(description="The sensitive column: its index in the flattened features, or its "
                                             "name (the dataset's feature names, else the target's).")
    attribute_kind: Literal["categorical", "numeric"] = Field(
        default="categorical", description="categorical: a column of codes, each value tried; numeric: binned into "
                                           "quantiles.")
    bins: int = Field(default=5, ge=2, le=64, description="Quantile bins of a numeric attribute.")
    candidates: list[float] | None = Field(default=None, description="The values a categorical attribute may take "
                                           "(default: those present).")
    attacks: AttackList[AttributeAttackSpec] | None = Field(
        default=None, description="Attribute attacks: a name or {attack: NAME, params: {...}} (default: fredrikson, "
                                  "and learned when there are known records).")
    records: RecordSet | None = Field(default=None, description="The records whose attribute is inferred (default: "
                                      "the 'train' dataset when the policy has one, else 'eval').")
    known: RecordSet | None = Field(default=None, description="The attacker's records whose attribute is known "
                                    "(default: the 'reference' dataset when the policy has one).")
    max_records: int | None = Field(default=None, gt=0, description="At most this many records (a seeded sample).")
    query_budget: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _kind_fits(self) -> AttributeParams:
        if self.attribute_kind == "categorical" and "bins" in self.model_fields_set:
            raise ValueError("bins apply to a numeric attribute: add 'attribute_kind: numeric' or remove 'bins'")
        if self.attribute_kind == "numeric" and self.candidates is not None:
            raise ValueError("candidates apply to a categorical attribute; a numeric one is binned ('bins')")
        return self


@register_check
class AttributeInferenceCheck(Check):
    """Attribute inference: what the model's answers reveal of a sensitive column, beyond imputation."""

    kind = "attribute-inference"
    Params = AttributeParams
    metric_names = MEASURED
    threat_fields = ("query_budget",)

    def __init__(self, name: str, params: AttributeParams) -> None:
        super().__init__(name, params)
        self.params: AttributeParams = params
        self.attacks: list[AttributeInference] | None = (
            None if params.attacks is None else [get_attribute_attack(a.attack, **a.params) for a in params.attacks])

    def requirements(self) -> frozenset[str]:
        p = self.params
        needs = {rs.role for rs in (p.records, p.known) if rs is not None}
        if p.known is None and any(a.needs_known for a in self.attacks or []):
            needs.add("reference")
        return frozenset(needs)

    def gate_view(self) -> GateView:
        names = frozenset(ATTRIBUTE_ATTACKS.names() if self.attacks is None else (a.label for a in self.attacks))
        return GateView(self.name, frozenset({self.name, self.kind, *names}), MEASURED,
                        {"attack": names, "attribute": None})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, _, _ = ctx.require_model(self.name)
        t0 = time.perf_counter()
        data, column = self._data(ctx, target)
        attacks = self.attacks or [get_attribute_attack("fredrikson")] + (
            [get_attribute_attack("learned")] if data.known_x is not None else [])
        res = CheckResult(name=self.name, kind=self.kind, metrics={"attribute": column, "attacks": {}})
        res.measure("records", len(data.x), "count")
        res.measure("known_records", 0 if data.known_x is None else len(data.known_x), "count")
        run = RunContext(seed=ctx.seed).spawn(self.name)
        threat = ThreatModel(query_budget=self.params.query_budget)
        results: list[AttributeResult] = []
        errors: list[str] = []
        for attack in attacks:
            try:
                results.append(attack.run(target, data, threat, run))
            except KeyboardInterrupt:
                raise Interrupted(self._finish(res, results, errors + [f"{attack.label}: interrupted"], t0)) from None
            except BastionError as exc:
                errors.append(f"{attack.label}: {exc.message}")
            except Exception as exc:  # one attack's crash must not lose the others
                errors.append(f"{attack.label}: {type(exc).__name__}: {exc}")
        final = self._finish(res, results, errors, t0)
        if errors:
            raise CheckFailed(final)
        return final

    # --- inputs --------------------------------------------------------------------------------
    def _data(self, ctx: CheckContext, target: Target) -> tuple[AttributeData, str]:
        p = self.params
        records = p.records or RecordSet(role="train" if "train" in ctx.datasets else "eval")
        x, y = select_records(ctx, target, records, self.name, "records")
        if p.max_records is not None and len(x) > p.max_records:
            keep = np.sort(np.random.default_rng(ctx.seed).permutation(len(x))[:p.max_records])
            x, y = x[keep], y[keep]
        known = p.known or (RecordSet(role="reference") if "reference" in ctx.datasets else None)
        kx = ky = None
        if known is not None:
            kx, ky = select_records(ctx, target, known, self.name, "known")
        names = _feature_names(ctx, records.role, target)
        index = self._column(names, int(np.prod(target.input_spec.shape)))
        column = names[index] if names else str(index)
        kind = "categorical" if p.attribute_kind == "categorical" else "continuous"
        return AttributeData(x, y, index, kind=kind, candidates=None if p.candidates is None else np.array(p.candidates),
                             known_x=kx, known_y=ky, bins=p.bins if kind == "continuous" else None), column

    def _column(self, names: list[str] | None, width: int) -> int:
        a = self.params.attribute
        if isinstance(a, str):
            if not names or a not in names:
                raise UsageError(f"check '{self.name}': attribute '{a}' is not a column name"
                                 + (f"; columns: {', '.join(names[:20])}" if names else
                                    "; the data have no column names, give the column's index"))
            return names.index(a)
        if not 0 <= a < width:
            raise UsageError(f"check '{self.name}': attribute must be a column index in [0, {width - 1}], got {a}")
        return a

    # --- results -------------------------------------------------------------------------------
    def _finish(self, res: CheckResult, results: list[AttributeResult], errors: list[str], t0: float) -> CheckResult:
        column = res.metrics["attribute"]
        for r in results:
            r.record(res)
            res.metrics["attacks"][r.attack] = {
                "accuracy": r.value, "baseline": r.baseline, "baseline_kind": r.baseline_kind, "gain": r.advantage,
                "interval": [r.ci_low, r.ci_high], "p_value": r.p_value, "queries": r.queries,
                "seconds": round(r.seconds, 2), "candidates": r.candidates}
        leaks = [r for r in results if _leaks(r)]
        if leaks:
            res.findings.append(_finding(max(leaks, key=lambda r: r.ci_low or 0.0), column, self.name))
        if errors:
            res.status = "error"
            res.reason = "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res


def _feature_names(ctx: CheckContext, role: str, target: Target) -> list[str] | None:
    data = ctx.data if role == "eval" else ctx.datasets.get(role)
    if isinstance(data, Dataset) and data.feature_names:
        return list(data.feature_names)
    features = target.input_spec.features
    return [f.name for f in features] if features else None


def _leaks(r: AttributeResult) -> bool:
    """The gain is above zero with 95 % confidence (interval and exact test agree)."""
    return (r.metric == "accuracy" and r.ci_low is not None and r.ci_low > 0 and r.p_value is not None
            and r.p_value < SIGNIFICANCE)


def _severity(r: AttributeResult) -> Severity:
    """High: the gain's interval lies above 10 points; medium: above 3; low: above 0."""
    low = r.ci_low or 0.0
    return Severity.high if low >= 0.10 else Severity.medium if low >= 0.03 else Severity.low


def _finding(r: AttributeResult, column: str, check: str) -> Finding:
    rule = get_rule(ATTRIBUTE_RULE)
    base = {"imputation": "imputes it from the other columns and the label without the model",
            "majority": "always guesses the most frequent value"}.get(r.baseline_kind, "guesses without the model")
    return rule.finding(
        title=f"{r.attack}: infers '{column}' for {r.value:.1%} of the records, {r.advantage:+.1%} over an attacker "
              "without the model",
        check=check, severity=_severity(r),
        description=(f"With the model's answers, the {r.attack} attack infers the sensitive column '{column}' right for "
                     f"{r.value:.1%} of the records; an attacker who {base} is right for {r.baseline:.1%}. The gain, "
                     f"{r.advantage:.1%} (95 % interval {r.ci_low:.1%} to {r.ci_high:.1%}, McNemar p = "
                     f"{r.p_value:.2g}), is what the model leaks."),
        metrics={"attack": r.attack, "attribute": column, "accuracy": r.value, "baseline": r.baseline,
                 "baseline_kind": r.baseline_kind, "gain": r.advantage, "ci_low": r.ci_low, "ci_high": r.ci_high,
                 "p_value": r.p_value})
