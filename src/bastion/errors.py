"""The one error hierarchy of bastion.

Every error a user can cause is a :class:`UsageError` (CLI exit code 2); every failure of the
run itself is a :class:`BastionRuntimeError` (exit code 3). Messages say what was wrong, where,
and what to do; the CLI prints them without a traceback.
"""

from __future__ import annotations


class BastionError(Exception):
    """Base class of every error bastion raises on purpose."""

    exit_code: int = 3

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(BastionError):
    """The user asked for something that cannot work (bad file, bad option, bad data)."""

    exit_code = 2


class PolicyError(UsageError):
    """A policy file is malformed or invalid; carries the file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ":".join(str(p) for p in (file, line) if p is not None)
        prefix = f"{where}: " if where else ""
        field_part = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{field_part}{message}", hint=hint)
        self.file, self.line, self.field = file, line, field


class DataError(UsageError):
    """Data that cannot be used: wrong shape, dtype, range, labels, NaN, empty."""


class TargetError(UsageError):
    """A model spec that cannot be loaded, or a model whose outputs are not usable."""


class UnsafeFileError(UsageError):
    """A file bastion refuses to load because loading it could execute code."""


class MissingExtraError(UsageError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"this feature needs the optional package '{package}'",
            hint=f"install it with: pip install 'bastion[{extra}]'",
        )


class BastionRuntimeError(BastionError):
    """The run itself failed (a crash inside a model, an endpoint that went away...)."""

    exit_code = 3


class QueryBudgetExceeded(BastionRuntimeError):
    """A target's hard query budget is spent; attacks stop and keep partial results."""


def require(module: str, extra: str):  # noqa: ANN201 - returns a module
    """Import an optional dependency lazily, or raise a one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], extra) from exc
