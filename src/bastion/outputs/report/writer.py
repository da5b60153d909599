"""Write every report of a scan from one :class:`ScanResult`, each file atomically."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from bastion.core.io import atomic_write_bytes
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


def _render_json(result: ScanResult) -> bytes:
    from bastion.outputs.report.json_report import json_document

    return _json_bytes(json_document(result))


def _render_html(result: ScanResult) -> bytes:
    from bastion.outputs.report.html import render_html

    return render_html(result).encode("utf-8")


def _render_junit(result: ScanResult) -> bytes:
    from bastion.outputs.report.junit import render_junit

    return render_junit(result)


def _render_sarif(result: ScanResult) -> bytes:
    from bastion.outputs.report.sarif import render_sarif

    return _json_bytes(render_sarif(result))


def _json_bytes(doc: object) -> bytes:
    import json

    return (json.dumps(doc, indent=2, default=str) + "\n").encode("utf-8")


_RENDERERS: dict[str, Callable[[ScanResult], bytes]] = {
    "json": _render_json,
    "html": _render_html,
    "junit": _render_junit,
    "sarif": _render_sarif,
}


#: Optional libraries each format needs beyond the core install (``bastion[reports]``).
FORMAT_MODULES: dict[str, tuple[str, ...]] = {"html": ("jinja2", "matplotlib")}


def require_formats(formats: Sequence[str]) -> None:
    """Raise one MissingExtraError naming the extra when a requested format's libraries are not
    installed, so a scan refuses before it runs rather than after it (leaving no reports)."""
    from bastion.core.extras import require_all

    require_all(*(m for f in dict.fromkeys(f.lower() for f in formats) for m in FORMAT_MODULES.get(f, ())))


def write_reports(
    result: ScanResult,
    out_dir: Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> dict[str, Path]:
    """Write the requested reports into ``out_dir`` and return ``{format: path}``.

    The set in ``out_dir`` is always consistent: every report is rendered in memory first (an
    error or Ctrl-C there changes nothing on disk), report files of formats not requested (left
    by an earlier run) are removed, then each file is written to a temp file and renamed,
    ``report.json`` first. So no report of a previous run is ever left beside a newer one.
    """
    result = redact_tree(result)  # last guard: no registered secret or URL credential in any report
    wanted = [f.lower() for f in formats]
    unknown = [f for f in wanted if f not in _RENDERERS]
    if unknown:
        raise UsageError(
            f"unknown report format(s): {', '.join(unknown)}; allowed: {', '.join(_RENDERERS)}"
        )
    ordered = sorted(dict.fromkeys(wanted), key=lambda f: f != "json")
    payloads = {fmt: _RENDERERS[fmt](result) for fmt in ordered}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt, name in REPORT_FILES.items():
        if fmt not in payloads:
            stale = out_dir / name
            if stale.is_file() or stale.is_symlink():
                stale.unlink()
                log.info("removed %s report of an earlier run: %s", fmt, stale)
    written: dict[str, Path] = {}
    for fmt, data in payloads.items():
        written[fmt] = atomic_write_bytes(out_dir / REPORT_FILES[fmt], data)
        log.info("wrote %s report: %s", fmt, written[fmt])
    return written
