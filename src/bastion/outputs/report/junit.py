"""``junit.xml``: the scan as JUnit XML, for CI pages that show test results.

One ``<testcase>`` per gate (classname ``bastion.gates``), one for the policy's ``fail_on``
(classname ``bastion.policy``, a ``<failure>`` listing the findings at or above it) and one per
check (classname ``bastion.checks.<kind>``). A failed gate is a ``<failure>``; a check that
errored or did not finish is an ``<error>``, a skipped one ``<skipped>``; a failed verdict with
no other failure gets a ``bastion.policy`` verdict failure, so a failed scan never shows 0 failures; findings of severity high or worse are
listed in the check's ``<system-out>``, after the reason its figures are untrusted, if they are (a
gate on an untrusted figure is itself a ``<failure>``). Layout follows the de-facto schema used by Jenkins,
GitLab and GitHub test reporters (testsuites > testsuite > testcase).
"""

from __future__ import annotations

import datetime as _dt
import re
import xml.etree.ElementTree as ET

from bastion.core.results import CheckResult, GateResult, ScanResult, Severity
from bastion.outputs.report.summary import format_number, plain_verdict

# Characters XML 1.0 forbids (ElementTree would write them and produce an unparsable file).
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: object) -> str:
    return _ILLEGAL_XML.sub("\ufffd", str(text))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: _clean(v) for k, v in attrs.items()})
    if text:
        el.text = _clean(text)
    return el


def _gate_case(suite: ET.Element, gate: GateResult) -> str | None:
    case = _sub(suite, "testcase", classname="bastion.gates", name=gate.expression, time="0")
    if gate.passed:
        return None
    measured = format_number(gate.value)
    message = f"measured {measured}, required {gate.op} {format_number(gate.threshold)}"
    if gate.reason:
        message += f" ({gate.reason})"
    _sub(case, "failure", f"gate '{gate.expression}' failed: {message}", message=message, type="GateFailed")
    return "failure"


def _fail_on_case(suite: ET.Element, result: ScanResult) -> str | None:
    sev = result.fail_on
    if sev is None:
        return None
    case = _sub(suite, "testcase", classname="bastion.policy", name=f"fail_on: no finding {sev.value} or worse",
                time="0")
    bad = [f for f in result.findings if f.severity.rank >= sev.rank]
    if not bad:
        return None
    message = f"{len(bad)} finding{'s' if len(bad) != 1 else ''} at or above {sev.value}"
    lines = [f"[{f.severity.value.upper()}] {f.rule_id}: {f.title} (check {f.check}"
             + (f", {f.location}" if f.location else "") + ")" for f in bad]
    _sub(case, "failure", "\n".join(lines), message=message, type="FailOn")
    return "failure"


def _verdict_case(suite: ET.Element, result: ScanResult) -> str:
    case = _sub(suite, "testcase", classname="bastion.policy", name="verdict", time="0")
    message = result.status_reason or "the scan failed its policy"
    _sub(case, "failure", plain_verdict(result), message=message, type="VerdictFailed")
    return "failure"


def _check_case(suite: ET.Element, check: CheckResult) -> str | None:
    case = _sub(suite, "testcase", classname=f"bastion.checks.{check.kind}", name=check.name,
                time=f"{max(check.seconds, 0.0):.3f}")
    outcome: str | None = None
    if check.status in ("error", "incomplete"):
        message = check.reason or f"check {check.status}"
        _sub(case, "error", f"check '{check.name}' is {check.status}: {message}", message=message,
             type="CheckError" if check.status == "error" else "CheckIncomplete")
        outcome = "error"
    elif check.status == "skipped":
        _sub(case, "skipped", message=check.reason or "skipped")
        outcome = "skipped"
    serious = [f for f in check.findings if f.severity.rank >= Severity.high.rank]
    lines = [f"UNTRUSTED: {check.untrusted}"] if check.untrusted else []
    if serious:
        for f in sorted(serious, key=lambda f: -f.severity.rank):
            refs = ", ".join(f.atlas + f.owasp)
            measured = ", ".join(f"{k}={format_number(v)}" for k, v in f.metrics.items() if not isinstance(v, dict | list))
            lines.append(f"[{f.severity.value.upper()}] {f.rule_id}: {f.title}"
                         + (f" ({refs})" if refs else "") + (f" — {measured}" if measured else ""))
            if f.remediation:
                lines.append(f"    fix: {f.remediation}")
    if lines:
        _sub(case, "system-out", "\n".join(lines))
    return outcome


def render_junit(result: ScanResult) -> bytes:
    """The JUnit XML document (UTF-8 bytes, with XML declaration)."""
    root = ET.Element("testsuites", {"name": "bastion scan"})
    suite = _sub(root, "testsuite", name=_clean(f"bastion scan: {result.target.get('spec', 'model')}"),
                 timestamp=_timestamp(result.started_at))
    props = _sub(suite, "properties")
    for key, value in (("verdict", result.verdict), ("status", result.status),
                       ("status_reason", result.status_reason), ("schema_version", result.schema_version),
                       ("tool", " ".join(result.tool.values()))):
        if value:
            _sub(props, "property", name=key, value=str(value))
    outcomes = [_gate_case(suite, g) for g in result.gates]
    if result.fail_on is not None:
        outcomes.append(_fail_on_case(suite, result))
    outcomes += [_check_case(suite, c) for c in result.checks]
    if result.verdict == "fail" and "failure" not in outcomes:
        outcomes.append(_verdict_case(suite, result))
    counts = {
        "tests": str(len(outcomes)),
        "failures": str(outcomes.count("failure")),
        "errors": str(outcomes.count("error")),
        "skipped": str(outcomes.count("skipped")),
        "time": f"{sum(max(c.seconds, 0.0) for c in result.checks):.3f}",
    }
    suite.attrib.update(counts)
    root.attrib.update(counts)
    _sub(suite, "system-out", plain_verdict(result))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _timestamp(started_at: str) -> str:
    """JUnit wants ISO 8601 without a zone suffix; normalise to UTC."""
    try:
        ts = _dt.datetime.fromisoformat(started_at)
    except (TypeError, ValueError):
        return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if ts.tzinfo is not None:
        ts = ts.astimezone(_dt.UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S")
