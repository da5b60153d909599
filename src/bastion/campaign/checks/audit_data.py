"""The ``audit-data`` check: ``bastion audit-data`` inside a scan — CSV/Parquet files audited for
provenance, duplicates, leaks, label problems and sensitive values; gates read its counts
(``leaked_test_records[audit-data] <= 0``, ``findings_critical[audit-data] <= 0``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from bastion.campaign.checks.base import Check, CheckContext, CheckInputError, CheckParams, register_check
from bastion.core.results import CheckResult


class AuditDataParams(CheckParams):
    data: list[str] = Field(default_factory=list, description="Files or directories of one data set, relative to "
                                                              "the policy file.")
    train: list[str] = Field(default_factory=list, description="Training split files.")
    test: list[str] = Field(default_factory=list, description="Test split files.")
    label: str | None = Field(default=None, description="Label column.")
    key: str | None = Field(default=None, description="Column that identifies a record (manifest diffs).")
    manifest: str | None = Field(default=None, description="Manifest to compare the data with.")
    audits: list[str] | None = Field(default=None, description="Audits to run (default: all but slices).")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="Parameters per audit, e.g. {duplicates: {tolerance: 0.01}}.")
    max_rows: int | None = Field(default=None, ge=1, description="Audit at most this many records.")


@register_check
class AuditDataCheck(Check):
    kind = "audit-data"
    Params = AuditDataParams
    needs_model = False
    metric_names = frozenset({"records", "duplicate_records", "near_duplicate_records", "leaked_test_records",
                              "near_leaked_test_records", "conflicting_records", "sensitive_records",
                              "label_noise_candidates", "outliers", "added", "removed", "changed"})

    def _paths(self, base: Path) -> dict[str, list[Path]]:
        p: AuditDataParams = self.params  # type: ignore[assignment]
        return {k: [Path(x) if Path(x).is_absolute() else base / x for x in getattr(p, k)]
                for k in ("data", "train", "test")}

    def validate_inputs(self, policy_dir: Path) -> None:
        """Every file must exist when the policy loads, and there must be some."""
        p: AuditDataParams = self.params  # type: ignore[assignment]
        paths = self._paths(policy_dir)
        if not any(paths.values()):
            raise CheckInputError(("data",), "give the files to audit: data, or train and test")
        for field_name, items in paths.items():
            for i, path in enumerate(items):
                if not path.exists():
                    raise CheckInputError((field_name, i), f"no such file or directory: {path}")
        if p.manifest:
            m = Path(p.manifest) if Path(p.manifest).is_absolute() else policy_dir / p.manifest
            if not m.is_file():
                raise CheckInputError(("manifest",), f"no such file: {m}")
        if p.audits is not None:
            from bastion.audit import AUDITS

            for i, a in enumerate(p.audits):
                if a not in AUDITS:
                    raise CheckInputError(("audits", i), f"unknown audit '{a}'; available: {', '.join(AUDITS.names())}")

    def run(self, ctx: CheckContext) -> CheckResult:
        """Unreadable files and a missing label column make the result incomplete: a gate on it fails."""
        from bastion.audit.tabular import audit_table, sources_from
        from bastion.core.run import RunContext

        p: AuditDataParams = self.params  # type: ignore[assignment]
        paths = self._paths(ctx.policy_dir)
        manifest = None
        if p.manifest:
            from bastion.audit.provenance import load_manifest

            m = Path(p.manifest)
            manifest = load_manifest(m if m.is_absolute() else ctx.policy_dir / m)
        res = audit_table(sources_from(paths["data"], paths["train"], paths["test"]), label=p.label, key=p.key,
                          audits=tuple(p.audits) if p.audits else None, params=p.params, manifest=manifest,
                          ctx=RunContext(seed=ctx.seed).spawn(self.name), max_rows=p.max_rows, name=self.name)
        return res.check.model_copy(update={"name": self.name, "kind": self.kind})
