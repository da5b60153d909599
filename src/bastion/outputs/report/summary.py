"""The one-paragraph, plain-language verdict shown at the top of every report.

Written for a reader who is not a security specialist: did the model pass, what failed,
what is the worst problem, what to fix first, and whether the scan is complete.
"""

from __future__ import annotations

import math
from collections import Counter

from bastion.core.results import Finding, GateResult, ScanResult, Severity

_SEV_WORDS = {"critical": "critical", "high": "high", "medium": "medium", "low": "low", "info": "informational"}


def format_number(value: object) -> str:
    """A short, stable rendering of a measured number (4 significant digits)."""
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    return str(value)


def _count_phrase(findings: list[Finding]) -> str:
    counts = Counter(f.severity.value for f in findings)
    parts = [f"{counts[s.value]} {_SEV_WORDS[s.value]}" for s in Severity if counts[s.value]]
    if len(parts) > 1:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return parts[0]


def _gate_phrase(gate: GateResult) -> str:
    if gate.value is None:
        why = f" ({gate.reason})" if gate.reason else ""
        return f"'{gate.expression}' could not be measured{why}"
    return f"'{gate.expression}' measured {format_number(gate.value)} (required {gate.op} {format_number(gate.threshold)})"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def generate_verdict(result: ScanResult) -> str:
    """Build the verdict paragraph from the verdict, the gates and the worst findings."""
    failed = [g for g in result.gates if not g.passed]
    findings = result.findings
    serious = [f for f in findings if f.severity.rank >= Severity.high.rank]
    n_gates = len(result.gates)
    parts: list[str] = []

    if result.verdict == "fail":
        if failed:
            shown = "; ".join(_gate_phrase(g) for g in failed[:3])
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            parts.append(
                f"This model FAILED its security policy: {len(failed)} of {n_gates} "
                f"gate{'s' if n_gates != 1 else ''} failed — {shown}{more}."
            )
        else:
            parts.append("This model FAILED its security policy.")
    elif n_gates:
        parts.append(
            f"This model PASSED its security policy: all {n_gates} gate{'s' if n_gates != 1 else ''} "
            "were met."
        )
    else:
        parts.append("This model PASSED: the policy sets no gates, so nothing was required of it.")

    if findings:
        worst = findings[0]
        parts.append(
            f"The scan reported {_count_phrase(findings)} finding{'s' if len(findings) != 1 else ''}; "
            f"the most serious is \"{worst.title}\" ({worst.severity.value})."
        )
        if worst.severity.rank >= Severity.medium.rank and worst.remediation:
            parts.append("Fix first: " + _sentence(worst.remediation))
    else:
        parts.append("No check reported a finding.")

    if result.verdict == "pass" and not serious:
        parts.append(
            "A pass means the model resisted the attacks that were run, within the budgets the "
            "policy sets; it does not prove it would resist stronger or different attacks."
        )
    if result.status == "incomplete":
        why = f" ({result.status_reason})" if result.status_reason else ""
        done = sum(c.status == "complete" for c in result.checks)
        parts.append(
            f"Warning: the scan is INCOMPLETE{why}; only {done} of {len(result.checks)} recorded "
            "checks finished, so some results are missing and the verdict may change once the "
            "scan runs to the end."
        )
    return " ".join(parts)


def plain_verdict(result: ScanResult) -> str:
    """The verdict paragraph: ``result.summary`` when the scan wrote one, else a generated one."""
    return result.summary.strip() or generate_verdict(result)
