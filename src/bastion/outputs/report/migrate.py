"""Read ``report.json`` documents of schema 1.x as schema 2.0.

Schema 1.x kept each check's numbers in a free-form ``metrics`` dict (scalars, plus one record per
ε under ``metrics.results``) and its pictures in an ``artifacts`` dict keyed by name. 2.0 has typed
``measurements`` and a list of typed ``artifacts``. The 1.x numbers become measurements (``where``
taken from the record: attack, norm, eps), the 1.x pictures become artifacts; the 1.x ``metrics``
dict is kept as the check's details, and an artifact 2.0 has no type for is kept there too, so
nothing is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bastion.core.metrics import METRIC_UNITS
from bastion.core.results import SCHEMA_VERSION, Artifact

log = logging.getLogger(__name__)

#: Units of the numbers bastion 1.x wrote (a fixed table of its metric names).
V1_UNITS = {**METRIC_UNITS, "files_scanned": "count", "errors": "count", "findings": "count", "n_samples": "count"}
_WHERE_KEYS = ("attack", "norm", "eps", "stage")
_ARTIFACT = TypeAdapter(Artifact)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _measurements(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: metrics[k] for k in ("attack", "norm") if isinstance(metrics.get(k), str)}
    out = []

    def add(record: dict[str, Any], where: dict[str, Any]) -> None:
        for name, value in record.items():
            if _number(value) and name not in _WHERE_KEYS and not name.startswith("findings_"):
                out.append({"name": name, "value": float(value), "unit": V1_UNITS.get(name, ""), "where": where})

    add(metrics, base)
    for rec in metrics.get("results") or []:
        if isinstance(rec, dict):
            where = {**base, **{k: rec[k] for k in _WHERE_KEYS if isinstance(rec.get(k), str | int | float)}}
            add(rec, where)
    return out


def _v1_artifacts(arts: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(typed artifacts, what has no 2.0 type)."""
    typed: list[dict[str, Any]] = []
    rest: dict[str, Any] = {}
    for key, value in arts.items():
        items: list[dict[str, Any]] = []
        if key == "curves" and isinstance(value, list):
            items = [{"type": "robustness_curve", **c} for c in value if isinstance(c, dict)]
        elif key == "examples" and isinstance(value, dict):
            items = [{"type": "example_grid", **value}]
        elif key == "tabular_examples" and isinstance(value, dict):
            items = [{"type": "tabular_examples", **value}]
        elif key == "histograms" and isinstance(value, list):
            items = [{"type": "histogram", **h} for h in value if isinstance(h, dict)]
        elif key == "stages" and isinstance(value, list):
            items = [{"type": "stage_chart", "stages": value}]
        elif key == "query_curves" and isinstance(value, list):
            items = [{"type": "query_curve", **c} for c in value if isinstance(c, dict)]
        elif key == "query_log" and isinstance(value, dict):
            items = [{"type": "query_log", "counters": value}]
        kept = []
        for item in items:
            try:
                kept.append(_ARTIFACT.validate_python(item).model_dump(mode="json"))
            except ValidationError as exc:
                log.warning("report 1.x: artifact '%s' does not fit schema %s: %s", key, SCHEMA_VERSION, exc)
        typed += kept
        if len(kept) != len(items) or not items:
            rest[key] = value
    return typed, rest


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A schema 1.x document as a 2.0 document (a new dict; ``doc`` is not changed)."""
    out = {k: v for k, v in doc.items() if k != "findings"}
    checks = []
    for check in doc.get("checks") or []:
        if not isinstance(check, dict):
            checks.append(check)
            continue
        c = dict(check)
        metrics = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
        arts = c.get("artifacts") if isinstance(c.get("artifacts"), dict) else {}
        c["measurements"] = _measurements(metrics)
        c["artifacts"], rest = _v1_artifacts(arts)
        c["metrics"] = {k: v for k, v in metrics.items() if not k.startswith("findings_")}
        if rest:
            c["metrics"]["artifacts (schema 1.x)"] = rest
        checks.append(c)
    out["checks"] = checks
    out["schema_version"] = SCHEMA_VERSION
    return out
