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


class _HashProgress:
    """A rich progress bar on stderr (only on a terminal) fed by ``progress(advance, total)``."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self._progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), console=err_console, transient=True,
                                  disable=not err_console.is_terminal)
        self._task = self._progress.add_task(label, total=None)

    def __enter__(self) -> _HashProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, advance: int, total: int) -> None:
        self._progress.update(self._task, advance=advance, total=total)


# --------------------------------------------------------------------------- keygen / sign / verify


def keygen(
    out: Path = typer.Option(Path("bastion-signing"), "--out", "-o",
                             help="Prefix of the key files: PREFIX.key (private, 0600) and PREFIX.pub."),
    passphrase_env: str = typer.Option("BASTION_KEY_PASSPHRASE", "--passphrase-env",
                                       help="Environment variable holding a passphrase to encrypt the private key "
                                            "(unencrypted if it is unset)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing key files."),
    algorithm: str = typer.Option("ed25519", "--algorithm",
                                  help="ed25519 (bastion manifests) or ecdsa-p256 / ecdsa-p384 "
                                       "(OpenSSF model-signing bundles: sign --format oms)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
) -> None:
    """Make a key pair for signing model directories (Ed25519, or ECDSA for OMS bundles)."""
    from bastion.supply.signing import generate_keypair

    pair = generate_keypair(out, passphrase=_passphrase(passphrase_env, required=False), overwrite=force,
                            algorithm=algorithm)
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
    fmt: str = typer.Option("bastion", "--format",
                            help="bastion: Ed25519-signed bastion-manifest.json; oms: an OpenSSF model-signing "
                                 "bundle (model.sig, ECDSA key) that the model_signing tools verify."),
    signature: Path | None = typer.Option(None, "--signature",
                                          help="--format oms: where to write the bundle (default MODEL_DIR/model.sig)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
) -> None:
    """Hash every file of MODEL_DIR and sign it: a bastion manifest (Ed25519) or an OMS bundle (ECDSA)."""
    from bastion.supply.signing import sign_directory

    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if fmt not in ("bastion", "oms"):
        raise UsageError(f"--format must be 'bastion' or 'oms', got {fmt!r}")
    if fmt == "oms":
        unused = [opt for opt, used in (("--no-default-ignores", no_default_ignores),
                                        ("--chunk-size", chunk_size != 16 * 1024 * 1024)) if used]
        if unused:
            raise UsageError(f"{', '.join(unused)} is for bastion manifests, not --format oms",
                             hint="OMS leaves out git metadata and the bundle itself; add paths with --ignore")
        _sign_oms(model_dir, key, ignore, signature, passphrase_env, workers, as_json)
        return
    if signature is not None:
        raise UsageError("--signature is for --format oms; a bastion manifest is always written into MODEL_DIR")
    with _HashProgress("hashing") as progress:
        result = sign_directory(model_dir, key, passphrase=_passphrase(passphrase_env, required=False),
                                ignore=ignore, use_default_ignores=not no_default_ignores,
                                chunk_size=chunk_size, workers=workers or None, progress=progress)
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


def _sign_oms(model_dir: Path, key: Path, ignore: list[str], signature: Path | None, passphrase_env: str,
              workers: int, as_json: bool) -> None:
    from bastion.supply.oms import sign_oms

    result = sign_oms(model_dir, key, passphrase=_passphrase(passphrase_env, required=False), ignore=ignore,
                      signature_path=signature, workers=workers or None)
    if as_json:
        _print_json(result.to_dict())
        return
    console.print(f"[green]signed[/] {escape(str(result.root))} (OpenSSF model signing): {result.files} files, "
                  f"{result.bytes_hashed / 1e6:.1f} MB in {result.seconds:.2f} s")
    console.print(f"ignored paths: {escape(', '.join(result.ignore_paths))}")
    console.print(f"signature: {escape(str(result.signature_path))} (key {result.key_id})")
    console.print(f"subject digest: {result.subject_digest}")


def verify(
    model_dir: Path = typer.Argument(..., help="Signed model directory."),
    key: Path = typer.Option(..., "--key", "-k", help="Public key file (PREFIX.pub)."),
    ignore: list[str] = typer.Option([], "--ignore", help=_IGNORE_HELP + " Added to the manifest's rules."),
    workers: int = typer.Option(0, "--workers", help="Hashing threads (0: one per CPU core)."),
    fmt: str = typer.Option("auto", "--format",
                            help="auto (from the key: Ed25519 -> bastion manifest, ECDSA -> OMS bundle), "
                                 "bastion or oms."),
    signature: Path | None = typer.Option(None, "--signature",
                                          help="--format oms: the bundle to check (default MODEL_DIR/model.sig)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
) -> None:
    """Check MODEL_DIR against its signature: exit 0 intact, 1 tampered or unsigned, 2 usage error."""
    from bastion.supply.signing import public_key_kind, verify_directory

    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if fmt not in ("auto", "bastion", "oms"):
        raise UsageError(f"--format must be 'auto', 'bastion' or 'oms', got {fmt!r}")
    if fmt == "auto":
        fmt = "oms" if public_key_kind(key) == "ecdsa" else "bastion"
    if fmt == "oms":
        from bastion.supply.oms import verify_oms

        if ignore:
            raise UsageError("--ignore is not used with --format oms: the signed bundle lists its ignore paths")
        report = verify_oms(model_dir, key, signature_path=signature, workers=workers or None)
    else:
        if signature is not None:
            raise UsageError("--signature is for --format oms; a bastion manifest is read from MODEL_DIR")
        with _HashProgress("verifying") as progress:
            report = verify_directory(model_dir, key, ignore=ignore, workers=workers or None, progress=progress)
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


# --------------------------------------------------------------------------- registry

registry_app = typer.Typer(
    name="registry",
    help="Versions of models with provenance, checks, a deployment pointer and rollback.\n\n"
         "The database is SQLite under the user data dir unless --db or $BASTION_REGISTRY_URL "
         "gives another SQLAlchemy URL.",
    no_args_is_help=True,
)

_DB = typer.Option(None, "--db", help="SQLAlchemy database URL (default: $BASTION_REGISTRY_URL or "
                                      "SQLite in the user data dir).", show_default=False)
_JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _registry(db: str | None) -> Any:
    from bastion.supply.registry import Registry

    return Registry(db)


def _status_style(value: str | None) -> str:
    colors = {"valid": "green", "pass": "green", "invalid": "red", "tampered": "red", "fail": "red",
              "error": "red", "missing": "red", "unsigned": "yellow", "unverified": "yellow",
              "not-scanned": "yellow"}
    v = value or "-"
    return f"[{colors.get(v, 'white')}]{escape(v)}[/]"


def _versions_table(title: str, versions: list[Any]) -> Table:
    table = Table(title=title)
    table.add_column("", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("digest", no_wrap=True)
    table.add_column("signature", no_wrap=True)
    table.add_column("scan", no_wrap=True)
    table.add_column("source", overflow="fold")
    table.add_column("code rev", overflow="fold")
    table.add_column("added", no_wrap=True)
    for v in versions:
        table.add_row("[bold green]*[/]" if v.deployed else "", escape(v.version),
                      v.content_digest.split(":")[-1][:12],
                      _status_style(v.signature_status),
                      _status_style(v.scan_verdict) + (f" ({v.scan_worst})" if v.scan_worst else ""),
                      escape(v.source or "-"), escape((v.code_revision or "-")[:12]), v.created_at[:10])
    return table


def _version_detail(v: Any) -> None:
    console.print(f"[bold]{escape(v.model)} {escape(v.version)}[/]" + (" [green](deployed)[/]" if v.deployed else ""))
    rows = [("path", v.path), ("content digest", v.content_digest),
            ("signature", f"{v.signature_status} {v.signature_detail}".strip()), ("key id", v.key_id or "-"),
            ("scan", f"{v.scan_verdict} ({v.scan_findings} finding(s), worst {v.scan_worst or '-'}): {v.scan_detail}"),
            ("last checked", v.checked_at), ("source", v.source or "-"), ("dataset hash", v.dataset_hash or "-"),
            ("code revision", v.code_revision or "-"), ("notes", v.notes or "-"), ("added", v.created_at)]
    table = Table(show_header=False, box=None)
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    for k, val in rows:
        table.add_row(k, escape(str(val)))
    console.print(table)


@registry_app.command("add", epilog="Example: bastion registry add fraud-model models/v3/ --key team.pub --source s3://bucket/v3 --code-revision 1a2b3c")
def registry_add(
    name: str = typer.Argument(..., help="Model name (created on first use)."),
    model_dir: Path = typer.Argument(..., help="Directory holding this version's files."),
    version: str | None = typer.Option(None, "--version", help="Version label (default: v<N>)."),
    key: Path | None = typer.Option(None, "--key", "-k", help="Public key to verify the signature with; "
                                                              "stored and used again at promote time."),
    source: str | None = typer.Option(None, "--source", help="Where the files came from (URL, hub id, path)."),
    dataset_hash: str | None = typer.Option(None, "--dataset-hash", help="Hash of the training data manifest."),
    code_revision: str | None = typer.Option(None, "--code-revision", help="Training code revision (git sha)."),
    notes: str | None = typer.Option(None, "--notes", help="Free-form notes."),
    db: str | None = _DB,
    as_json: bool = _JSON,
) -> None:
    """Register a new version of a model: hash it, verify its signature, scan it, record provenance."""
    info = _registry(db).add(name, model_dir, version=version, key=key, source=source, dataset_hash=dataset_hash,
                             code_revision=code_revision, notes=notes)
    if as_json:
        _print_json(info.to_dict())
        return
    console.print(f"[green]registered[/] {escape(info.model)} {escape(info.version)}")
    _version_detail(info)


@registry_app.command("list", epilog="Example: bastion registry list --json")
def registry_list(db: str | None = _DB, as_json: bool = _JSON) -> None:
    """List the models in the registry with their deployed and latest versions."""
    models = _registry(db).list_models()
    if as_json:
        _print_json([m.to_dict() for m in models])
        return
    if not models:
        console.print("the registry is empty; add a version with 'bastion registry add NAME DIR'")
        return
    table = Table(title="models")
    for col in ("name", "versions", "deployed", "latest", "created"):
        table.add_column(col)
    for m in models:
        table.add_row(escape(m.name), str(m.versions), escape(m.deployed or "-"), escape(m.latest or "-"),
                      m.created_at[:19])
    console.print(table)


@registry_app.command("show", epilog="Example: bastion registry show fraud-model v1")
def registry_show(
    name: str = typer.Argument(..., help="Model name."),
    version: str | None = typer.Argument(None, help="One version to show in full."),
    db: str | None = _DB,
    as_json: bool = _JSON,
) -> None:
    """Show a model's versions, deployment and history, or one version in full."""
    reg = _registry(db)
    if version is not None:
        info = reg.get(name, version)
        if as_json:
            _print_json(info.to_dict())
        else:
            _version_detail(info)
        return
    versions, history = reg.versions(name), reg.history(name)
    if as_json:
        deployed = next((v.version for v in versions if v.deployed), None)
        _print_json({"model": name, "deployed": deployed, "versions": [v.to_dict() for v in versions],
                     "history": [e.to_dict() for e in history]})
        return
    console.print(_versions_table(f"{name}: versions (* deployed)", versions))
    table = Table(title="history")
    for col in ("at", "action", "version", "detail"):
        table.add_column(col, overflow="fold")
    for e in history[-20:]:
        table.add_row(e.at[:19], escape(e.action), escape(e.version or "-"), escape(e.detail))
    console.print(table)


