"""The plain-language verdict shown at the top of every report, and each gate as a sentence.

Written for a reader who is not a security specialist: did the model pass, what each failed
requirement means ("under a small change to each image the model was right on 48% of inputs;
the policy requires at least 60%"), what the worst problem is, what to fix first, and whether
the scan is complete. Sentences are chosen by a measurement's name from a fixed table and
filled from its unit and ``where`` (attack, ε, norm, stage); an unknown name gets a generic
sentence.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

from bastion.core.results import Finding, GateResult, ScanResult, Severity

_SEV_WORDS = {"critical": "critical", "high": "high", "medium": "medium", "low": "low", "info": "informational"}
_OP_WORDS = {">=": "at least", ">": "more than", "<=": "at most", "<": "less than", "==": "exactly"}
_NORM_WORDS = {"linf": "L∞", "l2": "L2"}

VerdictState = Literal["pass", "warn", "fail"]


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


def format_measured(value: float | None, unit: str = "") -> str:
    """A measured value in its unit: ratios as percentages, counts as integers, seconds with 's'."""
    if value is None or not math.isfinite(value):
        return format_number(value)
    if unit == "ratio":
        pct = value * 100
        return f"{pct:.0f}%" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}%"
    if unit in ("count", "queries") and float(value).is_integer():
        return f"{int(value):,}"
    if unit == "seconds":
        return f"{value:.1f} s"
    return format_number(float(value))


def verdict_state(result: ScanResult) -> VerdictState:
    """``fail``; ``warn`` (amber) for a pass with high or critical findings or an incomplete scan;
    else ``pass``."""
    if result.verdict == "fail":
        return "fail"
    serious = any(f.severity.rank >= Severity.high.rank for c in result.checks for f in c.findings)
    return "warn" if serious or result.status != "complete" else "pass"


def _data_kind(result: ScanResult) -> str:
    kind = result.data.get("kind")
    if not kind and isinstance(result.target.get("input"), dict):
        kind = result.target["input"].get("kind")
    return str(kind or "")


def _change_phrase(g: GateResult, result: ScanResult) -> str:
    """'a small change to each image (every pixel moved by at most 10% of its range; pgd attack)'."""
    where = g.where
    eps, norm, attack = where.get("eps"), str(where.get("norm", "")), where.get("attack")
    kind = _data_kind(result)
    thing = {"image": "image", "tabular": "record"}.get(kind, "input")
    size = ""
    if isinstance(eps, int | float) and not isinstance(eps, bool):
        if norm == "linf" and kind == "image":
            size = f"every pixel moved by at most {format_measured(float(eps), 'ratio')} of its range"
        elif norm == "linf" and kind == "tabular":
            size = f"each feature moved by at most {format_number(float(eps))} of its standard deviation"
        else:
            size = f"a change of size at most ε = {format_number(float(eps))} ({_NORM_WORDS.get(norm, norm or 'norm')})"
    small = "a small, hard-to-see change" if kind == "image" and isinstance(eps, int | float) and eps <= 0.05 \
        else "a small change"
    details = "; ".join(p for p in (size, f"{attack} attack" if attack else "",
                                    f"after its {where['stage']} stage" if "stage" in where else "") if p)
    return f"{small} to each {thing}" + (f" ({details})" if details else "")


def _requires(g: GateResult, verb: str = "requires") -> str:
    return f"the policy {verb} {_OP_WORDS.get(g.op, g.op)} {format_measured(g.threshold, g.unit)}"


def gate_sentence(g: GateResult, result: ScanResult) -> str:
    """One gate in plain words, e.g. "Under a small change to each image (...) the model was right
    on 48% of inputs; the policy requires at least 60%."; an untrusted figure says so."""
    text = _gate_words(g, result)
    if g.untrusted:
        allowed = " (the policy allows it for this gate)" if g.passed else ""
        text += f" This figure is UNTRUSTED{allowed}: {_sentence(g.untrusted)}"
    return text


