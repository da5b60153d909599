"""The ``bastion`` command line: entry point, error handling and exit codes.

Exit codes: 0 all gates pass / clean, 1 a gate failed / findings at or above the threshold,
2 usage or policy error, 3 runtime error.

The commands live in the typer app of :mod:`bastion.cli.app`; a plain ``bastion inspect PATH...``
runs without importing typer, rich or pydantic (:mod:`bastion.cli.fastpath`), so that a pre-commit
hook or a CI step scanning model files starts as fast as the scan allows.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3

EXIT_CODES_HELP = (
    "Exit codes: 0 all gates pass (or nothing found), 1 a gate failed (or findings at/above the threshold), "
    "2 usage or policy error, 3 runtime error."
)


def __getattr__(name: str) -> Any:
    """``app`` and ``err_console``: the typer app and its stderr console, built on first use."""
    if name in ("app", "err_console"):
        from bastion.cli import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def configure(verbose: bool, threads: int | None) -> None:
    """What the global options set up for every command: logging (with secrets redacted) and threads."""
    from bastion.core.redact import install_log_redaction

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


def print_error(label: str, message: str = "", style: str = "bold red") -> None:
    """``label message`` on stderr: styled by rich on a terminal, one plain unwrapped line otherwise."""
    sep = " " if message else ""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[{style}]{label}[/]{sep}{escape(message)}")
    else:
        sys.stderr.write(f"{label}{sep}{message}\n")


def _is_click(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is click's exception ``name`` — from click itself or the copy typer vendors."""
    return any(c.__name__ == name and c.__module__.split(".")[0] in ("click", "typer") for c in type(exc).__mro__)


def main() -> None:
    """Console-script entry: run the command, turning bastion errors into one line and an exit code."""
    import os

    from bastion.cli import fastpath, signals
    from bastion.core.redact import redact
    from bastion.errors import BastionError

    signals.install()
    try:
        fast = fastpath.parse(sys.argv[1:], os.environ)
        if fast is not None:
            code = fast.run()
        else:
            from bastion.cli.app import app

            code = app(standalone_mode=False)  # click returns the exit code in this mode
    except BastionError as exc:
        print_error("error:", redact(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted", style="yellow")
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
                print_error("error:", str(extra))
                sys.exit(extra.exit_code)
        print_error("internal error:", f"{type(exc).__name__}: {redact(exc)}")
        sys.exit(EXIT_RUNTIME)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
