"""Audits of a profiled table that need no model: the files' integrity (unreadable or truncated
files, malformed rows, mixed types, non-UTF-8 text, a missing label column), sensitive values,
class balance and outlying values."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from bastion.audit.base import AuditFinding, DataAudit
from bastion.audit.profile import ColumnInfo, ColumnKind, Profile
from bastion.core.params import Params
from bastion.core.results import Severity
from bastion.core.run import RunContext

_PROBLEM_RULE = {"unreadable": "BASTION-DA-030", "truncated": "BASTION-DA-030", "malformed-rows": "BASTION-DA-030",
                 "limit": "BASTION-DA-030", "schema": "BASTION-DA-034", "encoding": "BASTION-DA-033"}
_PROBLEM_SEVERITY = {"schema": Severity.medium, "malformed-rows": Severity.medium, "limit": Severity.medium,
                     "encoding": Severity.low}


class IntegrityAudit(DataAudit):
    """What could not be read, and values of the wrong type or encoding."""

    name = "integrity"

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        out = []
        for prob in data.problems:
            out.append(AuditFinding(rule_id=_PROBLEM_RULE[prob.kind], severity=_PROBLEM_SEVERITY.get(prob.kind,
                                                                                                     Severity.high),
                                    title=f"{prob.source.path.name}: {prob.message}", location=str(prob.source.path),
                                    measurements={"rows": float(prob.count)} if prob.rows else {},
                                    samples=[f"row {r + 1}" for r in prob.rows[:5]]))
        if data.label is not None and not data.label_found:
            out.append(AuditFinding(rule_id="BASTION-DA-032", severity=Severity.high,
                                    title=f"label column '{data.label}' not found; columns are {data.columns[:20]}"))
        for c in data.columns:
            info: ColumnInfo = data.info[c]
            n_mixed = ColumnInfo.count(info.mixed)
            if n_mixed:
                recs = np.concatenate(info.mixed)
                title = (f"column '{c}' is numeric but {n_mixed} value(s) are not numbers (treated as missing)"
                         if info.kind is ColumnKind.numeric else
                         f"column '{c}' mixes numbers and text: {n_mixed} value(s) are not numbers, so the column "
                         f"is audited as {info.kind.value}, not as numbers")
                out.append(AuditFinding(
                    rule_id="BASTION-DA-031", severity=Severity.medium, columns=[c], records=recs.tolist(),
                    title=title,
                    measurements={"values": n_mixed},
                    samples=[f"{data.where(int(recs[0]))}: a value shaped like '{info.mixed_sample}'"]))
            n_bad = ColumnInfo.count(info.non_utf8)
            if n_bad:
                recs = np.concatenate(info.non_utf8)
                out.append(AuditFinding(
                    rule_id="BASTION-DA-033", severity=Severity.low, columns=[c], records=recs.tolist(),
                    title=f"column '{c}': {n_bad} value(s) are not valid UTF-8", measurements={"values": n_bad},
                    samples=[data.where(int(r)) for r in recs[:5]]))
        return out


class SensitiveDataAudit(DataAudit):
    """Sensitive values found while profiling (:mod:`bastion.audit.sensitive`): one finding per
    column and kind, with the count and one masked sample."""

    name = "sensitive-data"

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        from bastion.core.rules import get_rule

        out = []
        for column, found in data.sensitive.items():
            for kind, hits in found.items():
                if not hits.count or hits.random_ids:
                    continue
                recs = hits.records()
                what = ("non-empty value(s) in a column named like a credential" if kind == "credential-column"
                        else get_rule(hits.rule_id).title.lower().split(":")[0])
                out.append(AuditFinding(
                    rule_id=hits.rule_id, severity=get_rule(hits.rule_id).default_severity, columns=[column],
                    records=recs.tolist(), title=f"column '{column}': {len(recs)} record(s) with {what}",
                    measurements={"records": len(recs)}, samples=[hits.sample]))
        return out


class BalanceParams(Params):
    min_ratio: float = Field(0.1, gt=0, le=1, description="Flag when the rarest class has fewer than this share of "
                                                          "the most common class's records.")


class BalanceAudit(DataAudit):
    """Class imbalance of the labels, per split."""

    name = "class-balance"
    Params = BalanceParams

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        p: BalanceParams = self.params  # type: ignore[assignment]
        if not data.label_found or not data.label_names:
            return []
        counts = np.bincount(data.labels[data.labels >= 0], minlength=len(data.label_names))
        present = counts[counts > 0]
        if len(present) < 2:
            return [AuditFinding(rule_id="BASTION-DA-006", severity=Severity.medium, columns=[data.label],
                                 title=f"only one class in '{data.label}'")]
        ratio = float(present.min() / present.max())
        if ratio >= p.min_ratio:
            return []
        rare = data.label_names[int(np.argmin(np.where(counts > 0, counts, counts.max() + 1)))]
        return [AuditFinding(rule_id="BASTION-DA-006", columns=[data.label],
                             severity=Severity.medium if ratio < p.min_ratio / 10 else Severity.low,
                             title=f"class '{rare}' has {int(present.min())} records, {ratio:.1%} of the largest class",
                             measurements={"imbalance_ratio": ratio, "classes": len(present)})]


class OutlierParams(Params):
    threshold: float = Field(10.0, gt=0, description="Robust z-score (distance to the median in scaled median "
                                                     "absolute deviations) beyond which a value is an outlier.")
    max_share: float = Field(0.01, gt=0, le=1, description="A column with more outliers than this share is "
                                                           "heavy-tailed, not polluted: reported once, as info.")


class OutlierAudit(DataAudit):
    """Numeric values far from their column's median: robust z-score ``|x - median| / (1.4826 MAD)``
    (Iglewicz & Hoaglin 1993, "How to detect and handle outliers")."""

    name = "outliers"
    Params = OutlierParams

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        p: OutlierParams = self.params  # type: ignore[assignment]
        out = []
        for j, c in enumerate(data.numeric):
            x = data.z[:, j]
            finite = np.isfinite(x)
            if finite.sum() < 10:
                continue
            med = np.median(x[finite])
            mad = 1.4826 * np.median(np.abs(x[finite] - med))
            if mad == 0:
                continue
            score = np.abs(x - med) / mad
            flagged = np.flatnonzero(finite & (score > p.threshold))
            if not len(flagged):
                continue
            heavy = len(flagged) > p.max_share * finite.sum()
            out.append(AuditFinding(
                rule_id="BASTION-DA-008", columns=[c], records=[] if heavy else flagged.tolist(),
                severity=Severity.info if heavy else Severity.low,
                title=(f"column '{c}': {len(flagged)} value(s) beyond {p.threshold:g} robust deviations"
                       + (" (a heavy-tailed column)" if heavy else "")),
                measurements={"outliers": len(flagged), "max_score": float(score[finite].max())},
                samples=[data.where(int(r)) for r in flagged[:5]]))
        return out
