"""Typed results: Measurement, Artifact, Finding, CheckResult, ScanResult.

A check returns a :class:`CheckResult` holding typed :class:`Measurement`s (what gates read),
typed :data:`Artifact`s (the data of a picture: a robustness curve, an example grid, a ROC
curve, ...; discriminated on their ``type`` field, each drawn by the renderer registered for
that type) and :class:`Finding`s, each pointing to a rule of the catalogue
(:mod:`bastion.core.rules`). A :class:`ScanResult` is serialised to ``report.json``
(:data:`SCHEMA_VERSION`); the HTML, JUnit and SARIF reports are all rendered from it.

Trust: a measurement, a check and a finding carry ``untrusted`` (why, or None) when a
gradient-masking finding of the same scan puts the figure in doubt; gates read it (schema 2.1 added
these fields; 2.0 documents read as all trusted).
"""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bastion.core.severity import Severity  # noqa: F401 - re-exported; defined apart, without pydantic

SCHEMA_VERSION = "2.1"

#: Where a measurement was made: attack, eps, norm, stage, ... (scalars, so gates can select on them).
Where = dict[str, str | int | float | bool]
Number = float | None


#: Units a measurement may carry; ``ratio`` values lie in [0, 1] and are shown as percentages.
Unit = Literal["ratio", "count", "queries", "seconds", "eps", "bytes", "score", ""]


class Measurement(BaseModel):
    """One measured number and where it was measured, e.g. ``robust_accuracy = 0.48`` for
    ``{attack: pgd, norm: linf, eps: 0.1}``. ``value`` is None when it could not be measured."""

    model_config = ConfigDict(extra="forbid")

    name: str
    value: Number
    unit: Unit = ""
    where: Where = Field(default_factory=dict)
    untrusted: str | None = Field(default=None, description="Why this figure is not to be trusted (a sign of "
                                  "gradient masking in the same scan); None: nothing known against it.")


# ----------------------------------------------------------------------------- artifacts


class _Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = ""


class RobustnessCurve(_Artifact):
    """Robust accuracy against ε for one attack and norm."""

    type: Literal["robustness_curve"] = "robustness_curve"
    attack: str
    norm: str = "linf"
    eps: list[float]
    robust_accuracy: list[Number]
    clean_accuracy: Number = None


class ExampleGrid(_Artifact):
    """Original and adversarial images (nested lists of ``shape``), with labels."""

    type: Literal["example_grid"] = "example_grid"
    attack: str = ""
    eps: Number = None
    shape: list[int]
    original: list[Any]
    adversarial: list[Any]
    labels: list[str] = Field(default_factory=list)
    adv_labels: list[str] = Field(default_factory=list)
    confidence: list[Number] = Field(default_factory=list)


class TabularRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    adv_label: str
    changes: dict[str, tuple[Number, Number]] = Field(
        default_factory=dict, description="feature -> (original, adversarial), largest change first")


class TabularExamples(_Artifact):
    """Adversarial records of a table: the features the attack changed."""

    type: Literal["tabular_examples"] = "tabular_examples"
    attack: str = ""
    feature_names: list[str] = Field(default_factory=list)
    rows: list[TabularRow]


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    robust_accuracy: Number
    seconds: Number = None
    queries: int | None = None


class StageChart(_Artifact):
    """Robust accuracy left after each stage of an ensemble attack."""

    type: Literal["stage_chart"] = "stage_chart"
    attack: str = ""
    stages: list[Stage]


class QueryCurve(_Artifact):
    """Attack success rate against queries spent."""

    type: Literal["query_curve"] = "query_curve"
    attack: str
    queries: list[float]
    success_rate: list[Number]


class Histogram(_Artifact):
    type: Literal["histogram"] = "histogram"
    values: list[Number]
    xlabel: str = ""


class RocCurve(_Artifact):
    """Receiver operating characteristic of an attack that scores records (membership inference)."""

    type: Literal["roc_curve"] = "roc_curve"
    attack: str = ""
    fpr: list[float]
    tpr: list[float]
    auc: Number = None


class FidelityCurve(_Artifact):
    """Agreement of an extracted surrogate with the target against queries spent."""

    type: Literal["fidelity_curve"] = "fidelity_curve"
    attack: str = ""
    queries: list[float]
    fidelity: list[Number]


class InversionGrid(_Artifact):
    """Model-inversion reconstructions (nested lists of ``shape``) beside the mean real record of
    each class, with each reconstruction's similarity to its class mean and the class whose mean
    it is most similar to."""

    type: Literal["inversion_grid"] = "inversion_grid"
    attack: str = ""
    shape: list[int]
    class_means: list[Any]
    reconstructions: list[Any]
    labels: list[str] = Field(default_factory=list)
    similarity: list[Number] = Field(default_factory=list)
    nearest: list[str] = Field(default_factory=list)


