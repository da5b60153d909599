"""Parameter models: one pydantic model per algorithm, shared by its constructor, the policy and the docs.

A bad value becomes a :class:`ParamError` (a UsageError, exit 2) that names the parameter, the value
and what is allowed, e.g. ``pgd: step_size=nan is not allowed: must be a finite number``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from bastion.errors import UsageError

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")


class ParamError(UsageError):
    """A parameter value that is not allowed; ``field`` is the parameter's name (for file:line:field)."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


def _number(v: Any) -> Any:
    """Accept numbers and numeric strings (YAML reads ``3e-2`` as a string); refuse booleans."""
    if isinstance(v, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ValueError("must be a number") from None
    if isinstance(v, list | tuple | dict):
        raise ValueError("must be a single number")
    return v


def _eps(v: Any) -> Any:
    v = _number(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    if not (f >= 0) or math.isinf(f):
        raise ValueError("must be a finite number >= 0")
    return f


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, int | float | str) else v


def _sorted_distinct(v: list[float]) -> list[float]:
    if not v:
        raise ValueError("give one or more numbers")
    return sorted(set(v))


Eps = Annotated[float, BeforeValidator(_eps)]
Number = Annotated[float, BeforeValidator(_number)]
EpsList = Annotated[list[Eps], BeforeValidator(_one_or_many), AfterValidator(_sorted_distinct)]
"""One number or a list of finite numbers >= 0 (ε values, radii), sorted without repeats."""


class Params(BaseModel):
    """Base of every parameter model: unknown names and NaN/inf are refused; frozen once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def build(cls, owner: str, values: dict[str, Any]) -> Any:
        """Validate ``values``; a problem raises ParamError naming ``owner``, the parameter and the value."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise param_error(owner, cls, exc) from None


def param_error(owner: str, model: type[BaseModel], exc: ValidationError) -> ParamError:
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"]) or "?"
    top = str(err["loc"][0]) if err["loc"] else None
    if err["type"] == "extra_forbidden":
        return ParamError(f"{owner}: unknown parameter '{name}'", field=top,
                          hint=f"allowed: {', '.join(model.model_fields)}")
    if err["type"] == "missing":
        about = model.model_fields[top].description if top in model.model_fields else None
        return ParamError(f"{owner}: parameter '{name}' is required", field=top,
                          hint=f"{name}: {about}" if about else None)
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return ParamError(f"{owner}: {name}={err.get('input')!r} is not allowed: {msg}{tail}", field=top)


def params_table(model: type[BaseModel]) -> str:
    """A markdown table of a parameter model (name, default, what is allowed) for the docs."""
    rows = ["| parameter | default | allowed |", "| --- | --- | --- |"]
    for name, f in model.model_fields.items():
        allowed = [str(m) for m in f.metadata]
        ann = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
        rows.append(f"| `{name}` | `{f.default!r}` | {ann}{' ' + ', '.join(allowed) if allowed else ''} |")
    return "\n".join(rows)