def _gate_words(g: GateResult, result: ScanResult) -> str:
    name, value = g.metric, format_measured(g.value, g.unit)
    if g.value is None:
        why = f" ({g.reason})" if g.reason else ""
        return f"{g.metric} could not be measured{why}, so the requirement counts as not met; {_requires(g)}."
    if name == "robust_accuracy":
        return (f"Under {_change_phrase(g, result)} the model was right on {value} of inputs; "
                f"{_requires(g)}.")
    if name == "clean_accuracy":
        return f"Without any attack the model was right on {value} of inputs; {_requires(g)}."
    if name == "success_rate":
        attack = g.where.get("attack", "the")
        return (f"The {attack} attack fooled the model on {value} of the inputs it got right; "
                f"{_requires(g, 'allows')}.")
    if name.startswith("findings_") and name[len("findings_"):] in _SEV_WORDS:
        sev = _SEV_WORDS[name[len("findings_"):]]
        n = int(g.value)
        return (f"The check '{g.check}' reported {n} finding{'s' if n != 1 else ''} of {sev} severity or worse; "
                f"{_requires(g, 'allows')}.")
    where = ", ".join(f"{k} {format_number(v)}" for k, v in g.where.items())
    at = f" ({where})" if where else ""
    return f"{name}{at} measured {value}; {_requires(g)}."


def _count_phrase(findings: list[Finding]) -> str:
    counts = Counter(f.severity.value for f in findings)
    parts = [f"{counts[s.value]} {_SEV_WORDS[s.value]}" for s in Severity if counts[s.value]]
    if len(parts) > 1:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return parts[0]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def _fix_first(worst: Finding) -> str:
    from bastion.core.rules import find_rule

    rule = find_rule(worst.rule_id)
    return rule.remediation if rule else worst.remediation


def generate_verdict(result: ScanResult) -> str:
    """Build the verdict paragraph from the verdict, the gates and the worst findings."""
    failed = [g for g in result.gates if not g.passed]
    findings = result.findings
    serious = [f for f in findings if f.severity.rank >= Severity.high.rank]
    n_gates = len(result.gates)
    parts: list[str] = []
    if result.verdict == "fail":
        if failed:
            more = f" ({len(failed) - 3} more requirements also failed.)" if len(failed) > 3 else ""
            parts.append(f"This model FAILED its security policy: {len(failed)} of {n_gates} "
                         f"requirement{'s' if n_gates != 1 else ''} not met. "
                         + " ".join(gate_sentence(g, result) for g in failed[:3]) + more)
        else:
            parts.append("This model FAILED its security policy: a finding reached the severity the policy "
                         "does not accept (fail_on).")
    elif n_gates:
        parts.append("This model PASSED its security policy: "
                     + (f"all {n_gates} requirements were met." if n_gates != 1 else "its one requirement was met."))
    else:
        parts.append("This model PASSED: the policy sets no requirements (gates), so nothing was required of it.")
    if findings:
        worst = findings[0]
        if result.verdict == "pass" and serious:
            parts.append(f"But the scan found {len(serious)} serious problem{'s' if len(serious) != 1 else ''} "
                         "that the policy does not gate on.")
        parts.append(f"The scan reported {_count_phrase(findings)} finding{'s' if len(findings) != 1 else ''}; "
                     f"the most serious is \"{worst.title}\" ({worst.severity.value}).")
        fix = _fix_first(worst)
        if worst.severity.rank >= Severity.medium.rank and fix:
            parts.append("Fix first: " + _sentence(fix))
    else:
        parts.append("No check reported a finding.")
    untrusted = [c.name for c in result.checks if c.untrusted]
    if untrusted:
        parts.append(f"Signs of gradient masking make the evasion figures of {', '.join(untrusted)} UNTRUSTED: "
                     "they may overstate robustness until an adaptive evaluation (BPDA, EOT) confirms them.")
    if result.verdict == "pass" and not serious and not untrusted:
        parts.append("A pass means the model resisted the attacks that were run, within the budgets the "
                     "policy sets; it does not prove it would resist stronger or different attacks.")
    if result.status == "incomplete":
        why = f" ({result.status_reason})" if result.status_reason else ""
        done = sum(c.status == "complete" for c in result.checks)
        parts.append(f"Warning: the scan is INCOMPLETE{why}; only {done} of {len(result.checks)} recorded "
                     "checks finished, so some results are missing and the verdict may change once the "
                     "scan runs to the end.")
    return " ".join(parts)


def plain_verdict(result: ScanResult) -> str:
    """The verdict paragraph: ``result.summary`` when the scan wrote one, else a generated one."""
    return result.summary.strip() or generate_verdict(result)