def _refusal(exc: Exception, as_json: bool) -> None:
    if as_json:
        _print_json({"ok": False, "error": str(exc)})
        raise SystemExit(1)
    raise exc


@registry_app.command("promote", epilog="Example: bastion registry promote fraud-model v1 --key team.pub")
def registry_promote(
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Version to deploy."),
    key: Path | None = typer.Option(None, "--key", "-k", help="Public key (default: the one stored at add)."),
    db: str | None = _DB,
    as_json: bool = _JSON,
) -> None:
    """Deploy VERSION after re-verifying its signature and re-scanning it; exit 1 if refused."""
    from bastion.supply.registry import PromotionRefused

    try:
        result = _registry(db).promote(name, version, key=key)
    except PromotionRefused as exc:
        _refusal(exc, as_json)
        return
    if as_json:
        _print_json({"ok": True, **result.to_dict()})
        return
    if not result.changed:
        console.print(f"{escape(name)} {escape(version)} is already deployed (checks pass)")
    else:
        console.print(f"[green]promoted[/] {escape(name)} {escape(version)} "
                      f"(previously deployed: {escape(result.previous or 'none')})")


@registry_app.command("rollback", epilog="Example: bastion registry rollback fraud-model --key team.pub")
def registry_rollback(
    name: str = typer.Argument(..., help="Model name."),
    key: Path | None = typer.Option(None, "--key", "-k", help="Public key (default: the one stored at add)."),
    no_recheck: bool = typer.Option(False, "--no-recheck",
                                    help="Trust the recorded checks instead of re-verifying and re-scanning."),
    db: str | None = _DB,
    as_json: bool = _JSON,
) -> None:
    """Move the deployment pointer back to the previous good version; exit 1 if there is none."""
    from bastion.supply.registry import PromotionRefused

    try:
        result = _registry(db).rollback(name, key=key, recheck=not no_recheck)
    except PromotionRefused as exc:
        _refusal(exc, as_json)
        return
    if as_json:
        _print_json({"ok": True, **result.to_dict()})
        return
    for label, reason in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(label)}: {escape(reason)}")
    console.print(f"[green]rolled back[/] {escape(name)}: {escape(result.from_version)} -> "
                  f"{escape(result.to_version.version)}")
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the bastion app."""
    app.command("keygen", epilog="Example: bastion keygen --out team  (writes team.key and team.pub)")(keygen)
    app.command("sign", epilog="Example: bastion sign models/v3/ --key team.key")(sign)
    app.command("verify", epilog="Example: bastion verify models/v3/ --key team.pub  (exit 1 if anything changed)")(verify)
    app.add_typer(registry_app, name="registry")
