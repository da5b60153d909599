"""``bastion harden``: train a hardened copy of a PyTorch model, report before and after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from bastion.cli.scan_cmds import ProgressUI, console, out_console

if TYPE_CHECKING:
    from bastion.campaign.harden import EpochLog, HardenResult


def register(app: typer.Typer) -> None:
    """Add ``harden`` to the bastion app."""

    @app.command(epilog="Examples:\n\n  bastion harden harden.yaml --out hardened/\n\n"
                        "  bastion harden harden.yaml --method trades --epochs 20\n\n"
                        "  bastion harden harden.yaml --dp --epsilon 3 --delta 1e-5")
    def harden(
        policy: Path = typer.Argument(..., help="Policy file (version 2) with a 'harden' section."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Directory for the weights and the reports "
                                                                  "(default: the policy's output.dir)."),
        method: str | None = typer.Option(None, "--method", "-m", help="Training defense: pgd-at, trades, "
                                                                       "fast-fgsm, gaussian-noise, dp-sgd "
                                                                       "(default: harden.method)."),
        epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default: harden.epochs)."),
        dp: bool = typer.Option(False, "--dp", help="Train with DP-SGD (method dp-sgd; needs bastion[dp])."),
        epsilon: float | None = typer.Option(None, "--epsilon", help="DP-SGD: target ε of the run (> 0)."),
        delta: float | None = typer.Option(None, "--delta", help="DP-SGD: target δ (0 < δ < 1/n)."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Attack at most N eval samples (seeded)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines."),
    ) -> None:
        """Train a hardened copy of the policy's PyTorch model (adversarial training: pgd-at,
        trades or fast-fgsm; differentially private training: --dp), attack it and the original with the full `auto` ensemble, and write
        the new weights (safetensors) and a before/after report.

        Exit codes: 0 done, 2 usage or policy error (nothing written), 3 runtime error, 130
        interrupted (nothing written).
        """
        from bastion.campaign.harden import harden as run_harden
        from bastion.campaign.policy import load_policy
        from bastion.cli.signals import interrupt_exit_code

        quiet = quiet or as_json
        from bastion.errors import UsageError

        loaded = load_policy(policy)
        if dp and method not in (None, "dp-sgd"):
            raise UsageError(f"--dp trains with dp-sgd; it cannot be combined with --method {method}")
        method = "dp-sgd" if dp else method
        dp_params = {k: v for k, v in (("epsilon", epsilon), ("delta", delta)) if v is not None}
        if dp_params and (method or loaded.policy.harden and loaded.policy.harden.method) != "dp-sgd":
            raise UsageError(f"--{next(iter(dp_params))} is a DP-SGD setting: add --dp (or harden.method: dp-sgd)")
        out_dir = out if out is not None else Path(loaded.policy.output.dir)
        with ProgressUI(quiet) as ui:
            try:
                result = run_harden(loaded, out_dir=out_dir, method=method, epochs=epochs, limit=limit,
                                    progress=ui.bar, on_epoch=None if quiet else _print_epoch,
                                    params=dp_params or None)
            except KeyboardInterrupt:
                console.print("[yellow]interrupted[/]: nothing written (no weights, no report)")
                raise typer.Exit(interrupt_exit_code()) from None
        if as_json:
            doc = result.model_dump(mode="json", exclude={"report"})
            doc["report"] = str(out_dir / "report.json")
            out_console.print_json(json.dumps(doc))
        elif not quiet:
            _print_summary(result, out_dir)
        failed = [c for c in result.report.checks if c.status == "error"]
        if failed:
            console.print("[bold red]error:[/] " + "; ".join(escape(f"{c.name}: {c.reason}") for c in failed))
            raise typer.Exit(3)


def _print_epoch(e: EpochLog) -> None:
    robust = "" if e.robust_accuracy is None else f"PGD {e.robust_accuracy:.3f}  "
    eps = "" if e.eps is None else f"ε {e.eps:.4g}  "
    console.print(f"epoch {e.epoch:>3}  {eps}held-out clean {e.clean_accuracy:.3f}  {robust}{e.seconds:.1f}s")


def _print_summary(result: HardenResult, out_dir: Path) -> None:
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    if result.stopped:
        console.print(f"[yellow]stopped early[/]: {escape(result.stopped)}")
    threat = f"ε = {result.eps:g} ({result.norm})" if result.eps is not None else "no evasion ε"
    table = Table(title=f"bastion harden — {result.method}, {threat}", title_justify="left")
    for col in ("model", "clean acc", "robust acc (auto)", "seconds"):
        table.add_column(col, justify="right")
    for name, f in (("before", result.before), ("after", result.after)):
        table.add_row(name, _pct(f.clean_accuracy), _pct(f.robust_accuracy) if f.status == "complete" else
                      f"[yellow]{f.status}[/]", f"{f.seconds:.1f}")
    out_console.print(table)
    if result.privacy is not None:
        p = result.privacy
        out_console.print(f"DP-SGD: ε = {p['epsilon']:.3g} spent at δ = {p['delta']:g} ({p['accountant']} accountant; "
                          f"noise multiplier {p['noise_multiplier']:.3g}, clipping norm {p['max_grad_norm']:g}, "
                          f"{p['steps']} steps)")
    if result.membership:
        mi = Table(title="membership inference (before -> after)", title_justify="left")
        for col in ("attack", "AUC", "TPR @ 1 % FPR", "members", "non-members"):
            mi.add_column(col, justify="right")
        for m in result.membership:
            mi.add_row(m.attack, f"{_num(m.auc_before)} -> {_num(m.auc_after)}",
                       f"{_pct(m.tpr_at_1pct_fpr_before)} -> {_pct(m.tpr_at_1pct_fpr_after)}",
                       f"{m.members_before} -> {m.members_after}", str(m.non_members))
        out_console.print(mi)
    out_console.print(f"Trained {len(result.epochs)} epoch(s) in {result.train_seconds:.1f}s. "
                      f"Weights: {result.weights}. Report: {out_dir / 'report.html'}")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"
