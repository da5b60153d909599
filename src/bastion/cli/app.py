"""The typer app behind ``bastion``: every command, its options and its help text.

Imported by :func:`bastion.cli.main.main` for every command line that the fast path of
``bastion inspect`` (:mod:`bastion.cli.fastpath`) does not take, and by tests that drive the app.
"""

from __future__ import annotations

import typer
from rich.console import Console

from bastion import __version__
from bastion.cli.main import EXIT_CODES_HELP, EXIT_OK, configure

app = typer.Typer(
    name="bastion",
    help=f"Stress-test machine-learning models against credible attacks.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

err_console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bastion {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
    threads: int | None = typer.Option(None, "--threads", envvar="BASTION_THREADS", min=1,
                                       help="CPU threads for torch (default: torch's own). Small models on a busy "
                                            "machine run fastest with 1."),
) -> None:
    configure(verbose, threads)


def _register_commands() -> None:
    from bastion.cli import audit_data_cmd, certify_cmd, harden_cmd, inspect_cmd, scan_cmds, signing_cmds

    scan_cmds.register(app)
    harden_cmd.register(app)
    certify_cmd.register(app)
    inspect_cmd.register(app)
    audit_data_cmd.register(app)
    signing_cmds.register(app)


_register_commands()
