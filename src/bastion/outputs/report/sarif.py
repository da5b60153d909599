"""SARIF 2.1.0 rendering of a ScanResult (OASIS SARIF v2.1.0, errata 01), for code-scanning upload.

One ``result`` per finding; one ``reportingDescriptor`` per distinct rule id, whose texts come
from the rule catalogue (:mod:`bastion.core.rules`), never from a finding's measured title. Every
result has a physical location, which code-scanning pages require: the model file for file
findings, else the policy file at the line of the check that made the finding. The run carries
``automationDetails`` (category ``bastion-<command>/<policy or target>``) and UTC start and end
times.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from bastion import __version__
from bastion.core.results import Finding, ScanResult
from bastion.core.rules import Rule, find_rule

log = logging.getLogger(__name__)

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
_INFO_URI = "https://github.com/bastion-ml/bastion"
#: Location of findings of a scan whose policy was not a file (a dict passed to ``bastion.scan``).
NO_POLICY_FILE = "bastion.yaml"


def _uri(location: str) -> str:
    """A relative POSIX URI (what code scanning expects): relative paths as they are, absolute
    paths relative to the working directory when inside it, else a ``file://`` URI."""
    p = Path(location)
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            return p.as_uri()
    return str(PurePosixPath(*p.parts)) if p.parts else location


def _utc(stamp: str | None) -> str | None:
    """ISO 8601 UTC with a ``Z`` (SARIF's date-time); None when absent or unparsable."""
    if not stamp:
        return None
    try:
        ts = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.timezone.utc)
    return ts.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_lines(policy_file: str | None) -> dict[str, int]:
    """Check name -> 1-based line of its entry in the policy file ({} when unreadable)."""
    if not policy_file:
        return {}
    import yaml

    try:
        node = yaml.compose(Path(policy_file).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, value in node.value:
        if key.value == "checks" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                if isinstance(item, yaml.MappingNode):
                    for k, v in item.value:
                        if k.value == "name" and isinstance(v, yaml.ScalarNode):
                            lines.setdefault(str(v.value), item.start_mark.line + 1)
    return lines


def _rule(rule_id: str, rule: Rule | None, first: Finding) -> dict[str, Any]:
    if rule is None:  # a rule this bastion does not know (another version, a third party)
        log.warning("SARIF: rule %s is not in the catalogue; its description is its id", rule_id)
        title, full, remediation, help_text = rule_id, rule_id, first.remediation, ""
        severity, tags = first.severity, ["security", *first.atlas, *first.owasp]
    else:
        title, full, remediation, help_text = rule.title, rule.help or rule.title, rule.remediation, rule.help
        severity = rule.default_severity
        tags = ["security", rule.threat, *rule.atlas, *rule.owasp, f"NIST-AI-RMF-{rule.nist}"]
    markdown = f"**Remediation:** {remediation or 'see the description'}" + (f"\n\n{help_text}" if help_text else "")
    return {
        "id": rule_id,
        "name": rule.name if rule else "".join(w.capitalize() for w in rule_id.replace("-", " ").split()),
        "shortDescription": {"text": title},
        "fullDescription": {"text": full},
        "help": {"text": remediation or full, "markdown": markdown},
        "defaultConfiguration": {"level": severity.sarif_level},
        "properties": {"security-severity": severity.security_severity, "tags": tags, "precision": "high",
                       **({"nist-ai-rmf": rule.nist} if rule else {})},
    }


def _location(f: Finding, policy_uri: str, lines: dict[str, int]) -> dict[str, Any]:
    member = f.metrics.get("member")
    if f.location:
        phys: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.location)}}
        if f.offset is not None and not member:
            phys["region"] = {"byteOffset": int(f.offset), "byteLength": 1}
        loc: dict[str, Any] = {"physicalLocation": phys}
        if member:
            loc["logicalLocations"] = [{"name": str(member), "kind": "member"}]
        return loc
    phys = {"artifactLocation": {"uri": policy_uri}}
    if f.check in lines:
        phys["region"] = {"startLine": lines[f.check]}
    return {"physicalLocation": phys, "logicalLocations": [{"name": f.check, "kind": "module"}]}


def _result(f: Finding, rule_index: int, policy_uri: str, lines: dict[str, int]) -> dict[str, Any]:
    member = f.metrics.get("member")
    text = f.title + (f" [in {member}]" if member else "")
    if f.description and f.description != f.title:
        text += f". {f.description}"
    if f.untrusted:
        text += f" UNTRUSTED: {f.untrusted}."
    key = f"{f.rule_id}|{f.location}|{member}|{f.title}"
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": f.severity.sarif_level,
        "message": {"text": text},
        "locations": [_location(f, policy_uri, lines)],
        "partialFingerprints": {"bastionFinding/v1": hashlib.sha256(key.encode()).hexdigest()[:32]},
        "properties": {"severity": f.severity.value, "security-severity": f.severity.security_severity,
                       "check": f.check, "atlas": f.atlas, "owasp": f.owasp, "nist-ai-rmf": f.nist,
                       "metrics": f.metrics, **({"untrusted": f.untrusted} if f.untrusted else {})},
    }


def _automation_id(result: ScanResult) -> str:
    command = result.tool.get("command", "scan")
    subject = str(result.target.get("policy") or result.target.get("spec") or "model")
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in subject).strip("-") or "model"
    return f"bastion-{command}/{slug}/{_utc(result.started_at) or ''}"


def render_sarif(result: ScanResult) -> dict[str, Any]:
    """Return the SARIF 2.1.0 log (a JSON-ready dict) for ``result``."""
    findings = result.findings
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for f in findings:
        if f.rule_id not in index:
            index[f.rule_id] = len(rules)
            rules.append(_rule(f.rule_id, find_rule(f.rule_id), f))
    policy_uri = _uri(result.policy_file) if result.policy_file else NO_POLICY_FILE
    lines = check_lines(result.policy_file)
    version = result.tool.get("version") or __version__
    start, end = _utc(result.started_at), _utc(result.finished_at)
    invocation: dict[str, Any] = {"executionSuccessful": result.status == "complete"}
    if start:
        invocation["startTimeUtc"] = start
    if end:
        invocation["endTimeUtc"] = end
    if result.status_reason:
        invocation["exitCodeDescription"] = result.status_reason
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "bastion", "version": version, "semanticVersion": version,
                            "informationUri": _INFO_URI, "rules": rules}},
        "automationDetails": {"id": _automation_id(result)},
        "results": [_result(f, index[f.rule_id], policy_uri, lines) for f in findings],
        "columnKind": "unicodeCodePoints",
        "invocations": [invocation],
        "properties": {"verdict": result.verdict, "status": result.status, "summary": result.summary},
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


__all__ = ["SARIF_SCHEMA", "SARIF_VERSION", "check_lines", "render_sarif"]
