"""How bad a finding is: :class:`Severity`, kept apart from the pydantic result models so that the
model-file scanner (``bastion inspect``) can rank findings without importing pydantic."""

from __future__ import annotations

from enum import Enum


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
