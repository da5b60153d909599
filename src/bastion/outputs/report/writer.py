"""Write every report of a scan from one :class:`ScanResult`, each file atomically."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from bastion.core.io import atomic_write_json
from bastion.core.redact import redact_tree
from bastion.core.results import ScanResult
from bastion.errors import UsageError

log = logging.getLogger(__name__)

#: Report format -> file name inside the output directory.
REPORT_FILES: dict[str, str] = {
    "json": "report.json",
    "html": "report.html",
    "junit": "junit.xml",
    "sarif": "report.sarif",
}
DEFAULT_FORMATS: tuple[str, ...] = ("json", "html", "junit", "sarif")


def _write_json(result: ScanResult, path: Path) -> Path:
    from bastion.outputs.report.json_report import write_json_report

    return write_json_report(result, path)


def _write_html(result: ScanResult, path: Path) -> Path:
    from bastion.outputs.report.html import write_html_report

    return write_html_report(result, path)


def _write_junit(result: ScanResult, path: Path) -> Path:
    from bastion.outputs.report.junit import write_junit_report

    return write_junit_report(result, path)


def _write_sarif(result: ScanResult, path: Path) -> Path:
    from bastion.outputs.report.sarif import render_sarif

    return atomic_write_json(path, render_sarif(result))


_WRITERS: dict[str, Callable[[ScanResult, Path], Path]] = {
    "json": _write_json,
    "html": _write_html,
    "junit": _write_junit,
    "sarif": _write_sarif,
}


def write_reports(
    result: ScanResult,
    out_dir: Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> dict[str, Path]:
    """Write the requested reports into ``out_dir`` and return ``{format: path}``.

    ``report.json`` is always written first (it is the source of truth, and what an
    interrupted scan must leave behind); each file is written to a temp file and renamed.
    """
    result = redact_tree(result)  # last guard: no registered secret or URL credential in any report
    wanted = [f.lower() for f in formats]
    unknown = [f for f in wanted if f not in _WRITERS]
    if unknown:
        raise UsageError(
            f"unknown report format(s): {', '.join(unknown)}; allowed: {', '.join(_WRITERS)}"
        )
    ordered = sorted(dict.fromkeys(wanted), key=lambda f: f != "json")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for fmt in ordered:
        written[fmt] = _WRITERS[fmt](result, out_dir / REPORT_FILES[fmt])
        log.info("wrote %s report: %s", fmt, written[fmt])
    return written
