"""SARIF 2.1.0 rendering of a ScanResult (OASIS SARIF v2.1.0, errata 01), for code-scanning upload.

One ``result`` per finding; one ``reportingDescriptor`` (rule) per distinct ``rule_id``, with the
GitHub ``security-severity`` property from :attr:`Severity.security_severity`. Findings without a
file (evasion checks, for instance) get a logical location naming their check instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

from bastion import __version__
from bastion.core.results import Finding, ScanResult

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
_INFO_URI = "https://github.com/bastion-ml/bastion"


def _uri(location: str) -> str:
    """A relative POSIX URI for relative paths (what code scanning expects), file URI otherwise."""
    p = Path(location)
    if p.is_absolute():
        return p.as_uri()
    return str(PurePosixPath(*p.parts)) if p.parts else location


def _rule(f: Finding) -> dict[str, Any]:
    tags = ["security", f.check, *f.atlas, *f.owasp]
    return {
        "id": f.rule_id,
        "name": "".join(w.capitalize() for w in f.rule_id.replace("-", " ").split()),
        "shortDescription": {"text": f.title},
        "fullDescription": {"text": f.description or f.title},
        "help": {"text": f.remediation or f.description or f.title,
                 "markdown": f"**Remediation:** {f.remediation or 'see the description'}"},
        "defaultConfiguration": {"level": f.severity.sarif_level},
        "properties": {"security-severity": f.severity.security_severity, "tags": tags,
                       "precision": "high"},
    }


def _result(f: Finding, rule_index: int) -> dict[str, Any]:
    member = f.metrics.get("member") if isinstance(f.metrics, dict) else None
    text = f.title + (f" [in {member}]" if member else "")
    if f.description and f.description != f.title:
        text += f". {f.description}"
    res: dict[str, Any] = {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": f.severity.sarif_level,
        "message": {"text": text},
        "properties": {"severity": f.severity.value, "security-severity": f.severity.security_severity,
                       "check": f.check, "atlas": f.atlas, "owasp": f.owasp,
                       "metrics": f.metrics},
    }
    if f.location:
        phys: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.location)}}
        if f.offset is not None and not member:
            phys["region"] = {"byteOffset": int(f.offset), "byteLength": 1}
        loc: dict[str, Any] = {"physicalLocation": phys}
        if member:
            loc["logicalLocations"] = [{"name": str(member), "kind": "member"}]
        res["locations"] = [loc]
    else:
        res["locations"] = [{"logicalLocations": [{"name": f.check, "kind": "module"}]}]
    key = f"{f.rule_id}|{f.location}|{member}|{f.title}"
    res["partialFingerprints"] = {"bastionFinding/v1": hashlib.sha256(key.encode()).hexdigest()[:32]}
    return res


def render_sarif(result: ScanResult) -> dict[str, Any]:
    """Return the SARIF 2.1.0 log (a JSON-ready dict) for ``result``."""
    findings = result.findings
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for f in findings:
        if f.rule_id not in index:
            index[f.rule_id] = len(rules)
            rules.append(_rule(f))
    version = result.tool.get("version") or __version__
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "bastion", "version": version, "semanticVersion": version,
                            "informationUri": _INFO_URI, "rules": rules}},
        "results": [_result(f, index[f.rule_id]) for f in findings],
        "columnKind": "unicodeCodePoints",
        "invocations": [{"executionSuccessful": result.status == "complete",
                         **({"startTimeUtc": result.started_at} if result.started_at else {}),
                         **({"endTimeUtc": result.finished_at} if result.finished_at else {})}],
        "properties": {"verdict": result.verdict, "summary": result.summary},
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
