"""``bastion inspect PATH...``: scan model files without executing them."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the bastion app."""

    @app.command("inspect", epilog="Examples:\n\n  bastion inspect model.pt\n\n  bastion inspect downloads/ --format sarif -o inspect.sarif --fail-on medium")
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
        from bastion.core.io import atomic_write_json, atomic_write_text
        from bastion.core.results import Severity
        from bastion.supply.config import InspectConfig
        from bastion.supply.inspect import scan_paths

        threshold = Severity.parse(fail_on)
        if output is not None:
            _check_output(output)
        cfg = InspectConfig.from_file(config) if config else InspectConfig()
        res = scan_paths(paths, config=cfg)
        code = res.exit_code(threshold)
        if fmt is OutputFormat.text:
            console = Console(record=output is not None, width=120 if output else None)
            _print_text(console, res, threshold)
            if output:
                atomic_write_text(output, console.export_text())
        else:
            scan = res.to_scan_result(paths, threshold)
            if fmt is OutputFormat.json:
                doc = scan.to_json_dict()   # errors are in checks[0].metrics.error_files
            else:
                from bastion.outputs.report.sarif import render_sarif

                doc = render_sarif(scan)
            if output:
                atomic_write_json(output, doc)
            else:
                typer.echo(json.dumps(doc, indent=2))
        # sys.exit, not typer.Exit: main() runs click with standalone_mode=False, which swallows Exit codes
        sys.exit(code)


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


def _print_text(console: Console, res, threshold) -> None:  # noqa: ANN001 - InspectResult, Severity
    from rich.text import Text

    # one line per finding, never truncated (CI logs), "severity rule file [member] @offset title": a rich
    # Table took 20x longer to lay out than the whole scan of a directory of model files
    findings = sorted(res.findings, key=lambda f: (-f.severity.rank, f.location or "", f.offset or 0))
    lines = [Text.assemble((f"{f.severity.value:<9}", _STYLE[f.severity.value]), f"{f.rule_id}  ",
                           f.location or "-", (f" [{f.metrics['member']}]", "dim") if f.metrics.get("member") else "",
                           "" if f.offset is None else f" @{f.offset}", f"  {f.title}") for f in findings]
    if lines:
        console.print(*lines, sep="\n", soft_wrap=True)
    for e in res.errors:
        label = "[bold yellow]not analysed:[/]" if e.kind == "not-analysed" else "[bold red]error:[/]"
        console.print(f"{label} {escape(e.path)}: {escape(e.message)}")
    if res.nothing_scanned:
        console.print(f"[bold yellow]nothing scanned:[/] no model file found ({res.files_scanned} file(s) read)")
    worst = res.worst()
    verdict = ("[bold red]FAIL[/]" if res.failed(threshold) else
               "[bold green]PASS[/]" if res.complete else "[bold yellow]INCOMPLETE[/]")
    n_err = sum(e.kind == "error" for e in res.errors)
    console.print(f"{verdict} {res.files_scanned} file(s) scanned, {len(res.findings)} finding(s)"
                  f"{f', worst {worst.value}' if worst else ''}, {n_err} error(s), "
                  f"{len(res.errors) - n_err} not analysed (--fail-on {threshold.value}, {res.seconds:.2f} s)")
