"""The ``bastion`` command line: typer app, error handling and exit codes.

Exit codes: 0 all gates pass / clean, 1 a gate failed / findings at or above the threshold,
2 usage or policy error, 3 runtime error.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from bastion import __version__
from bastion.core.redact import install_log_redaction, redact
from bastion.errors import BastionError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3

EXIT_CODES_HELP = (
    "Exit codes: 0 all gates pass (or nothing found), 1 a gate failed (or findings at/above the threshold), "
    "2 usage or policy error, 3 runtime error."
)

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
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()  # no secret or URL credential in a log line
    if threads is not None:
        set_threads(threads)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch (and the OpenMP/BLAS libraries it loads)."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:  # already imported: tell it directly
        sys.modules["torch"].set_num_threads(n)


def _register_commands() -> None:
    from bastion.cli import audit_data_cmd, inspect_cmd, scan_cmds, signing_cmds

    scan_cmds.register(app)
    inspect_cmd.register(app)
    audit_data_cmd.register(app)
    signing_cmds.register(app)


_register_commands()


def _is_click(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is click's exception ``name`` — from click itself or the copy typer vendors."""
    return any(c.__name__ == name and c.__module__.split(".")[0] in ("click", "typer") for c in type(exc).__mro__)


def main() -> None:
    """Console-script entry: run the app, turning bastion errors into one line and an exit code."""
    from bastion.cli import signals

    signals.install()
    try:
        code = app(standalone_mode=False)  # click returns the exit code in this mode
    except BastionError as exc:
        err_console.print(f"[bold red]error:[/] {escape(redact(exc))}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(signals.interrupt_exit_code())
    except SystemExit:
        raise
    except Exception as exc:  # command-line usage errors and real crashes
        if _is_click(exc, "ClickException"):  # bad option value, missing argument, unknown command...
            exc.show()  # type: ignore[attr-defined]
            sys.exit(EXIT_USAGE)
        if _is_click(exc, "Abort"):
            sys.exit(signals.interrupt_exit_code())
        if isinstance(exc, ImportError):  # an optional library missing where no code asked for it by name
            from bastion.core.extras import missing_extra

            extra = missing_extra(exc)
            if extra is not None:
                err_console.print(f"[bold red]error:[/] {escape(str(extra))}")
                sys.exit(extra.exit_code)
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(redact(exc))}")
        sys.exit(EXIT_RUNTIME)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


