"""``bastion scan``, ``bastion attack`` and ``bastion demo``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:  # pydantic models are imported only when a scan runs: `bastion inspect` starts fast
    from bastion.core.results import CheckResult, ScanResult

def _console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (CI logs, pipes) lines are never cut at
    80 columns: tables take the width their content needs."""
    import os

    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = 400
    return c


console = _console(stderr=True)
out_console = _console()

EXIT_OK, EXIT_FAIL, EXIT_RUNTIME = 0, 1, 3
SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan",
                  "info": "dim"}


class ProgressUI:
    """A rich progress display that checks can open bars on; silent when ``quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                                 transient=True, disable=quiet)

    def __enter__(self) -> ProgressUI:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self.progress.add_task(escape(description), total=total)
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            self.progress.remove_task(task)


def _print_check(res: CheckResult, quiet: bool) -> None:
    if quiet:
        return
    mark = {"complete": "[green]✓[/]", "incomplete": "[yellow]![/]", "error": "[red]✗[/]", "skipped": "[dim]-[/]"}
    extra = f" — {escape(res.reason)}" if res.reason else ""
    console.print(f"{mark.get(res.status, '?')} {escape(res.name)} ({res.kind}) {res.seconds:.1f}s{extra}")


def print_summary(result: ScanResult, out_dir: Path | None) -> None:
    """Human summary on stdout: gates, findings, verdict, where the report is."""
    if result.gates:
        table = Table(title=f"Gates — {escape(str(result.target.get('policy', '')))}", title_justify="left")
        for col in ("gate", "measured", "result"):
            table.add_column(col)
        for g in result.gates:
            value = "—" if g.value is None else f"{g.value:.4g}"
            table.add_row(escape(g.expression), value, "[green]pass[/]" if g.passed else f"[red]FAIL[/] "
                          f"{escape(g.reason or '')}")
        out_console.print(table)
    if result.findings:
        table = Table(title="Findings (worst first)", title_justify="left")
        for col in ("severity", "finding", "ATLAS", "OWASP"):
            table.add_column(col)
        for f in result.findings[:15]:
            table.add_row(f"[{SEVERITY_STYLE[f.severity.value]}]{f.severity.value}[/]", escape(f.title),
                          ", ".join(f.atlas), ", ".join(f.owasp))
        out_console.print(table)
    verdict = "[bold green]PASS[/]" if result.verdict == "pass" else "[bold red]FAIL[/]"
    status = "" if result.status == "complete" else f" [yellow](incomplete: {escape(result.status_reason or '')})[/]"
    out_console.print(f"Verdict: {verdict}{status}")
    if out_dir is not None:
        out_console.print(f"Report: {out_dir / 'report.html'}")


def register(app: typer.Typer) -> None:
    """Add scan, attack and demo to the bastion app."""

    @app.command(epilog="Examples:\n\n  bastion scan bastion.yaml --out reports/  (exit 1 when a gate fails)\n\n"
                        "  bastion scan bastion.yaml --format sarif > scan.sarif\n\n"
                        "  BASTION_FAIL_ON=high bastion scan bastion.yaml")
    def scan(
        policy: Path = typer.Argument(..., help="Policy file (YAML).", show_default=False),
        out: Path | None = typer.Option(None, "--out", "-o", help="Report directory (default: the policy's output.dir)."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Use at most N samples of the data (seeded)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary; exit code only."),
        fmt: str = typer.Option("text", "--format", "-f", envvar="BASTION_FORMAT",
                                help="What to print on stdout: text (a summary), json (report.json), sarif or junit."),
        fail_on: str | None = typer.Option(None, "--fail-on", envvar="BASTION_FAIL_ON",
                                           help="Also fail on a finding at least this severe (critical, high, medium, "
                                                "low, info); overrides the policy's fail_on."),
        as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
        workers: int | None = typer.Option(None, "--workers", min=1,
                                           help="Worker processes for checks that split into units "
                                                "(default: the CPU count; 1 runs them in this process)."),
    ) -> None:
        """Run the campaign a policy file describes and write the reports.

        Exit codes: 0 all gates pass, 1 a gate failed (or a check did not finish), 2 usage or policy
        error, 3 runtime error (a check errored: the model or an endpoint failed), 130 interrupted
        (143 on SIGTERM); the reports are always finished and say what happened.
        """
        from bastion.campaign.policy import load_policy
        from bastion.campaign.runner import exit_code
        from bastion.campaign.runner import scan as run_scan
        from bastion.core.results import Severity

        fmt = "json" if as_json else _check_format(fmt)
        loaded = load_policy(policy)
        if fail_on is not None:
            loaded.policy.fail_on = Severity.parse(fail_on)
        out_dir = out if out is not None else Path(loaded.policy.output.dir)
        result = _run_scan(run_scan, loaded, out_dir, limit, quiet or fmt != "text", workers)
        _emit(result, out_dir, quiet, fmt)
        code = exit_code(result)
        if code == EXIT_RUNTIME:
            errored = [c for c in result.checks if c.status == "error"]
            console.print(f"[bold red]error:[/] {len(errored)} check(s) could not run to the end: "
                          + "; ".join(escape(f"{c.name}: {c.reason}") for c in errored))
        raise typer.Exit(code)

    @app.command(epilog="Examples:\n\n  bastion attack --target demo:digits-cnn --data demo:digits --attack pgd "
                        "--eps 0.05 --eps 0.1\n\n  bastion attack --target onnx:model.onnx --data npz:test.npz "
                        "--attack fgsm --eps 0.03 --json\n\n  bastion attack --target python:m.py:build "
                        "--data images:pets/ --classes cat,dog --attack pgd")
    def attack(
        target: str = typer.Option(..., "--target", "-t", help="Model spec, e.g. demo:digits-cnn, onnx:m.onnx."),
        data: str = typer.Option(..., "--data", "-d", help="Data spec, e.g. demo:digits, npz:test.npz."),
        attack_name: str = typer.Option("pgd", "--attack", "-a", help="Attack name (see `bastion attacks`)."),
        eps: list[float] = typer.Option([0.1], "--eps", "-e", help="ε (repeat for a robustness curve)."),
        norm: str = typer.Option("linf", "--norm", help="linf or l2."),
        param: list[str] = typer.Option([], "--param", "-p", help="Attack parameter KEY=VALUE (repeatable)."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Use at most N samples (seeded)."),
        seed: int = typer.Option(0, "--seed", min=0, help="Random seed (a non-negative integer)."),
        label: str | None = typer.Option(None, "--label", help="Label column of a CSV dataset."),
        classes: str | None = typer.Option(None, "--classes", help="The model's class names in output order, "
                                           "comma-separated (e.g. cat,dog), when the data's labels are names."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Run one attack against one model, ad hoc, and print the metrics.

        Exit codes: 0 done, 2 usage error, 3 runtime error, 130 interrupted (partial results printed,
        marked incomplete).
        """
        from bastion.attacks import get_attack, robustness_curve
        from bastion.campaign.preflight import scan_model_file
        from bastion.core.data import align_labels
        from bastion.core.loader import load_data, load_target

        params = _parse_params(param)
        for e in eps:
            check_cli_eps(e)
        _check_label_option(data, label)
        class_names = [c.strip() for c in classes.split(",")] if classes else None
        ds = load_data(data, limit=limit, seed=seed, label=label)
        scan_model_file(target)  # never open a model file that could run code
        tgt = load_target(target, data=ds, classes=class_names)
        y = align_labels(ds, tgt)
        atk = get_attack(attack_name, eps=eps[0], norm=norm, seed=seed, **params)
        with ProgressUI(quiet or as_json) as ui, ui.bar(f"{atk.name}", len(y) * len(eps)) as advance:
            results = ([atk.run(tgt, ds.x, y, progress=advance)] if atk.minimal
                       else robustness_curve(atk, tgt, ds.x, y, eps, progress=advance))
        rows = [_attack_row(r) for r in results]
        not_run = [] if atk.minimal else sorted(eps)[len(results):]
        stopped = next((r for r in results if not r.complete), None)
        if as_json:
            doc = {"target": tgt.describe(), "data": ds.describe(), "status": "incomplete" if stopped else "complete",
                   "results": rows, "not_run": [{"eps": e} for e in not_run]}
            out_console.print_json(json.dumps(doc, default=str))
        else:
            _print_attack_table(atk, tgt, len(y), norm, rows, not_run)
        if stopped is not None:
            console.print(f"[yellow]incomplete[/]: {escape(stopped.reason or 'stopped')}"
                          + (f"; not run: ε = {', '.join(f'{e:g}' for e in not_run)}" if not_run else ""))
            if stopped.interrupted:
                from bastion.cli.signals import interrupt_exit_code

                raise typer.Exit(interrupt_exit_code())
            from bastion.campaign.checks.base import stopped_by_failure

            if stopped_by_failure(stopped):
                raise typer.Exit(EXIT_RUNTIME)

    @app.command("attacks", epilog="Example: bastion attacks --json")
    def list_attacks(
        as_json: bool = typer.Option(False, "--json", help="Print the attacks as JSON."),
    ) -> None:
        """List the registered attacks (bastion's own and plug-ins'); an attack whose optional
        library is missing is listed with the extra to install."""
        rows = attack_rows()
        if as_json:
            out_console.print_json(json.dumps(rows))
            return
        table = Table(title="Attacks", title_justify="left")
        for col in ("name", "family", "gradients", "description"):
            table.add_column(col)
        for r in rows:
            grads = "—" if r["needs_gradients"] is None else ("yes" if r["needs_gradients"] else "no")
            desc = escape(r["description"]) if r["available"] else f"[dim]{escape(r['description'])}[/]"
            table.add_row(escape(r["name"]), r["family"] or "—", grads, desc)
        out_console.print(table)

    @app.command(epilog="Example: bastion demo --out demo-report/  (or --json for a machine-readable summary)")
    def demo(
        out: Path = typer.Option(Path("bastion-demo"), "--out", "-o", help="Directory for the demo reports."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (no progress)."),
    ) -> None:
        """Train (first run only, then cached) the demo models, scan them with the default policies,
        and write the reports: a first look at what bastion finds.

        Exit code 0 whatever the verdicts (the demo models are meant to fail some gates).
        """
        from bastion.core.extras import require_all

        require_all("numpy", "sklearn", "skops", "torch", "jinja2", "matplotlib")  # one message for all
        from bastion.campaign import DEMO_POLICIES, packaged_policy
        from bastion.campaign.policy import load_policy
        from bastion.campaign.runner import scan as run_scan

        quiet = quiet or as_json
        t0 = time.perf_counter()
        rows = []
        for name in DEMO_POLICIES:
            loaded = load_policy(packaged_policy(name))
            model = loaded.policy.target.model if loaded.policy.target else name
            if not quiet:
                console.print(f"[bold]{escape(model)}[/] — {escape(loaded.policy.description)}")
            out_dir = out / name.removeprefix("demo-")
            rows.append(_demo_row(model, _run_scan(run_scan, loaded, out_dir, None, quiet), out_dir))
        if as_json:
            out_console.print_json(json.dumps({"models": rows, "seconds": round(time.perf_counter() - t0, 2)}))
            return
        summary = Table(title="bastion demo", title_justify="left")
        for col in ("model", "clean acc", "worst robust acc", "membership leak", "gates", "verdict", "report"):
            summary.add_column(col)
        for r in rows:
            leak = "—" if r["membership_auc"] is None else (
                f"AUC {r['membership_auc']:.2f}, TPR {_pct(r['tpr_at_1pct_fpr'])} at 1% FPR")
            summary.add_row(r["model"], _pct(r["clean_accuracy"]), _pct(r["worst_robust_accuracy"]), leak,
                            f"{r['gates_passed']}/{r['gates']}",
                            "[green]pass[/]" if r["verdict"] == "pass" else "[red]fail[/]", r["report"])
        out_console.print(summary)
        out_console.print(f"Done in {time.perf_counter() - t0:.1f}s. Open the reports in a browser.")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def _demo_row(model: str, result: ScanResult, out_dir: Path) -> dict[str, Any]:
    """The demo's summary of one scan (shared by the table and --json)."""
    accs = [v for c in result.checks for v in c.values("robust_accuracy")]
    clean = next((v for c in result.checks for v in c.values("clean_accuracy")), None)
    aucs = [v for c in result.checks if c.kind == "membership" for v in c.values("membership_auc")]
    tprs = [v for c in result.checks if c.kind == "membership" for v in c.values("tpr_at_fpr", fpr=0.01)]
    return {"model": model, "clean_accuracy": clean, "worst_robust_accuracy": min(accs) if accs else None,
            "membership_auc": max(aucs) if aucs else None, "tpr_at_1pct_fpr": max(tprs) if tprs else None,
            "gates_passed": sum(g.passed for g in result.gates), "gates": len(result.gates),
            "verdict": result.verdict, "status": result.status, "report": str(out_dir / "report.html")}


def attack_rows() -> list[dict[str, Any]]:
    """One row per registered attack: name, family, gradients, description, origin, and whether
    it can run here (else the description is the install line of its missing extra)."""
    from bastion.attacks import available_attacks
    from bastion.errors import MissingExtraError

    registry = available_attacks()
    rows = []
    for name in registry:
        row: dict[str, Any] = {"name": name, "origin": registry.origin(name), "available": True}
        try:
            cls = registry.get_object(name)
        except MissingExtraError as exc:
            row.update(available=False, family=None, needs_gradients=None,
                       description=f"not installed: {exc.hint}" if exc.hint else str(exc))
        else:
            doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
            row.update(family=cls.family, needs_gradients=bool(cls.needs_gradients), description=doc)
        rows.append(row)
    return rows


def check_cli_eps(eps: float) -> float:
    """ε for the command line: finite, >= 0, and at most 1e6 (ε is in each feature's own scale,
    so a larger value only overflows the arithmetic)."""
    from bastion.errors import UsageError

    if not eps >= 0:  # NaN too
        raise UsageError(f"--eps must be a number >= 0, got {eps}")
    if eps > 1e6:
        raise UsageError(f"--eps {eps:g} is far beyond any input range (ε is measured in each feature's own "
                         "scale: 1 for images in [0, 1], one standard deviation for tables)",
                         hint="use a value like 0.03 or 0.1")
    return eps


def _check_label_option(data: str, label: str | None) -> None:
    """``--label`` names a CSV column: refuse it for other data instead of ignoring it."""
    from bastion.core.loader import data_scheme
    from bastion.errors import UsageError

    if label is not None and data_scheme(data) != "csv":
        raise UsageError(f"--label names the label column of a CSV file, but '{data}' is not CSV data",
                         hint="drop --label, or give csv:FILE.csv")


def _attack_row(r: Any) -> dict[str, Any]:
    """One result row; an attack that did not finish has no robust accuracy (the inputs it never
    reached would count as robust), only the partial figure, marked."""
    m = dict(r.metrics())
    if not r.complete:
        m["robust_accuracy_partial"] = m.pop("robust_accuracy")
        m["robust_accuracy"] = None
    return m


def _print_attack_table(atk: Any, tgt: Any, n: int, norm: str, rows: list[dict[str, Any]],
                        not_run: list[float]) -> None:
    table = Table(title=f"{atk!r} on {escape(tgt.name)} ({n} inputs)", title_justify="left")
    for col in ("ε", "clean acc", "robust acc", "success rate", f"median {norm}", "queries", "seconds"):
        table.add_column(col, justify="right")
    for m in rows:
        med = m["norms"][norm]["median"]
        robust = (f"{m['robust_accuracy']:.3f}" if m["robust_accuracy"] is not None
                  else "[yellow]incomplete[/]")
        table.add_row("min" if m["eps"] is None else f"{m['eps']:g}", f"{m['clean_accuracy']:.3f}", robust,
                      "—" if m["success_rate"] is None else f"{m['success_rate']:.3f}",
                      "—" if med is None else f"{med:.4g}", str(m["queries"]), f"{m['seconds']:.2f}")
    for e in not_run:
        table.add_row(f"{e:g}", "—", "[yellow]not run[/]", "—", "—", "—", "—")
    out_console.print(table)


def _run_scan(run_scan: Any, loaded: Any, out_dir: Path, limit: int | None, quiet: bool,
              workers: int | None = None) -> ScanResult:
    from bastion.campaign.runner import ScanInterrupted
    from bastion.cli.signals import interrupt_exit_code

    with ProgressUI(quiet) as ui:
        try:
            return run_scan(loaded, out_dir=out_dir, progress=ui.bar, limit=limit,
                            on_check=lambda r: _print_check(r, quiet), workers=workers)
        except ScanInterrupted as stop:
            done = len(stop.result.checks) if stop.result else 0
            where = (f"report (status: incomplete, {done} of {len(loaded.checks)} check(s) done) in {stop.report_dir}"
                     if stop.report_dir else "no report written")
            console.print(f"[yellow]interrupted {escape(stop.stage)}[/]: {escape(where)}")
            raise typer.Exit(interrupt_exit_code()) from None


STDOUT_FORMATS = ("text", "json", "sarif", "junit")


def _check_format(fmt: str) -> str:
    from bastion.errors import UsageError

    if fmt.lower() not in STDOUT_FORMATS:
        raise UsageError(f"--format (or BASTION_FORMAT) must be one of {', '.join(STDOUT_FORMATS)}, got '{fmt}'")
    return fmt.lower()


def _emit(result: ScanResult, out_dir: Path, quiet: bool, fmt: str) -> None:
    """The summary, or one report format as plain text on stdout (no colour, no wrapping)."""
    import sys

    if fmt == "json":
        sys.stdout.write(json.dumps(result.to_json_dict(), indent=2, default=str) + "\n")
    elif fmt == "sarif":
        from bastion.outputs.report.sarif import render_sarif

        sys.stdout.write(json.dumps(render_sarif(result), indent=2) + "\n")
    elif fmt == "junit":
        from bastion.outputs.report.junit import render_junit

        sys.stdout.write(render_junit(result).decode("utf-8") + "\n")
    elif not quiet:
        print_summary(result, out_dir)


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    from bastion.errors import UsageError

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects KEY=VALUE, got '{item}'")
        params[key.strip()] = yaml.safe_load(value)
    return params
