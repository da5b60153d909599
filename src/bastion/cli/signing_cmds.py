"""CLI: ``bastion keygen``, ``bastion sign``, ``bastion verify`` and the ``bastion registry`` sub-app.

Exit codes: 0 intact / done, 1 verification failed or promotion refused, 2 usage error.
(Commands end with ``SystemExit`` rather than ``typer.Exit`` so the code survives the
non-standalone call in :func:`bastion.cli.main.main`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bastion.errors import UsageError

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

_IGNORE_HELP = "Extra ignore rule (fnmatch on a name, or on the relative path if it has '/'). Repeatable."


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _passphrase(env_name: str, *, required: bool) -> bytes | None:
    value = os.environ.get(env_name)
    if value:
        return value.encode("utf-8")
    if required:
        raise UsageError(f"environment variable {env_name} is not set or empty",
                         hint="export the passphrase in it (it is never read from the command line)")
    return None


def _show_ignores(rules: list[str], ignored: list[str], *, no_defaults: bool = False) -> None:
    label = "ignore rules" + (" (defaults disabled)" if no_defaults else "")
    console.print(f"[dim]{label}:[/] {escape(', '.join(rules)) if rules else '(none)'}")
    if ignored:
        shown = ", ".join(ignored[:10]) + (f", ... (+{len(ignored) - 10})" if len(ignored) > 10 else "")
        console.print(f"[dim]ignored paths:[/] {escape(shown)}")


# --------------------------------------------------------------------------- keygen / sign / verify


def keygen(
    out: Path = typer.Option(Path("bastion-signing"), "--out", "-o",
                             help="Prefix of the key files: PREFIX.key (private, 0600) and PREFIX.pub."),
    passphrase_env: str = typer.Option("BASTION_KEY_PASSPHRASE", "--passphrase-env",
                                       help="Environment variable holding a passphrase to encrypt the private key "
                                            "(unencrypted if it is unset)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing key files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
) -> None:
    """Make an Ed25519 key pair for signing model directories."""
    from bastion.supply.signing import generate_keypair

    pair = generate_keypair(out, passphrase=_passphrase(passphrase_env, required=False), overwrite=force)
    if as_json:
        _print_json({"private_key": str(pair.private_path), "public_key": str(pair.public_path),
                     "key_id": pair.key_id, "encrypted": pair.encrypted})
        return
    console.print(f"[green]wrote[/] {escape(str(pair.private_path))} (private, mode 0600"
                  f"{', encrypted' if pair.encrypted else ''}) and {escape(str(pair.public_path))}")
    console.print(f"key id: {pair.key_id}")
    if not pair.encrypted:
        console.print(f"[yellow]note:[/] the private key is not encrypted; set {passphrase_env} to encrypt it")


def sign(
    model_dir: Path = typer.Argument(..., help="Model directory to sign."),
    key: Path = typer.Option(..., "--key", "-k", help="Private key file (from 'bastion keygen')."),
    ignore: list[str] = typer.Option([], "--ignore", help=_IGNORE_HELP),
    no_default_ignores: bool = typer.Option(False, "--no-default-ignores",
                                            help="Do not skip .git, .hg, .svn, __pycache__, .DS_Store ..."),
    chunk_size: int = typer.Option(16 * 1024 * 1024, "--chunk-size",
                                   help="Bytes per chunk for files hashed in parallel chunks."),
    workers: int = typer.Option(0, "--workers", help="Hashing threads (0: one per CPU core)."),
    passphrase_env: str = typer.Option("BASTION_KEY_PASSPHRASE", "--passphrase-env",
                                       help="Environment variable holding the private key's passphrase."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
) -> None:
    """Hash every file of MODEL_DIR into a manifest and sign it (Ed25519)."""
    from bastion.supply.signing import sign_directory

    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    result = sign_directory(model_dir, key, passphrase=_passphrase(passphrase_env, required=False),
                            ignore=ignore, use_default_ignores=not no_default_ignores,
                            chunk_size=chunk_size, workers=workers or None)
    if as_json:
        _print_json(result.to_dict())
        return
    _show_ignores(result.ignore_rules, result.ignored, no_defaults=no_default_ignores)
    mb = result.bytes_hashed / 1e6
    console.print(f"[green]signed[/] {escape(str(result.root))}: {result.files} files, {result.symlinks} symlinks, "
                  f"{mb:.1f} MB in {result.seconds:.2f} s")
    console.print(f"manifest:  {escape(str(result.manifest_path))}")
    console.print(f"signature: {escape(str(result.signature_path))} (key {result.key_id})")
    console.print(f"content digest: {result.content_digest}")


def verify(
    model_dir: Path = typer.Argument(..., help="Signed model directory."),
    key: Path = typer.Option(..., "--key", "-k", help="Public key file (PREFIX.pub)."),
    ignore: list[str] = typer.Option([], "--ignore", help=_IGNORE_HELP + " Added to the manifest's rules."),
    workers: int = typer.Option(0, "--workers", help="Hashing threads (0: one per CPU core)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
) -> None:
    """Check MODEL_DIR against its signed manifest: exit 0 intact, 1 tampered or unsigned, 2 usage error."""
    from bastion.supply.signing import verify_directory

    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    report = verify_directory(model_dir, key, ignore=ignore, workers=workers or None)
    if as_json:
        _print_json(report.to_dict())
    else:
        _render_verify(report)
    if not report.ok:
        raise SystemExit(1)


def _render_verify(report: Any) -> None:
    _show_ignores(report.ignore_rules, report.ignored)
    sig_style = {"valid": "green", "invalid": "bold red", "missing": "bold red"}[report.signature]
    console.print(f"signature: [{sig_style}]{report.signature.upper()}[/] {escape(report.signature_detail)}")
    if report.manifest != "ok":
        console.print(f"manifest:  [bold red]{report.manifest.upper()}[/] {escape(report.manifest_detail)}")
        return
    rows = ([("added", p, "not in the manifest") for p in report.added]
            + [("removed", p, "in the manifest, missing on disk") for p in report.removed]
            + [("changed", c.path, c.reason) for c in report.changed]
            + [("unreadable", c.path, c.reason) for c in report.unreadable])
    if rows:
        table = Table(title=f"{len(rows)} difference(s) from the manifest")
        for col in ("status", "path", "detail"):
            table.add_column(col)
        colors = {"added": "yellow", "removed": "magenta", "changed": "red", "unreadable": "red"}
        for status, path, detail in rows:
            table.add_row(f"[{colors[status]}]{status}[/]", escape(path), escape(detail))
        console.print(table)
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(f"{verdict}: {report.files_checked} entries checked, {report.bytes_hashed / 1e6:.1f} MB hashed "
                  f"in {report.seconds:.2f} s; added {len(report.added)}, removed {len(report.removed)}, "
                  f"changed {len(report.changed)}, unreadable {len(report.unreadable)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the bastion app."""
    app.command("keygen")(keygen)
    app.command("sign")(sign)
    app.command("verify")(verify)
