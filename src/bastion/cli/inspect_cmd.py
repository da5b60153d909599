"""``bastion inspect PATH...``: scan model files without executing them.

:func:`run_inspect` does the work and imports neither typer nor rich (nor pydantic, unless a JSON or
SARIF report is asked for): the typer command of :func:`register` and the fast path of
:mod:`bastion.cli.fastpath` both call it.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from bastion.core.severity import Severity
    from bastion.supply.inspect import InspectResult


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}

EPILOG = "Examples:\n\n  bastion inspect model.pt\n\n  bastion inspect downloads/ --format sarif -o inspect.sarif --fail-on medium"


def register(app: Any) -> None:
    """Add ``inspect`` to the bastion (typer) app."""
    import typer

    @app.command("inspect", epilog=EPILOG)
    def inspect_command(
        paths: list[Path] = typer.Argument(..., help="Model files or directories (walked recursively)."),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", "-f", help="text, json or sarif."),
        fail_on: str = typer.Option("high", "--fail-on",
                                    help="Exit 1 when a finding is at or above: critical, high, medium, low, info."),
        config: Optional[Path] = typer.Option(None, "--config", "-c",
                                              help="YAML/TOML file: extra allow-list entries and limits."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file."),
    ) -> None:
        """Scan model files for code that loading them would run (pickle, PyTorch, joblib, NumPy,
        Keras, ONNX, safetensors, zip/tar/7z). Never loads or executes the files.

        Exit codes: 0 clean, 1 a finding at or above --fail-on, 2 a file could not be scanned or
        analysed, nothing was scanned (no model file), or a usage error.
        """
        # sys.exit, not typer.Exit: main() runs click with standalone_mode=False, which swallows Exit codes
        sys.exit(run_inspect(paths, fmt, fail_on, config, output))


def run_inspect(paths: list[Path], fmt: OutputFormat, fail_on: str, config: Path | None,
                output: Path | None) -> int:
    """Scan ``paths``, print (or write to ``output``) the report in ``fmt``; returns the exit code."""
    from bastion.core.severity import Severity
    from bastion.supply.config import InspectConfig
    from bastion.supply.inspect import scan_paths

    threshold = Severity.parse(fail_on)
    if output is not None:
        _check_output(output)
    cfg = InspectConfig.from_file(config) if config else InspectConfig()
    res = scan_paths(paths, config=cfg)
    code = res.exit_code(threshold)
    if fmt is OutputFormat.text:
        lines = _text_lines(res, threshold)
        _print_lines(lines)
        if output:
            from bastion.core.io import atomic_write_text

            atomic_write_text(output, "".join("".join(text for text, _ in line) + "\n" for line in lines))
        return code
    scan = res.to_scan_result(paths, threshold)
    if fmt is OutputFormat.json:
        doc = scan.to_json_dict()   # errors are in checks[0].metrics.error_files
    else:
        from bastion.outputs.report.sarif import render_sarif

        doc = render_sarif(scan)
    if output:
        from bastion.core.io import atomic_write_json

        atomic_write_json(output, doc)
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return code


def _check_output(output: Path) -> None:
    """Refuse an --output that cannot be written as a file, before scanning."""
    from bastion.errors import UsageError

    if output.is_dir():
        raise UsageError(f"--output {output} is a directory", hint="give a file path, e.g. "
                         f"{output / 'inspect.json'}")
    parent = next((p for p in output.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--output {output}: {parent} is a file, not a directory", hint="give a file path "
                         "in an existing directory (missing directories are created)")


Line = list[tuple[str, str]]   # (text, rich style) segments of one output line


def _text_lines(res: InspectResult, threshold: Severity) -> list[Line]:
    """The text report: one line per finding, "severity rule file [member] @offset title" (never wrapped
    or truncated, for CI logs), then the files not scanned or not analysed, then the verdict."""
    findings = sorted(res.findings, key=lambda f: (-f.severity.rank, f.location or "", f.offset or 0))
    lines: list[Line] = [[(f"{f.severity.value:<9}", _STYLE[f.severity.value]), (f"{f.rule_id}  ", ""),
                          (f.location or "-", ""),
                          (f" [{f.metrics['member']}]" if f.metrics.get("member") else "", "dim"),
                          ("" if f.offset is None else f" @{f.offset}", ""), (f"  {f.title}", "")]
                         for f in findings]
    for e in res.errors:
        label = ("not analysed:", "bold yellow") if e.kind == "not-analysed" else ("error:", "bold red")
        lines.append([label, (f" {e.path}: {e.message}", "")])
    if res.nothing_scanned:
        lines.append([("nothing scanned:", "bold yellow"),
                      (f" no model file found ({res.files_scanned} file(s) read)", "")])
    worst = res.worst()
    verdict = (("FAIL", "bold red") if res.failed(threshold) else
               ("PASS", "bold green") if res.complete else ("INCOMPLETE", "bold yellow"))
    n_err = sum(e.kind == "error" for e in res.errors)
    lines.append([verdict, (f" {res.files_scanned} file(s) scanned, {len(res.findings)} finding(s)"
                            f"{f', worst {worst.value}' if worst else ''}, {n_err} error(s), "
                            f"{len(res.errors) - n_err} not analysed (--fail-on {threshold.value}, "
                            f"{res.seconds:.2f} s)", "")])
    return lines


def _print_lines(lines: list[Line]) -> None:
    """Styled by rich on a terminal; plain lines (no rich import) into a pipe or a file."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.text import Text

        Console().print(*(Text.assemble(*line) for line in lines), sep="\n", soft_wrap=True)
    else:
        sys.stdout.write("".join("".join(text for text, _ in line) + "\n" for line in lines))
