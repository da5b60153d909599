"""Per-file scan state: findings sink, limits, deadline and the member path inside archives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.severity import Severity
from bastion.supply.config import InspectConfig
from bastion.supply.rules import ScanFinding, make_finding


class LimitExceeded(Exception):
    """A configured resource limit was hit; the file is reported as not fully analysed."""

    def __init__(self, limit: str, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.offset = limit, offset


class Malformed(Exception):
    """The data does not parse as the format it claims to be."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass
class ScanContext:
    """State shared by the format scanners while one top-level file is analysed."""

    config: InspectConfig
    path: Path                      # the file on disk
    findings: list[ScanFinding] = field(default_factory=list)
    member: str | None = None       # "outer.zip/inner.pkl" path inside archives, if any
    depth: int = 0
    unpacked: list[int] = field(default_factory=lambda: [0])  # bytes decompressed (shared)
    deadline: float = 0.0
    formats: list[str] = field(default_factory=list)
    not_analysed: list[str] = field(default_factory=list)   # why (part of) the file was not analysed
    data_files: list[str] = field(default_factory=list)     # files read as raw data (ONNX external data)
    _seen: set[tuple[Any, ...]] = field(default_factory=set)
    # findings per rule beyond config.max_findings_per_rule: rule id -> [count, worst severity, member]
    suppressed: dict[str, list[Any]] = field(default_factory=dict)
    per_rule: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.config.max_file_seconds

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded("max_file_seconds",
                                f"scan took longer than {self.config.max_file_seconds:g} s")

    def child(self, member: str) -> ScanContext:
        """A context for an archive member or nested payload (shares findings and budgets)."""
        depth = self.depth + 1
        if depth > self.config.max_depth:
            raise LimitExceeded("max_depth", f"nesting deeper than {self.config.max_depth} levels")
        return ScanContext(self.config, self.path, self.findings, member if self.member is None
                           else f"{self.member}/{member}", depth, self.unpacked, self.deadline, self.formats,
                           self.not_analysed, self.data_files, self._seen, self.suppressed,
                           self.per_rule)

    def count_unpacked(self, n: int) -> None:
        self.unpacked[0] += n
        if self.unpacked[0] > self.config.max_total_unpacked:
            raise LimitExceeded("max_total_unpacked",
                                f"more than {self.config.max_total_unpacked} bytes decompressed")

    def add(self, rule_id: str, severity: Severity, title: str, *, offset: int | None = None,
            description: str = "", **metrics: Any) -> None:
        """Record a finding once per (rule, member, title); past ``max_findings_per_rule`` findings of one
        rule in this file, only count them (:meth:`summarise_suppressed` reports the count and worst)."""
        key = (rule_id, self.member, title)
        if key in self._seen:
            return
        self._seen.add(key)
        n = self.per_rule.get(rule_id, 0)
        self.per_rule[rule_id] = n + 1
        if n >= self.config.max_findings_per_rule:
            entry = self.suppressed.setdefault(rule_id, [0, severity, self.member])
            entry[0] += 1
            if severity.rank > entry[1].rank:
                entry[1] = severity
            return
        self.findings.append(make_finding(rule_id, severity, title, location=str(self.path), offset=offset,
                                          description=description, member=self.member, **metrics))

    def not_understood(self, reason: str) -> None:
        """Record that this file (or the current member) was not analysed, and why: never reported clean."""
        self.not_analysed.append(f"[{self.member}] {reason}" if self.member else reason)

    def summarise_suppressed(self) -> None:
        """One finding per rule whose findings were capped: how many were left out and the worst severity."""
        for rule_id, (count, worst, member) in sorted(self.suppressed.items()):
            self.findings.append(make_finding(
                rule_id, worst, f"{count} more {rule_id} finding(s) in this file not listed "
                f"(max_findings_per_rule = {self.config.max_findings_per_rule})", location=str(self.path),
                description="Findings of one rule past the cap are grouped here; the worst of them has this "
                "severity.", member=member, suppressed=count))
        self.suppressed.clear()

    @property
    def where(self) -> str:
        return f"{self.path}" + (f" [{self.member}]" if self.member else "")
