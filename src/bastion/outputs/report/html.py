"""``report.html``: one self-contained page a non-specialist can read.

Top to bottom: the verdict in words (green pass, amber pass with serious findings, red fail),
each gate as a sentence, the findings, what to fix (each rule's remediation once), then one
section per check with its pictures (each artifact drawn by the renderer registered for its
type, :mod:`bastion.outputs.report.renderers`) and its measurements and raw details folded.

Rendered with jinja2 (autoescape on: every string from a check, a model or a data set is
escaped); figures are inline ``data:`` URIs and the CSS is inline, so the page loads no
external resource.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.core.results import CheckResult, Finding, Measurement, ScanResult, Severity
from bastion.core.rules import find_rule
from bastion.outputs.report.renderers import RENDERERS
from bastion.outputs.report.summary import format_measured, format_number, gate_sentence, plain_verdict, verdict_state

log = logging.getLogger(__name__)

__all__ = ["plain_verdict", "render_html"]

ATLAS_URL = "https://atlas.mitre.org/techniques/{}"
_ATLAS_ID = re.compile(r"^AML\.T\d{4}(\.\d{3})?$")
#: OWASP Machine Learning Security Top 10 (2023) category names.
OWASP_ML = {
    "ML01": "Input Manipulation Attack",
    "ML02": "Data Poisoning Attack",
    "ML03": "Model Inversion Attack",
    "ML04": "Membership Inference Attack",
    "ML05": "Model Theft",
    "ML06": "AI Supply Chain Attacks",
    "ML07": "Transfer Learning Attack",
    "ML08": "Model Skewing",
    "ML09": "Output Integrity Attack",
    "ML10": "Model Poisoning",
}
_MAX_LIST = 12
_MAX_TEXT = 300
_MAX_RECORD_COLUMNS = 8
_MAX_RECORD_ROWS = 50
_MAX_FINDING_METRICS = 6


# ----------------------------------------------------------------------------- values


def fmt_value(value: Any) -> str:
    """Format one raw detail value for a table (numbers as they are: a detail has no unit)."""
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        text = "; ".join(value)
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    if isinstance(value, list | tuple):
        shown = ", ".join(fmt_value(v) for v in value[:_MAX_LIST])
        return f"[{shown}{', …' if len(value) > _MAX_LIST else ''}]"
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items())
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    text = format_number(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def metric_blocks(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn a check's free-form details into display blocks: plain rows, and matrices for
    two-level dicts such as ``{"robust_accuracy": {"pgd": {"0.1": 0.4, "0.2": 0.1}}}``."""
    rows: list[tuple[str, str]] = []
    blocks: list[dict[str, Any]] = []

    def flatten(prefix: str, value: Any) -> None:
        if _records(value):
            blocks.append(_records_block(prefix, value))
            return
        if isinstance(value, dict) and value:
            inner = list(value.values())
            if all(isinstance(v, dict) and v and all(_scalar(x) for x in v.values()) for v in inner):
                columns: list[str] = []
                for v in inner:
                    columns += [str(k) for k in v if str(k) not in columns]
                table_rows = []
                for k, v in value.items():
                    by_name = {str(name): x for name, x in v.items()}
                    cells = [fmt_value(by_name[c]) if c in by_name else "—" for c in columns]
                    table_rows.append((str(k), cells))
                blocks.append({"type": "matrix", "title": prefix, "columns": columns, "rows": table_rows})
                return
            for k, v in value.items():
                flatten(f"{prefix} › {k}" if prefix else str(k), v)
        else:
            rows.append((prefix, fmt_value(value)))

    for key, value in metrics.items():
        flatten(str(key), value)
    return ([{"type": "rows", "rows": rows}] if rows else []) + blocks


def _records(value: Any) -> bool:
    """A list of flat records, e.g. one dict of measurements per ε."""
    return (isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v for v in value)
            and all(_scalar(x) or (isinstance(x, list) and all(_scalar(y) for y in x))
                    for v in value for x in v.values()))


