"""``bastion audit-data DATA... [--train A --test B] [--label COL] [--manifest M]``: audit tables
(CSV, Parquet) before training."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from bastion.cli.inspect_cmd import OutputFormat, _check_output

_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}
EPILOG = ("Examples:\n\n  bastion audit-data data.csv --label y\n\n"
          "  bastion audit-data --train train.parquet --test test.parquet --label y --write-manifest data.manifest.json"
          "\n\n  bastion audit-data --train train.parquet --test test.parquet --label y --manifest data.manifest.json")


def register(app: typer.Typer) -> None:
    """Add ``audit-data`` to the bastion app."""

    @app.command("audit-data", epilog=EPILOG)
    def audit_data_command(
        data: Optional[list[Path]] = typer.Argument(None, help="CSV/Parquet files or directories (one data set)."),
        train: Optional[list[Path]] = typer.Option(None, "--train", help="Training split (repeat for several files)."),
        test: Optional[list[Path]] = typer.Option(None, "--test", help="Test split (repeat for several files)."),
        label: Optional[str] = typer.Option(None, "--label", "-l", help="Label column."),
        key: Optional[str] = typer.Option(None, "--key", help="Column that identifies a record (manifest diffs)."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", "-m",
                                                help="Compare with this manifest: records added, removed, changed."),
        write_manifest: Optional[Path] = typer.Option(None, "--write-manifest",
                                                      help="Write the data's manifest (hashes, counts, schema) here."),
        note: str = typer.Option("", "--note", help="Source note stored in the manifest (where the data came from)."),
        audits: Optional[str] = typer.Option(None, "--audits",
                                             help="Comma-separated audits (default: integrity, duplicates, "
                                                  "sensitive-data, class-balance, outliers, label-noise)."),
        model: Optional[str] = typer.Option(None, "--model", help="Model spec: adds slice accuracy and calibration."),
        slices: Optional[list[str]] = typer.Option(None, "--slice", help="Column whose values are slices (repeat)."),
        features: Optional[str] = typer.Option(None, "--features",
                                               help="Comma-separated model input columns (default: numeric columns)."),
        max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Audit at most this many records."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of the randomised steps."),
        fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", "-f", help="text, json or sarif."),
        fail_on: str = typer.Option("high", "--fail-on",
                                    help="Exit 1 when a finding is at or above: critical, high, medium, low, info."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Write the reliability diagram (SVG) here "
                                                                 "(with --model)."),
    ) -> None:
        """Audit data before training: provenance (manifests), exact and near duplicates, train/test
        leaks, conflicting labels, class imbalance, label noise, outliers, sensitive values (cards,
        e-mails, phones, IBANs, national ids, secrets) and, with --model, accuracy per slice and
        calibration. Reads CSV and Parquet in chunks.

        Exit codes: 0 nothing at or above --fail-on, 1 a finding at or above it, 2 a usage error, a
        file that could not be (wholly) read, or a missing label column (the rest is still audited).
        """
        from bastion.audit.tabular import audit_table, sources_from
        from bastion.audit.tabular import write_manifest as save_manifest
        from bastion.core.results import Severity
        from bastion.core.run import RunContext
        from bastion.errors import UsageError

        threshold = Severity.parse(fail_on)
        for o in (output, write_manifest):
            if o is not None:
                _check_output(o)
        if slices and not model:
            raise UsageError("--slice needs --model (slices are evaluated with a model's predictions)")
        sources = sources_from(list(data or []), list(train or []), list(test or []))
        doc = None
        if manifest is not None:
            from bastion.audit.provenance import load_manifest

            doc = load_manifest(manifest)
        names = tuple(a.strip() for a in audits.split(",") if a.strip()) if audits else None
        kwargs: dict = {}
        if model:
            from bastion.audit.slices import model_hook
            from bastion.audit.tabular import DEFAULT_AUDITS
            from bastion.campaign.preflight import load_target

            if label is None:
                raise UsageError("--model needs --label (accuracy and calibration compare predictions with labels)")
            from bastion.audit.tabular import default_features

            cols = [c.strip() for c in features.split(",") if c.strip()] if features else default_features(sources, label)
            # evaluated, not attacked: ε has no meaning here, so the bounds only need to hold the data
            target = load_target(model, input_shape=(len(cols),), bounds=(-1e9, 1e9))
            kwargs = {"hooks": (model_hook(target, label, cols),),
                      "keep": tuple(slices or ()), "params": {"slices": {"slices": list(slices or ())}}}
            names = (*(names or DEFAULT_AUDITS), "slices")
        elif plot is not None:
            raise UsageError("--plot needs --model (the reliability diagram is the model's)")
        res = audit_table(sources, label=label, key=key, audits=names, manifest=doc, ctx=RunContext(seed=seed),
                          max_rows=max_rows, **kwargs)
        if plot is not None:
            _plot(res, plot)
        if write_manifest is not None:
            save_manifest(res.profile, write_manifest, note)
        scan = _scan_result(res, threshold)
        failed = any(f.severity.rank >= threshold.rank for f in res.check.findings)
        code = 2 if res.usage_problems else 1 if failed else 0
        if fmt is OutputFormat.text:
            console = Console(record=output is not None, width=120 if output else None)
            _print_text(console, res, threshold, failed, write_manifest)
            if output:
                from bastion.core.io import atomic_write_text

                atomic_write_text(output, console.export_text())
        else:
            out = scan.to_json_dict()
            if fmt is OutputFormat.sarif:
                from bastion.outputs.report.sarif import render_sarif

                out = render_sarif(scan)
            if output:
                from bastion.core.io import atomic_write_json

                atomic_write_json(output, out)
            else:
                typer.echo(json.dumps(out, indent=2))
        sys.exit(code)


def _scan_result(res, threshold):  # noqa: ANN001, ANN202 - TableAudit, Severity -> ScanResult
    import datetime as dt

    from bastion import __version__
    from bastion.core.results import ScanResult

    failed = any(f.severity.rank >= threshold.rank for f in res.check.findings)
    return ScanResult(tool={"name": "bastion", "version": __version__, "command": "audit-data"},
                      finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
                      verdict="fail" if failed or res.usage_problems else "pass", fail_on=threshold,
                      status="complete" if res.check.status == "complete" else "incomplete",
                      status_reason=res.check.reason,
                      data={"files": res.check.metrics.get("files", [])}, checks=[res.check],
                      summary=f"{res.profile.n} record(s) audited, {len(res.check.findings)} finding(s)")


def _print_text(console: Console, res, threshold, failed: bool, manifest_out: Path | None) -> None:  # noqa: ANN001
    from rich.text import Text

    check = res.check
    for f in check.findings:
        extra = []
        if f.metrics.get("examples"):
            extra.append("e.g. " + "; ".join(map(str, f.metrics["examples"][:3])))
        console.print(Text.assemble((f"{f.severity.value:<9}", _STYLE[f.severity.value]), f"{f.rule_id}  {f.title}",
                                    (f"  ({' | '.join(extra)})" if extra else "", "dim")), soft_wrap=True)
    for m in check.measurements:
        if m.name in ("accuracy", "worst_slice_accuracy", "ece") and not m.where:
            console.print(f"[dim]{m.name}: {m.value:.3f}[/]" if m.value is not None else f"{m.name}: not measured")
    for why in res.usage_problems:
        console.print(f"[bold red]error:[/] {escape(why)}")
    for audit, why in res.skipped.items():
        console.print(f"[yellow]skipped:[/] {audit}: {escape(why)}")
    if manifest_out is not None:
        console.print(f"manifest written to {escape(str(manifest_out))}")
    verdict = ("[bold red]FAIL[/]" if failed else "[bold yellow]INCOMPLETE[/]" if res.usage_problems
               else "[bold green]PASS[/]")
    console.print(f"{verdict} {res.profile.n} record(s) in {len(res.profile.sources)} file(s), "
                  f"{len(check.findings)} finding(s) (--fail-on {threshold.value}, {check.seconds:.2f} s)")


def _plot(res, path: Path) -> None:  # noqa: ANN001 - TableAudit
    """The reliability diagram as an SVG file (needs the reports extra: matplotlib)."""
    import base64

    from bastion.core.io import atomic_write_bytes
    from bastion.core.results import ReliabilityDiagram
    from bastion.outputs.report import plots

    series = [(f"model (ECE {a.ece:.3f})", a.confidence, a.accuracy) for a in res.check.artifacts
              if isinstance(a, ReliabilityDiagram) and a.confidence]
    if series:
        uri = plots.line_chart(series, xlabel="confidence", ylabel="accuracy", diagonal=True)
        atomic_write_bytes(path, base64.b64decode(uri.split(",", 1)[1]))
