"""``bastion certify``: certified accuracy of a model against a radius (randomized smoothing, IBP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bastion.cli.scan_cmds import _run_scan, console, out_console


def register(app: typer.Typer) -> None:
    """Add ``certify`` to the bastion app."""

    @app.command(epilog="Examples:\n\n  bastion certify --target demo:digits-cnn --data demo:digits --sigma 0.25 "
                        "--n 10000 --samples 100\n\n  bastion certify -t python:net.py:build -d npz:test.npz "
                        "--certifier ibp --eps 0.01")
    def certify(
        target: str = typer.Option(..., "--target", "-t", help="Model spec (a PyTorch model), e.g. demo:digits-cnn."),
        data: str = typer.Option(..., "--data", "-d", help="Data spec, e.g. demo:digits, npz:test.npz."),
        certifier: str = typer.Option("smoothing", "--certifier", "-c",
                                      help="smoothing (randomized smoothing, L2) or ibp (interval bounds, L∞)."),
        sigma: float | None = typer.Option(None, "--sigma", help="smoothing: noise σ > 0 (default 0.25)."),
        n0: int | None = typer.Option(None, "--n0", help="smoothing: samples that select the class (default 100)."),
        n: int | None = typer.Option(None, "--n", help="smoothing: samples that estimate it, >= n0 (default 10000)."),
        alpha: float | None = typer.Option(None, "--alpha", help="smoothing: failure probability in (0, 1) "
                                                                 "(default 0.001)."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="smoothing: noisy samples per forward pass."),
        jit: bool | None = typer.Option(None, "--jit/--no-jit", help="smoothing: run the model as a TorchScript "
                                        "trace optimised for inference (checked against the model), or never "
                                        "(default: auto, a plain PyTorch model on the CPU is traced when it can be)."),
        eps: float | None = typer.Option(None, "--eps", help="ibp: the L∞ ε to verify."),
        radius: list[float] = typer.Option([], "--radius", "-r", help="Radius of the certified-accuracy curve "
                                           "(repeatable; default 0, .25, .5, .75, 1 for smoothing, 0 and ε for ibp)."),
        samples: int = typer.Option(100, "--samples", min=1, help="Certify at most N inputs (a seeded subset)."),
        seed: int = typer.Option(0, "--seed", min=0, help="Random seed (noise draws, subset)."),
        out: Path = typer.Option(Path("bastion-report/certify"), "--out", "-o", help="Report directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the check's result as JSON (no progress)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or table; exit code only."),
    ) -> None:
        """Certify a model's predictions: the share of inputs classified correctly with a certified
        radius of at least r, for each r (a curve in the report), and how many were abstained on.

        Exit codes: 0 done, 2 usage error (a bad parameter: σ <= 0, n0 > n, α outside (0, 1)),
        3 runtime error, 130 interrupted.
        """
        from bastion.campaign.policy import load_policy
        from bastion.campaign.runner import exit_code
        from bastion.campaign.runner import scan as run_scan
        from bastion.certify.base import CERTIFIERS

        given = {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size, "eps": eps}
        params = {k: v for k, v in given.items() if v is not None}
        if jit is not None:
            params["jit"] = jit
        cls = CERTIFIERS.get_object(certifier)  # an unknown certifier: exit 2, named
        if cls.radii_param is not None and cls.radii_param not in params and radius:
            params[cls.radii_param] = radius  # ibp without --eps verifies at the --radius values
        cls(**params)  # a bad parameter: exit 2, named
        check: dict[str, Any] = {"name": "certify", "kind": "certify", "certifier": certifier, "samples": samples,
                                 "params": params}
        if radius:
            check["radii"] = radius
        elif eps is not None:
            check["radii"] = [0.0, eps]
        loaded = load_policy({"version": 1, "name": "bastion certify", "seed": seed, "target": {"model": target},
                              "data": {"source": data}, "checks": [check], "output": {"dir": str(out)}})
        result = _run_scan(run_scan, loaded, out, None, quiet or as_json)
        res = result.checks[0] if result.checks else None
        if as_json and res is not None:
            out_console.print_json(json.dumps(res.model_dump(mode="json", exclude={"artifacts"})))
        elif not quiet and res is not None and res.status == "complete":
            _print_table(res.metrics)
            console.print(f"Report: {out / 'report.html'}")
        raise typer.Exit(exit_code(result))


def _print_table(m: dict[str, Any]) -> None:
    norm = {"l2": "L2", "linf": "L∞"}.get(m["norm"], m["norm"])
    table = Table(title=f"bastion certify — {m['certifier']} on {m['rows']} inputs, {m['abstained']} abstained",
                  title_justify="left")
    table.add_column(f"{norm} radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for r, acc in zip(m["radii"], m["certified_accuracy"]):
        table.add_row(f"{r:g}", f"{acc:.1%}")
    out_console.print(table)