class DriftSeries(_Artifact):
    """A drift statistic over time windows, with its alert threshold."""

    type: Literal["drift_series"] = "drift_series"
    metric: str
    windows: list[str | float]
    values: list[Number]
    threshold: Number = None


class ReliabilityDiagram(_Artifact):
    """Accuracy against mean confidence per confidence bin (empty bins left out), with the
    expected calibration error."""

    type: Literal["reliability_diagram"] = "reliability_diagram"
    confidence: list[float]
    accuracy: list[float]
    counts: list[int]
    ece: Number = None


class PoisoningCurve(_Artifact):
    """A poisoning attack's effect against the share of poisoned training records (or the round of
    an online learner, ``xlabel``): one series of ratios per figure (clean accuracy, accuracy on
    the targeted class, attack success)."""

    type: Literal["poisoning_curve"] = "poisoning_curve"
    attack: str
    x: list[float]
    xlabel: str = "share of poisoned training records"
    series: dict[str, list[Number]]


class QueryLog(_Artifact):
    """Counters of the requests sent to a remote model (count, seconds, bytes, retries, ...)."""

    type: Literal["query_log"] = "query_log"
    counters: dict[str, Any]


class VariantRow(BaseModel):
    """One model of a side-by-side comparison of deployment variants (the full model first): accuracies on
    the same inputs, agreement with the full model on clean inputs, transfer both ways and the paired test
    against the full model's robust accuracy."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    source: str = Field(description="full, torch-int8, onnx-int8, distilled or file.")
    gradients: str = Field(description="Whose gradients white-box attacks followed: own, or the full model's (BPDA).")
    clean_accuracy: Number
    robust_accuracy: Number = Field(description="Worst case over the attacks: robust only if no attack fooled it.")
    agreement: Number = Field(description="Share of clean inputs where its answer equals the full model's.")
    transfer_from_full: Number = Field(None, description="Share of the inputs that fooled the full model which "
                                                         "also fool this one.")
    transfer_to_full: Number = Field(None, description="Share of the inputs that fooled this model which also fool "
                                                       "the full model.")
    drop: Number = Field(None, description="Full model's robust accuracy minus this one's.")
    only_full_robust: int | None = None
    only_variant_robust: int | None = None
    p_value: Number = Field(None, description="Exact one-sided McNemar p-value of 'less robust than the full model'.")
    flagged: bool = False
    notes: list[str] = Field(default_factory=list)


class VariantTable(_Artifact):
    """A model and its deployment variants side by side under the same attacks at one ε."""

    type: Literal["variant_table"] = "variant_table"
    eps: float
    norm: str
    attacks: list[str]
    rows: list[VariantRow]


class DefenseCostRow(BaseModel):
    """One model of an output-defense comparison (the undefended model first): accuracy, top-1 agreement
    with the undefended model, and per attack the membership AUC and TPR at ``fpr`` or the extraction
    fidelity, each with its 95 % interval."""

    model_config = ConfigDict(extra="forbid")

    defense: str
    accuracy: Number
    agreement: Number = Field(description="Share of eval inputs where its label equals the undefended model's.")
    membership: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "Per attack: auc, auc_ci (Hanley-McNeil), tpr, tpr_ci (Clopper-Pearson) at the table's fpr."))
    extraction: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "Per attack: fidelity, fidelity_ci (Clopper-Pearson over the held-out inputs), queries."))
    repeats: int = Field(1, description=(
        "Queries per input whose answers the attacks average (1: deterministic answers, asked once). Above 1 "
        "each attack's entry holds, per figure, the stronger of the averaging and the single-query attacker, "
        "with both beside it ('averaged', 'single_query')."))
    notes: list[str] = Field(default_factory=list)


class DefenseCostTable(_Artifact):
    """Output defenses side by side: what each buys against membership inference and extraction, and
    what it costs in accuracy."""

    type: Literal["defense_cost_table"] = "defense_cost_table"
    fpr: float
    rows: list[DefenseCostRow]


Artifact = Annotated[
    RobustnessCurve | ExampleGrid | TabularExamples | StageChart | QueryCurve | Histogram | RocCurve
    | FidelityCurve | DriftSeries | QueryLog | ReliabilityDiagram | VariantTable | InversionGrid
    | PoisoningCurve | DefenseCostTable,
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------- findings


class Finding(BaseModel):
    """One security-relevant observation: which rule of the catalogue it breaks, how badly, the
    numbers behind it and what to do. Build one with :meth:`bastion.core.rules.Rule.finding`."""

    model_config = ConfigDict(extra="forbid")

    rule_id: str = Field(description="Id of a rule in the catalogue, e.g. 'BASTION-EV-001'; the SARIF rule id.")
    title: str = Field(description="What was measured, in one line (the rule's title is in the catalogue).")
    severity: Severity
    check: str = Field(description="Name of the check that produced the finding.")
    atlas: list[str] = Field(default_factory=list, description="MITRE ATLAS technique ids.")
    owasp: list[str] = Field(default_factory=list, description="OWASP ML Top 10 categories, e.g. 'ML01'.")
    nist: str | None = Field(default=None, description="NIST AI RMF function: Map, Measure or Manage.")
    description: str = ""
    remediation: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evidence: the numbers behind it.")
    location: str | None = Field(default=None, description="File the finding is about, if any.")
    offset: int | None = Field(default=None, description="Byte offset inside ``location``, if any.")
    untrusted: str | None = Field(default=None, description="Why the figures behind this finding are not to be "
                                  "trusted (a sign of gradient masking in the same scan), if so.")


CheckStatus = Literal["complete", "incomplete", "error", "skipped"]


class CheckResult(BaseModel):
    """What one check measured (``measurements``, which gates read), pictured (``artifacts``)
    and found (``findings``). ``metrics`` holds free-form details (notes, raw numbers) that the
    HTML shows folded and that nothing else reads."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    status: CheckStatus = "complete"
    reason: str | None = None
    untrusted: str | None = Field(default=None, description="Why some of this check's figures are not to be "
                                  "trusted (a sign of gradient masking in the same scan); those carry it too.")
    seconds: float = 0.0
    measurements: list[Measurement] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)

    def measure(self, name: str, value: float | None, unit: Unit = "", **where: Any) -> Measurement:
        """Record one measurement (NaN and ±inf become None: not measured) and return it."""
        import math

        v = None if value is None or not math.isfinite(float(value)) else float(value)
        m = Measurement(name=name, value=v, unit=unit, where={k: w for k, w in where.items() if w is not None})
        self.measurements.append(m)
        return m

    def values(self, name: str, **where: Any) -> list[float]:
        """Measured values of ``name`` whose ``where`` contains every given field."""
        return [m.value for m in self.measurements if m.name == name and m.value is not None
                and all(m.where.get(k) == v for k, v in where.items())]

    def finding_counts(self) -> list[Measurement]:
        """``findings_<severity>``: findings at that severity or worse (what gates such as
        ``findings_high[model-file] <= 0`` read). Empty unless the check completed: a check that
        errored or stopped early has no counts, so such a gate fails with "no measurement"."""
        if self.status != "complete":
            return []
        return [Measurement(name=f"findings_{sev.value}", unit="count",
                            value=float(sum(f.severity.rank >= sev.rank for f in self.findings)))
                for sev in Severity]


class GateResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str
    metric: str
    value: float | None
    threshold: float
    op: str
    passed: bool
    reason: str | None = None
    unit: Unit = ""
    check: str | None = Field(default=None, description="Check of the measurement the gate used.")
    where: Where = Field(default_factory=dict, description="Where that measurement was made.")
    untrusted: str | None = Field(default=None, description="Why a figure the gate read is not to be trusted; "
                                  "the gate fails for it unless the policy allows untrusted figures.")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


class ScanResult(BaseModel):
    """The whole outcome of a scan: what ``report.json`` holds."""

    model_config = ConfigDict(extra="forbid")

    schema_version: str = SCHEMA_VERSION
    tool: dict[str, str] = Field(default_factory=dict)
    started_at: str = Field(default_factory=_now)
    finished_at: str | None = None
    verdict: Literal["pass", "fail"] = "pass"
    status: Literal["complete", "incomplete"] = "complete"
    status_reason: str | None = None
    policy_file: str | None = Field(default=None, description="The policy file the scan ran, if any.")
    fail_on: Severity | None = Field(default=None, description="A finding this severe or worse fails the scan.")
    target: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    summary: str = ""

    @model_validator(mode="after")
    def _ordered_times(self) -> ScanResult:
        """A scan never ends before it starts: a start stamped after the end (a result built once
        the work was done) is moved back by the checks' total time."""
        if self.finished_at:
            try:
                start = _dt.datetime.fromisoformat(self.started_at)
                end = _dt.datetime.fromisoformat(self.finished_at)
                late = start > end
            except (TypeError, ValueError):
                return self
            if late:
                took = _dt.timedelta(seconds=sum(max(c.seconds, 0.0) for c in self.checks))
                self.started_at = (end - took).isoformat()
        return self

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every check, worst first."""
        out = [f for c in self.checks for f in c.findings]
        return sorted(out, key=lambda f: -f.severity.rank)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``report.json`` document: the model plus the flattened findings list."""
        doc = self.model_dump(mode="json")
        doc["findings"] = [f.model_dump(mode="json") for f in self.findings]
        return doc

    @classmethod
    def from_json_dict(cls, doc: dict[str, Any]) -> ScanResult:
        doc = {k: v for k, v in doc.items() if k != "findings"}
        return cls.model_validate(doc)
