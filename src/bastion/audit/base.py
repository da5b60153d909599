"""Data audits: ``audit(data, ctx) -> AuditResult``.

An audit (duplicates, label noise, leaks between splits, PII, provenance) reports findings, each
naming the records and the columns it concerns. The base enforces once for every audit: record
indices exist and are listed once, in order; columns are the dataset's own (``feature_names``,
or ``col0``, ``col1``, ... when it has none); every finding points to a rule id; findings come
worst first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

from bastion.core.capability import Configurable, metering
from bastion.core.data import Dataset
from bastion.core.registry import Registry
from bastion.core.results import Severity
from bastion.core.run import RunContext
from bastion.errors import BastionRuntimeError


class AuditFinding(BaseModel):
    """One observation about the data: which rule, how bad, which records and columns."""

    rule_id: str = Field(min_length=1)
    title: str
    severity: Severity
    records: list[int] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=list)
    measurements: dict[str, float] = Field(default_factory=dict)
    samples: list[str] = Field(default_factory=list, description="Masked examples; never a whole sensitive value.")
    location: str | None = Field(default=None, description="The file the finding is about, if one.")


class AuditResult(BaseModel):
    audit: str
    n_records: int
    columns: list[str]
    findings: list[AuditFinding]
    seconds: float

    @property
    def flagged_records(self) -> list[int]:
        return sorted({r for f in self.findings for r in f.records})


def column_names(data: Dataset | AuditData) -> list[str]:
    if not isinstance(data, Dataset):
        return list(data.columns)
    n = int(np.prod(data.x.shape[1:])) if data.x.ndim > 1 else 1
    return list(data.feature_names) if data.feature_names else [f"col{i}" for i in range(n)]


@runtime_checkable
class AuditData(Protocol):
    """Records that are not a :class:`Dataset`: a table profiled by
    :func:`bastion.audit.profile.profile_table` (its ``columns``, ``len`` its records)."""

    columns: list[str]

    def __len__(self) -> int: ...


class DataAudit(Configurable, ABC):
    """Base of data audits. Subclasses implement ``_audit``."""

    family: ClassVar[str] = "audit"

    def audit(self, data: Dataset | AuditData, ctx: RunContext | None = None) -> AuditResult:
        columns = column_names(data)
        rctx = self.run_context(ctx)
        with metering(rctx) as meter:
            findings = list(self._audit(data, columns, rctx))
        name = self.label
        out = []
        for f in findings:
            if not isinstance(f, AuditFinding):
                raise BastionRuntimeError(f"audit '{name}' returned a {type(f).__name__}, not an AuditFinding")
            records = sorted(set(f.records))
            if records and (records[0] < 0 or records[-1] >= len(data)):
                raise BastionRuntimeError(f"audit '{name}': finding '{f.rule_id}' names records outside "
                                          f"[0, {len(data) - 1}]")
            unknown = sorted(set(f.columns) - set(columns))
            if unknown:
                raise BastionRuntimeError(f"audit '{name}': finding '{f.rule_id}' names unknown columns {unknown}")
            out.append(f.model_copy(update={"records": records}))
        out.sort(key=lambda f: -f.severity.rank)
        return AuditResult(audit=name, n_records=len(data), columns=columns, findings=out, seconds=meter.seconds)

    @abstractmethod
    def _audit(self, data: Any, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        """The findings about ``data`` (``columns``: its column names, for the findings to cite)."""


#: Data audits by name (``bastion audit-data --audits``, the ``audit-data`` check); entry-point
#: group ``bastion.audits``.
AUDITS: Registry[type[DataAudit]] = Registry("audit", {
    "integrity": "bastion.audit.quality:IntegrityAudit",
    "duplicates": "bastion.audit.duplicates:DuplicateAudit",
    "sensitive-data": "bastion.audit.quality:SensitiveDataAudit",
    "class-balance": "bastion.audit.quality:BalanceAudit",
    "outliers": "bastion.audit.quality:OutlierAudit",
    "label-noise": "bastion.audit.labelnoise:LabelNoiseAudit",
    "slices": "bastion.audit.slices:SliceAudit",
    "provenance": "bastion.audit.provenance:ProvenanceAudit",
})
