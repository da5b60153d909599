"""Check / Finding / ScanResult: the single source for every report format.

These pydantic models are serialised to ``report.json`` (see :data:`SCHEMA_VERSION`); the HTML,
JUnit and SARIF reports are all rendered from a :class:`ScanResult` and nothing else.
"""

from __future__ import annotations

import datetime as _dt
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"


class Severity(str, Enum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"
    info = "info"

    @property
    def rank(self) -> int:
        """Higher is worse: critical=4 ... info=0."""
        return _RANK[self.value]

    @property
    def sarif_level(self) -> str:
        return {4: "error", 3: "error", 2: "warning", 1: "note", 0: "note"}[self.rank]

    @property
    def security_severity(self) -> str:
        """GitHub code-scanning ``security-severity`` score (CVSS-like, 0-10)."""
        return {4: "9.5", 3: "8.0", 2: "5.5", 1: "3.0", 0: "0.0"}[self.rank]

    @classmethod
    def parse(cls, value: str) -> Severity:
        try:
            return cls(value.lower())
        except ValueError as exc:
            from bastion.errors import UsageError

            allowed = ", ".join(s.value for s in cls)
            raise UsageError(f"unknown severity '{value}'; allowed: {allowed}") from exc


_RANK = {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}


class Finding(BaseModel):
    """One security-relevant observation, with the numbers behind it and what to do."""

    model_config = ConfigDict(extra="forbid")

    rule_id: str = Field(description="Stable id, e.g. 'BASTION-EVASION-001'; used as the SARIF rule id.")
    title: str
    severity: Severity
    check: str = Field(description="Name of the check that produced the finding.")
    atlas: list[str] = Field(default_factory=list, description="MITRE ATLAS technique ids.")
    owasp: list[str] = Field(default_factory=list, description="OWASP ML Top 10 categories, e.g. 'ML01'.")
    description: str = ""
    remediation: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    location: str | None = Field(default=None, description="File the finding is about, if any.")
    offset: int | None = Field(default=None, description="Byte offset inside ``location``, if any.")


class CheckResult(BaseModel):
    """What one check measured. ``metrics`` holds plain JSON values; ``artifacts`` holds
    data for pictures (robustness curves, example images) that reports may render."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    status: Literal["complete", "incomplete", "error", "skipped"] = "complete"
    reason: str | None = None
    seconds: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    artifacts: dict[str, Any] = Field(default_factory=dict)


class GateResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str
    metric: str
    value: float | None
    threshold: float
    op: str
    passed: bool
    reason: str | None = None


class ScanResult(BaseModel):
    """The whole outcome of a scan: what ``report.json`` holds."""

    model_config = ConfigDict(extra="forbid")

    schema_version: str = SCHEMA_VERSION
    tool: dict[str, str] = Field(default_factory=dict)
    started_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    finished_at: str | None = None
    verdict: Literal["pass", "fail"] = "pass"
    status: Literal["complete", "incomplete"] = "complete"
    status_reason: str | None = None
    target: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    summary: str = ""

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