def _records_block(title: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records as a table: one column per record when there are few (labelled by ε when every
    record has one), else one row per record."""
    keys: list[str] = []
    for rec in records:
        keys += [str(k) for k in rec if str(k) not in keys]
    by_name = [{str(k): v for k, v in rec.items()} for rec in records]
    if len(records) <= _MAX_RECORD_COLUMNS:
        label_key = next((k for k in ("eps", "epsilon", "stage", "attack", "name") if all(k in r for r in by_name)),
                         None)
        columns = ([f"ε = {format_number(r[label_key])}" if label_key in ("eps", "epsilon") else str(r[label_key])
                    for r in by_name] if label_key else [f"#{i + 1}" for i in range(len(records))])
        rows = [(k, [fmt_value(r[k]) if k in r else "—" for r in by_name])
                for k in keys if k != label_key]
        return {"type": "matrix", "title": title, "columns": columns, "rows": rows}
    shown = by_name[:_MAX_RECORD_ROWS]
    rows = [(f"#{i + 1}", [fmt_value(r[k]) if k in r else "—" for k in keys])
            for i, r in enumerate(shown)]
    more = f" (first {len(shown)} of {len(records)})" if len(records) > len(shown) else ""
    return {"type": "matrix", "title": title + more, "columns": keys, "rows": rows}


# ----------------------------------------------------------------------------- sections


def _brief(value: Any, depth: int = 0) -> str:
    """A short description of a target/data field: long lists are summarised, not dumped."""
    if isinstance(value, list | tuple):
        if all(_scalar(v) for v in value):
            if len(value) <= _MAX_LIST:
                return ", ".join(format_number(v) for v in value)
            nums = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
            span = f", {format_number(min(nums))} to {format_number(max(nums))}" if len(nums) == len(value) else ""
            return f"{len(value)} values{span}"
        return f"{len(value)} entries"
    if isinstance(value, dict):
        if depth > 0:
            return f"{len(value)} fields"
        return "; ".join(f"{k}: {_brief(v, depth + 1)}" for k, v in value.items())
    return format_number(value)


def _spec_rows(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, value in spec.items():
        text = _brief(value)
        out.append((str(key).replace("_", " "), text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"))
    return out


def _named_classes(target: dict[str, Any], names: Any) -> dict[str, Any]:
    """The target's classes with the data's names for them ("0 (malignant)") where it has them."""
    classes = target.get("classes")
    if not isinstance(names, dict) or not isinstance(classes, list) or len(classes) > _MAX_LIST:
        return target
    return {**target, "classes": [f"{c} ({names[str(c)]})" if str(c) in names else c for c in classes]}


def _finding_view(f: Finding) -> dict[str, Any]:
    return {
        "severity": f.severity.value,
        "title": f.title,
        "rule_id": f.rule_id,
        "check": f.check,
        "description": f.description,
        "untrusted": f.untrusted,
        "location": f.location + (f" (offset {f.offset})" if f.offset is not None else "") if f.location else None,
        "atlas": [(a, ATLAS_URL.format(a) if _ATLAS_ID.match(a) else None) for a in f.atlas],
        "owasp": [(o, OWASP_ML.get(o.upper()[:4], "")) for o in f.owasp],
        "metrics": [(str(k), fmt_value(v)) for k, v in f.metrics.items()
                    if _scalar(v) or (isinstance(v, list) and len(v) <= _MAX_LIST and all(_scalar(x) for x in v))
                    ][:_MAX_FINDING_METRICS],
    }


def _fixes(findings: list[Finding]) -> list[dict[str, Any]]:
    """Each rule once, worst first: its title, its remediation (from the catalogue; a finding's own
    when the rule is unknown), how many findings and the worst severity."""
    by_rule: dict[str, list[Finding]] = {}
    for f in findings:  # already worst first
        by_rule.setdefault(f.rule_id, []).append(f)
    out = []
    for rule_id, group in by_rule.items():
        rule = find_rule(rule_id)
        remediation = rule.remediation if rule else next((f.remediation for f in group if f.remediation), "")
        out.append({"rule_id": rule_id, "title": rule.title if rule else group[0].title,
                    "severity": group[0].severity.value, "count": len(group), "remediation": remediation,
                    "help": rule.help if rule else "", "nist": rule.nist if rule else None,
                    "checks": sorted({f.check for f in group})})
    return out


def _measurement_rows(measurements: list[Measurement]) -> list[tuple[str, str, str]]:
    """(name, where, value) per measurement; an untrusted value is marked ⚠."""
    return [(m.name, ", ".join(f"{k}={format_number(v)}" for k, v in m.where.items()),
             format_measured(m.value, m.unit) + (" ⚠ untrusted" if m.untrusted else ""))
            for m in measurements]


def _artifact_blocks(c: CheckResult, errors: list[str]) -> list[dict[str, Any]]:
    """Each artifact type of the check through its registered renderer (in order of first use)."""
    groups: dict[str, list[Any]] = {}
    for a in c.artifacts:
        groups.setdefault(a.type, []).append(a)
    blocks: list[dict[str, Any]] = []
    for kind, arts in groups.items():
        if kind not in RENDERERS:
            errors.append(f"{kind}: no renderer for this artifact type")
            continue
        try:
            blocks += RENDERERS.get_object(kind)(arts)
        except Exception as exc:  # noqa: BLE001 - one bad artifact must not sink the report
            title = kind.replace("_", " ").capitalize()
            log.warning("could not draw %s: %s", title, exc)
            errors.append(f"{title}: could not be drawn ({exc})")
    return blocks


def _check_view(c: CheckResult, index: int) -> dict[str, Any]:
    errors: list[str] = []
    sev = Counter(f.severity.value for f in c.findings)
    return {
        "anchor": f"check-{index}",
        "name": c.name,
        "kind": c.kind,
        "status": c.status,
        "reason": c.reason,
        "untrusted": c.untrusted,
        "seconds": f"{c.seconds:.1f} s",
        "artifacts": _artifact_blocks(c, errors),
        "measurements": _measurement_rows(c.measurements),
        "details": metric_blocks(c.metrics),
        "figure_errors": errors,
        "severity_counts": [(s.value, sev[s.value]) for s in Severity if sev[s.value]],
    }


def _duration(start: str, end: str | None) -> str | None:
    if not end:
        return None
    try:
        secs = (_dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)).total_seconds()
    except (ValueError, TypeError):
        return None
    return f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"


def _when(stamp: str | None) -> str:
    """ISO timestamp -> 'YYYY-MM-DD HH:MM:SS UTC' (unparsable values shown as they are)."""
    if not stamp:
        return "—"
    try:
        ts = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if ts.tzinfo is None:
        return ts.strftime("%Y-%m-%d %H:%M:%S")
    return ts.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_context(result: ScanResult) -> dict[str, Any]:
    """Everything the template shows, already formatted (strings are escaped by jinja)."""
    findings = result.findings
    counts = Counter(f.severity.value for f in findings)
    anchors: dict[str, str] = {}
    for i, c in enumerate(result.checks):
        anchors.setdefault(c.name, f"check-{i}")
    state = verdict_state(result)
    return {
        "check_anchors": anchors,
        "r": result,
        "state": state,
        "state_word": {"pass": "PASS", "warn": "PASS", "fail": "FAIL"}[state],
        "state_note": {"pass": "policy met", "warn": "policy met, serious findings",
                       "fail": "policy not met"}[state],
        "verdict_text": plain_verdict(result),
        "tool": " ".join(v for v in (result.tool.get("name", "bastion"), result.tool.get("version", "")) if v),
        "duration": _duration(result.started_at, result.finished_at),
        "started": _when(result.started_at),
        "finished": _when(result.finished_at),
        "target_rows": _spec_rows(_named_classes(result.target, result.data.get("class_names"))),
        "data_rows": _spec_rows(result.data),
        "gates": [
            {"expression": g.expression, "sentence": gate_sentence(g, result), "passed": g.passed,
             "value": format_measured(g.value, g.unit), "op": g.op, "threshold": format_measured(g.threshold, g.unit)}
            for g in result.gates
        ],
        "gates_failed": sum(not g.passed for g in result.gates),
        "findings": [_finding_view(f) for f in findings],
        "fixes": _fixes(findings),
        "severity_counts": [(s.value, counts[s.value]) for s in Severity],
        "checks": [_check_view(c, i) for i, c in enumerate(result.checks)],
    }


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,  # every value is escaped; nothing is marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(result: ScanResult) -> str:
    """The complete, self-contained HTML document for ``result``."""
    return _environment().get_template("report.html.j2").render(**build_context(result))
