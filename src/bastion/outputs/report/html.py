"""``report.html``: one self-contained page a non-specialist can read.

Rendered with jinja2 (autoescape on: every string from a check, a model or a data set is
escaped); figures come from :mod:`bastion.outputs.report.plots` as inline ``data:`` URIs, and
the CSS is inline, so the page loads no external resource.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bastion.core.io import atomic_write_text
from bastion.core.results import CheckResult, Finding, ScanResult, Severity
from bastion.outputs.report import plots
from bastion.outputs.report.summary import format_number, plain_verdict

log = logging.getLogger(__name__)

__all__ = ["plain_verdict", "render_html", "write_html_report"]

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
_RATE = re.compile(r"(accuracy|success_rate|rate$|fraction|_acc$|^acc$)")
_MAX_LIST = 12
_MAX_TEXT = 300
_MAX_RECORD_COLUMNS = 8
_MAX_RECORD_ROWS = 50
_MAX_FINDING_METRICS = 8


# ----------------------------------------------------------------------------- values


def _is_rate(path: str) -> bool:
    return bool(_RATE.search(path.lower().replace(" › ", "_")))


def fmt_value(value: Any, path: str = "") -> str:
    """Format one metric value for a table; rates in [0, 1] as percentages."""
    if isinstance(value, float) and not isinstance(value, bool) and _is_rate(path) and 0.0 <= value <= 1.0:
        return f"{value:.1%}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        text = "; ".join(value)
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    if isinstance(value, list | tuple):
        shown = ", ".join(fmt_value(v, path) for v in value[:_MAX_LIST])
        return f"[{shown}{', …' if len(value) > _MAX_LIST else ''}]"
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {fmt_value(v, f'{path} › {k}')}" for k, v in value.items())
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    text = format_number(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def metric_blocks(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn a check's metrics into display blocks: plain rows, and matrices for
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
                    cells = [fmt_value(by_name[c], f"{prefix} › {c}") if c in by_name else "—" for c in columns]
                    table_rows.append((str(k), cells))
                blocks.append({"type": "matrix", "title": prefix, "columns": columns, "rows": table_rows})
                return
            for k, v in value.items():
                flatten(f"{prefix} › {k}" if prefix else str(k), v)
        else:
            rows.append((prefix, fmt_value(value, prefix)))

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
        rows = [(k, [fmt_value(r[k], f"{title} › {k}") if k in r else "—" for r in by_name])
                for k in keys if k != label_key]
        return {"type": "matrix", "title": title, "columns": columns, "rows": rows}
    shown = by_name[:_MAX_RECORD_ROWS]
    rows = [(f"#{i + 1}", [fmt_value(r[k], f"{title} › {k}") if k in r else "—" for k in keys])
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


def _finding_view(f: Finding) -> dict[str, Any]:
    return {
        "severity": f.severity.value,
        "title": f.title,
        "rule_id": f.rule_id,
        "check": f.check,
        "description": f.description,
        "remediation": f.remediation,
        "location": f.location + (f" (offset {f.offset})" if f.offset is not None else "") if f.location else None,
        "atlas": [(a, ATLAS_URL.format(a) if _ATLAS_ID.match(a) else None) for a in f.atlas],
        "owasp": [(o, OWASP_ML.get(o.upper()[:4], "")) for o in f.owasp],
        "metrics": [(str(k), fmt_value(v, str(k))) for k, v in f.metrics.items()
                    if _scalar(v) or (isinstance(v, list) and len(v) <= _MAX_LIST and all(_scalar(x) for x in v))
                    ][:_MAX_FINDING_METRICS],
    }


def _figure(title: str, make: Callable[[], str], caption: str, errors: list[str]) -> dict[str, str] | None:
    try:
        return {"title": title, "uri": make(), "caption": caption}
    except Exception as exc:  # noqa: BLE001 - artifacts are free-form JSON; a bad one must not sink the report
        log.warning("could not draw %s: %s", title, exc)
        errors.append(f"{title}: could not be drawn ({exc})")
        return None


def _figures(art: Mapping[str, Any], errors: list[str]) -> list[dict[str, str]]:
    figs: list[dict[str, str] | None] = []
    if isinstance(art.get("curves"), list) and art["curves"]:
        figs.append(_figure("Robustness curve", lambda: plots.robustness_curve(art["curves"]),
                            "Share of inputs still classified correctly as the attacker's budget ε grows. "
                            "The dashed line is the accuracy without attack; the lower the curve, "
                            "the easier the model is to fool.", errors))
    if isinstance(art.get("examples"), dict):
        ex = art["examples"]
        eps = ex.get("eps")
        at = f" at ε = {format_number(eps)}" if isinstance(eps, int | float) else ""
        figs.append(_figure(f"Adversarial examples ({ex.get('attack', 'attack')}{at})",
                            lambda: plots.example_grid(ex),
                            "Top: original inputs with their true label. Middle: the change the attack made, "
                            "amplified (red = brighter, blue = darker). Bottom: the modified input and what "
                            "the model now says (red when it is wrong).", errors))
    if isinstance(art.get("stages"), list) and art["stages"]:
        figs.append(_figure("Robust accuracy after each attack stage", lambda: plots.stages_chart(art["stages"]),
                            "Each stage attacks only the inputs that survived the previous ones.", errors))
    if isinstance(art.get("query_curves"), list) and art["query_curves"]:
        figs.append(_figure("Attack success against queries", lambda: plots.query_curves(art["query_curves"]),
                            "How quickly an attacker who can only query the model succeeds.", errors))
    for h in art.get("histograms", []) if isinstance(art.get("histograms"), list) else []:
        if isinstance(h, dict):
            figs.append(_figure(str(h.get("title") or "Histogram"), lambda h=h: plots.histogram(h), "", errors))
    return [f for f in figs if f is not None]


def _tabular(art: Mapping[str, Any]) -> dict[str, Any] | None:
    tab = art.get("tabular_examples")
    if not isinstance(tab, dict) or not isinstance(tab.get("rows"), list):
        return None
    rows = []
    for row in tab["rows"][:_MAX_LIST]:
        if not isinstance(row, dict):
            continue
        changes = []
        for feat, pair in (row.get("changes") or {}).items():
            if isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, int | float) for p in pair):
                changes.append((str(feat), float(pair[0]), float(pair[1])))
        # keep the check's order: it knows the feature scales and lists the largest change first
        rows.append({
            "label": str(row.get("label", "")),
            "adv_label": str(row.get("adv_label", "")),
            "fooled": str(row.get("label", "")) != str(row.get("adv_label", "")),
            "changes": [(f, format_number(a), format_number(b), f"{b - a:+.3g}") for f, a, b in changes[:5]],
            "more": max(0, len(changes) - 5),
        })
    return {"attack": str(tab.get("attack", "")), "rows": rows} if rows else None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _query_log(art: Mapping[str, Any]) -> list[tuple[str, str]]:
    qlog = art.get("query_log")
    if not isinstance(qlog, dict):
        return []
    out = []
    for k, v in qlog.items():
        if k.startswith("bytes") and isinstance(v, int | float) and not isinstance(v, bool):
            text = _human_bytes(float(v))
        elif k == "seconds" and isinstance(v, int | float):
            text = f"{float(v):.2f} s"
        else:
            text = fmt_value(v, k)
        out.append((k.replace("_", " "), text))
    return out


def _check_view(c: CheckResult, index: int) -> dict[str, Any]:
    errors: list[str] = []
    sev = Counter(f.severity.value for f in c.findings)
    return {
        "anchor": f"check-{index}",
        "name": c.name,
        "kind": c.kind,
        "status": c.status,
        "reason": c.reason,
        "seconds": f"{c.seconds:.1f} s",
        "blocks": metric_blocks(c.metrics),
        "figures": _figures(c.artifacts, errors),
        "tabular": _tabular(c.artifacts),
        "query_log": _query_log(c.artifacts),
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
    return {
        "check_anchors": anchors,
        "r": result,
        "verdict_text": plain_verdict(result),
        "tool": " ".join(v for v in (result.tool.get("name", "bastion"), result.tool.get("version", "")) if v),
        "duration": _duration(result.started_at, result.finished_at),
        "started": _when(result.started_at),
        "finished": _when(result.finished_at),
        "target_rows": _spec_rows(result.target),
        "data_rows": _spec_rows(result.data),
        "gates": [
            {"expression": g.expression, "metric": g.metric, "value": format_number(g.value), "op": g.op,
             "threshold": format_number(g.threshold), "passed": g.passed, "reason": g.reason}
            for g in result.gates
        ],
        "gates_failed": sum(not g.passed for g in result.gates),
        "findings": [_finding_view(f) for f in findings],
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


def write_html_report(result: ScanResult, path: str | os.PathLike[str]) -> Path:
    """Render ``result`` and write it to ``path`` atomically."""
    return atomic_write_text(path, render_html(result))
