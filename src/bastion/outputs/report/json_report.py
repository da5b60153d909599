"""``report.json``: the versioned document every other report format is rendered from.

The document is :meth:`ScanResult.to_json_dict` (the pydantic model plus a flattened
``findings`` list, worst first); its JSON Schema (draft 2020-12) is generated from the same
pydantic model by :func:`report_json_schema` and shipped as ``report.schema.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bastion.core.io import atomic_write_json
from bastion.core.results import SCHEMA_VERSION, Finding, ScanResult
from bastion.errors import DataError

log = logging.getLogger(__name__)

#: The committed schema file (regenerate with ``python -m bastion.outputs.report.json_report``).
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA_ID = "urn:bastion:report-schema:{version}"


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json``, generated from :class:`ScanResult`.

    ``findings`` is not a model field (it is derived from the checks) but it is part of the
    document, so it is added here as an array of ``Finding``.
    """
    schema = ScanResult.model_json_schema(mode="serialization")
    defs = schema.setdefault("$defs", {})
    if "Finding" not in defs:  # pragma: no cover - Finding is always reachable via checks
        defs["Finding"] = Finding.model_json_schema(mode="serialization")
    schema["properties"]["findings"] = {
        "type": "array",
        "title": "Findings",
        "description": "Every finding of every check, worst first (derived from checks[].findings).",
        "items": {"$ref": "#/$defs/Finding"},
    }
    required = schema.setdefault("required", [])
    for key in ("schema_version", "verdict", "status", "checks", "gates", "findings"):
        if key not in required:
            required.append(key)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID.format(version=SCHEMA_VERSION),
        **{k: v for k, v in schema.items() if k not in ("$schema", "$id")},
        "title": f"bastion report.json (schema_version {SCHEMA_VERSION})",
    }


def _strict(doc: Any) -> Any:
    """Replace NaN and ±inf by ``null``: RFC 8259 JSON has no such numbers and strict parsers
    (JavaScript, Go, jq --strict) reject them. pydantic already does this for ``Any`` fields."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {k: _strict(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_strict(v) for v in doc]
    return doc


def json_document(result: ScanResult) -> dict[str, Any]:
    """The ``report.json`` document, with NaN/±inf as ``null`` wherever the schema allows null
    (gate values, metrics, artifacts, target and data descriptions)."""
    doc = result.to_json_dict()
    doc["target"], doc["data"] = _strict(doc["target"]), _strict(doc["data"])
    for gate in doc["gates"]:
        gate["value"] = _strict(gate["value"])
    for check in doc["checks"]:
        for key in ("metrics", "artifacts", "measurements"):
            check[key] = _strict(check[key])
    for finding in [f for c in doc["checks"] for f in c["findings"]] + doc["findings"]:
        finding["metrics"] = _strict(finding["metrics"])
    return doc


#: Schema major versions this bastion reads (1.x is upgraded on the fly, see ``migrate``).
READABLE_MAJORS = ("1", SCHEMA_VERSION.split(".")[0])


def read_report(path: str | os.PathLike[str]) -> ScanResult:
    """Load a ``report.json`` of this schema major version or of 1.x (upgraded to this one).

    Raises :class:`~bastion.errors.DataError` naming the file and the problem when the file is
    missing, is not JSON, has an unsupported ``schema_version`` or does not fit the schema.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such report file") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON document ({exc})",
                        hint="report.json files are written by 'bastion scan'") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a report must be a JSON object, found {type(doc).__name__}")
    version = str(doc.get("schema_version", ""))
    if version.split(".")[0] not in READABLE_MAJORS:
        raise DataError(
            f"{path}: schema_version '{version}' is not supported; this bastion reads "
            f"{', '.join(m + '.x' for m in READABLE_MAJORS)}",
            hint="re-run the scan with this version of bastion",
        )
    if version.split(".")[0] == "1":
        from bastion.outputs.report.migrate import upgrade

        doc = upgrade(doc)
    try:
        return ScanResult.from_json_dict(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path}: field '{where}': {first['msg']} ({exc.error_count()} error(s))") from exc


def write_schema_file(path: str | os.PathLike[str] = SCHEMA_PATH) -> Path:
    """Regenerate the committed ``report.schema.json``."""
    return atomic_write_json(path, report_json_schema())


if __name__ == "__main__":  # pragma: no cover - maintenance helper
    logging.basicConfig(level=logging.INFO)
    log.info("wrote %s", write_schema_file())
