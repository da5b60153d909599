"""Per-file scan state: findings sink, limits, deadline and the member path inside archives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.results import Finding, Severity
from bastion.supply.config import InspectConfig
from bastion.supply.rules import make_finding


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
    findings: list[Finding] = field(default_factory=list)
    member: str | None = None       # "outer.zip/inner.pkl" path inside archives, if any
    depth: int = 0
    unpacked: list[int] = field(default_factory=lambda: [0])  # bytes decompressed (shared)
    deadline: float = 0.0
    formats: list[str] = field(default_factory=list)
    _seen: set[tuple[Any, ...]] = field(default_factory=set)

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
        sub = ScanContext(self.config, self.path, self.findings, member if self.member is None
                          else f"{self.member}/{member}", depth, self.unpacked, self.deadline, self.formats,
                          self._seen)
        return sub

    def count_unpacked(self, n: int) -> None:
        self.unpacked[0] += n
        if self.unpacked[0] > self.config.max_total_unpacked:
            raise LimitExceeded("max_total_unpacked",
                                f"more than {self.config.max_total_unpacked} bytes decompressed")

    def add(self, rule_id: str, severity: Severity, title: str, *, offset: int | None = None,
            description: str = "", **metrics: Any) -> None:
        """Record a finding once per (rule, member, title)."""
        key = (rule_id, self.member, title)
        if key in self._seen:
            return
        self._seen.add(key)
        self.findings.append(make_finding(rule_id, severity, title, location=str(self.path), offset=offset,
                                          description=description, member=self.member, **metrics))

    @property
    def where(self) -> str:
        return f"{self.path}" + (f" [{self.member}]" if self.member else "")
