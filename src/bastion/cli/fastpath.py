"""``bastion inspect`` without typer: the common command lines parsed by hand, everything else to typer.

Starting typer, rich and the pydantic result models costs more than scanning a directory of model files
(benchmarks/RESULTS.md, issue 7), so :func:`parse` reads the plain forms

    bastion [-v|--verbose] [--threads N] inspect PATH... [-f|--format text|json|sarif] [--fail-on SEV]
            [-c|--config FILE] [-o|--output FILE]

(long options also as ``--name=value``; the last of a repeated option wins, as in click) and returns None
for anything else: help, ``--version``, an unknown option, a missing value or one that starts with ``-``,
``--``, a path that starts with ``-``, an invalid ``--threads`` or ``BASTION_THREADS``. typer then parses
the line and gives its usual help and errors, so the behaviour (options, exit codes, messages) is the
typer command's; both run :func:`bastion.cli.inspect_cmd.run_inspect`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_FORMATS = ("text", "json", "sarif")
_OPTIONS = {"--format": "fmt", "-f": "fmt", "--fail-on": "fail_on", "--config": "config", "-c": "config",
            "--output": "output", "-o": "output"}


@dataclass(frozen=True)
class InspectCall:
    """A parsed ``bastion inspect`` command line."""

    paths: list[Path]
    fmt: str = "text"
    fail_on: str = "high"
    config: Path | None = None
    output: Path | None = None
    verbose: bool = False
    threads: int | None = None

    def run(self) -> int:
        """Set up logging and threads as the app's global options do, then inspect; the exit code."""
        from bastion.cli.inspect_cmd import OutputFormat, run_inspect
        from bastion.cli.main import configure

        configure(self.verbose, self.threads)
        return run_inspect(self.paths, OutputFormat(self.fmt), self.fail_on, self.config, self.output)


def _threads(value: str | None) -> int | None | bool:
    """A ``--threads`` value as typer reads it (an int >= 1), None when absent, False when typer must judge."""
    if value is None:
        return None
    return int(value) if value.isascii() and value.isdigit() and int(value) >= 1 else False


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> InspectCall | None:
    """The :class:`InspectCall` of ``argv`` (without the program name), or None when typer must parse it."""
    verbose, threads_arg = False, None
    i = 0
    while i < len(argv) and argv[i] != "inspect":       # global options before the command
        arg = argv[i]
        if arg in ("-v", "--verbose"):
            verbose = True
        elif arg == "--threads" and i + 1 < len(argv):
            threads_arg = argv[i + 1]
            i += 1
        elif arg.startswith("--threads="):
            threads_arg = arg.partition("=")[2]
        else:
            return None
        i += 1
    if i == len(argv):
        return None
    threads = _threads(threads_arg if threads_arg is not None else environ.get("BASTION_THREADS") or None)
    if threads is False:
        return None
    values: dict[str, str] = {}
    paths: list[Path] = []
    rest = list(argv[i + 1:])
    j = 0
    while j < len(rest):
        arg = rest[j]
        if not arg:
            return None
        if not arg.startswith("-"):
            paths.append(Path(arg))
            j += 1
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in _OPTIONS:
            return None
        if not eq:
            if j + 1 >= len(rest):
                return None
            value = rest[j + 1]
            j += 1
        if not value or value.startswith("-"):
            return None
        values[_OPTIONS[name]] = value
        j += 1
    if not paths or values.get("fmt", "text") not in _FORMATS:
        return None
    return InspectCall(paths, values.get("fmt", "text"), values.get("fail_on", "high"),
                       Path(values["config"]) if "config" in values else None,
                       Path(values["output"]) if "output" in values else None, verbose, threads)
