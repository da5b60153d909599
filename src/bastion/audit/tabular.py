"""``audit_table``: profile CSV/Parquet files once, run the data audits on the profile, and report
every problem as a finding in the shared report formats (a :class:`CheckResult` of kind
``audit-data``).

A file that cannot be read, or a label column that is missing, is a finding and makes the result
``incomplete`` (the CLI exits 2); every other audit still runs on what could be read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from bastion.audit.base import AUDITS, AuditResult, DataAudit
from bastion.audit.profile import ChunkHook, Profile, profile_table
from bastion.audit.table import DEFAULT_CHUNK_ROWS, Source, printable
from bastion.core.results import CheckResult, Finding
from bastion.core.run import RunContext
from bastion.errors import UsageError

#: Audits run by default, in order (slices need a model, provenance a manifest).
DEFAULT_AUDITS = ("integrity", "duplicates", "sensitive-data", "class-balance", "outliers", "label-noise")
NEEDS_LABEL = {"class-balance", "label-noise", "slices"}
#: Measurements summed over findings (0 when an audit that makes them ran and found nothing).
METRICS = {"duplicates": ("duplicate_records", "near_duplicate_records", "leaked_test_records",
                          "near_leaked_test_records", "conflicting_records"),
           "sensitive-data": ("sensitive_records",), "label-noise": ("label_noise_candidates",),
           "outliers": ("outliers",), "provenance": ("added", "removed", "changed"),
           "slices": ()}
RECORDS_SHOWN = 20


@dataclass
class TableAudit:
    """The outcome of :func:`audit_table`: each audit's typed result, the profile they read, and
    the report-format check result."""

    profile: Profile
    results: list[AuditResult]
    check: CheckResult
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def usage_problems(self) -> list[str]:
        """What makes the CLI exit 2: files not (wholly) read, a missing label column."""
        out = [f"{p.source.path}: {p.message}" for p in self.profile.problems if p.kind in ("unreadable", "truncated",
                                                                                              "malformed-rows")]
        if self.profile.label is not None and not self.profile.label_found:
            out.append(f"label column '{self.profile.label}' not found")
        return out


def sources_from(data: list[Path] = (), train: list[Path] = (), test: list[Path] = ()) -> list[Source]:  # type: ignore[assignment]
    """The files to audit, with their split; a UsageError for a path that does not exist or a
    directory without tables."""
    out = []
    for split, paths in (("data", data), ("train", train), ("test", test)):
        for p in paths:
            p = Path(p)
            if p.is_dir():
                found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in
                               {".csv", ".tsv", ".parquet", ".pq"})
                if not found:
                    raise UsageError(f"{p}: no .csv, .tsv or .parquet file in this directory")
                out += [Source(f, split) for f in found]
            elif not p.exists():
                raise UsageError(f"no such file: {p}", hint="give CSV or Parquet files (or directories of them)")
            else:
                Source(p, split).format  # noqa: B018 - refuses an unknown suffix now, not halfway
                out.append(Source(p, split))
    if not out:
        raise UsageError("nothing to audit: give DATA files, or --train and --test")
    return out


def audit_table(sources: list[Source], *, label: str | None = None, key: str | None = None,
                audits: tuple[str, ...] | None = None, params: dict[str, dict[str, Any]] | None = None,
                manifest: dict[str, Any] | None = None, ctx: RunContext | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, max_rows: int | None = None, engine: str = "auto",
                keep: tuple[str, ...] = (), hooks: tuple[ChunkHook, ...] = (), name: str = "audit-data"
                ) -> TableAudit:
    """Audit the tables ``sources`` (one pass to profile them, then each audit)."""
    t0 = time.perf_counter()
    ctx = ctx or RunContext()
    names = list(audits or DEFAULT_AUDITS)
    if manifest is not None and "provenance" not in names:
        names.append("provenance")
    params = dict(params or {})
    if manifest is not None:
        params["provenance"] = {**params.get("provenance", {}), "manifest": manifest}
    for n in names:
        if n not in AUDITS:
            raise UsageError(f"unknown audit '{n}'; available: {', '.join(AUDITS.names())}")
    built: list[DataAudit] = [AUDITS.get_object(n)(**params.get(n, {})) for n in names]
    profile = profile_table(sources, label=label, key=key, chunk_rows=chunk_rows, max_rows=max_rows, engine=engine,
                            keep=keep, hooks=hooks)
    results, skipped = [], {}
    for n, audit in zip(names, built):
        if n in NEEDS_LABEL and not profile.label_found:
            skipped[n] = "no label column" if label is None else f"label column '{label}' not found"
            continue
        results.append(audit.audit(profile, ctx))
    check = _check_result(profile, results, skipped, name, time.perf_counter() - t0)
    return TableAudit(profile, results, check, skipped)


def _check_result(profile: Profile, results: list[AuditResult], skipped: dict[str, str], name: str,
                  seconds: float) -> CheckResult:
    from bastion.core.rules import get_rule

    check = CheckResult(name=name, kind="audit-data", seconds=seconds)
    findings: list[Finding] = []
    sums: dict[str, float] = {}
    for res in results:
        for m in METRICS.get(res.audit, ()):
            sums.setdefault(m, 0.0)
        for f in res.findings:
            for k, v in f.measurements.items():
                if k in sums:
                    sums[k] += v
            if f.rule_id.startswith(("BASTION-DA-01",)):
                sums["sensitive_records"] = sums.get("sensitive_records", 0.0) + len(f.records)
            metrics: dict[str, Any] = {"audit": res.audit, "count": len(f.records), **f.measurements}
            if f.columns:
                metrics["columns"] = f.columns[:20]
            if f.records:
                metrics["records"] = [profile.where(r) for r in f.records[:RECORDS_SHOWN]]
            if f.samples:
                metrics["examples"] = [printable(x) for x in f.samples[:5]]
            location = f.location
            if location is None and f.records:  # the file of its first record: where SARIF points
                location = str(profile.sources[int(profile.file[f.records[0]])].path)
            findings.append(get_rule(f.rule_id).finding(title=printable(f.title), check=name, severity=f.severity,
                                                        metrics=metrics, location=location))
    findings.sort(key=lambda f: -f.severity.rank)
    check.findings = findings
    check.measure("records", profile.n, "count")
    for split in ("data", "train", "test"):
        n = int((profile.split == ("data", "train", "test").index(split)).sum())
        if n:
            check.measure("records", n, "count", split=split)
    for res in results:
        if res.audit == "slices":
            from bastion.audit.slices import UNKNOWN, reliability

            for f in res.findings:
                for k, v in f.measurements.items():
                    check.measure(k, v, "ratio" if k != "ece" else "score")
            known = profile.extra["correct"] != UNKNOWN
            if known.any():
                bins = next((int(f.measurements.get("bins", 15)) for f in res.findings if f.rule_id == "BASTION-DA-041"),
                            15)
                check.artifacts.append(reliability(profile.extra["conf"][known],
                                                   profile.extra["correct"][known].astype(float), bins))
    for k, v in sums.items():
        check.measure(k, v, "count")
    problems = [p for p in profile.problems if p.kind not in ("schema", "encoding")]  # the rest was not (all) read
    reasons = [f"{p.source.path.name}: {p.message}" for p in problems]
    if profile.label is not None and not profile.label_found:
        reasons.append(f"label column '{profile.label}' not found")
    reasons += [f"{a} skipped: {why}" for a, why in skipped.items()]
    if problems or (profile.label is not None and not profile.label_found):
        check.status, check.reason = "incomplete", printable("; ".join(reasons))
    check.metrics = {"columns": {c: profile.info[c].kind.value for c in profile.columns},
                     "files": [{"path": str(s.path), "split": s.split,
                                "records": int((profile.file == i).sum())} for i, s in enumerate(profile.sources)],
                     "audits": [r.audit for r in results], "skipped": skipped,
                     "seconds": {r.audit: round(r.seconds, 3) for r in results}}
    if not check.reason and skipped:
        check.reason = "; ".join(f"{a} skipped: {why}" for a, why in skipped.items())
    return check


def default_features(sources: list[Source], label: str | None) -> list[str]:
    """The numeric columns of the first readable file (its first chunk), label excluded: a model's
    inputs when none are named."""
    from bastion.audit.profile import ColumnKind, infer_kinds
    from bastion.audit.table import header, read_chunks

    for s in sources:
        problems: list = []
        chunk = next(iter(read_chunks(s, problems, chunk_rows=4096)), None)
        if chunk is not None:
            kinds = infer_kinds(chunk, header(s))
            return [c for c, k in kinds.items() if k is ColumnKind.numeric and c != label]
    raise UsageError("no readable file to take the model's input columns from", hint="name them with --features")


def write_manifest(profile: Profile, path: Path, note: str = "") -> Path:
    """Write the manifest of ``profile`` to ``path`` (JSON)."""
    from bastion.audit.provenance import build_manifest
    from bastion.core.io import atomic_write_text

    return atomic_write_text(path, json.dumps(build_manifest(profile, note), indent=1))


__all__ = ["DEFAULT_AUDITS", "TableAudit", "audit_table", "default_features", "sources_from", "write_manifest"]
