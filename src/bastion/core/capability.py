"""What every capability algorithm shares, whatever its family: parameters as one pydantic model
(shared by the constructor, the policy and the docs), and the accounting of a run (queries, time).

A capability class declares ``Params`` (a :class:`BaseParams` subclass); ``Configurable.__init__``
validates keyword arguments through it, and a bad value is a :class:`UsageError` that names the
parameter, the value given and what is allowed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from bastion.errors import UsageError

if TYPE_CHECKING:
    from bastion.core.targets.base import Target


class BaseParams(BaseModel):
    """Base of every parameter model: unknown names are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_params(model: type[BaseParams], values: dict[str, Any], *, owner: str) -> BaseParams:
    """Validate ``values`` through ``model``; the first error names parameter, value and rule."""
    try:
        return model(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        allowed = ", ".join(model.model_fields) or "none"
        if err["type"] == "extra_forbidden":
            raise UsageError(f"{owner}: unknown parameter '{name}'; allowed: {allowed}") from None
        raise UsageError(f"{owner}: parameter '{name}' = {err.get('input')!r}: {err['msg']}") from None


class Configurable:
    """A named algorithm whose parameters live in ``self.params``. Instances hold parameters only,
    never the state of a run, so one object can run many times (and in many workers)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "algorithm"
    Params: ClassVar[type[BaseParams]] = BaseParams

    def __init__(self, **params: Any) -> None:
        self.params = parse_params(self.Params, params, owner=f"{self.family} '{self.label}'")

    @property
    def label(self) -> str:
        """The registered name, or the class name of an unregistered algorithm."""
        return self.name or type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


def rng_of(ctx: Any, seed: int = 0) -> np.random.Generator:
    """The run's random generator: ``ctx.rng`` when a run context is given, else a fixed seed."""
    rng = getattr(ctx, "rng", None)
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(seed)


@dataclass
class Tally:
    """Queries a target answered and seconds spent since ``start``; ``stop`` freezes both."""

    target: Target | None
    queries: int = 0
    seconds: float = 0.0
    _q0: int = 0
    _t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, target: Target | None) -> Tally:
        return cls(target, _q0=target.queries if target is not None else 0)

    def spent(self) -> int:
        return (self.target.queries - self._q0) if self.target is not None else 0

    def stop(self) -> Tally:
        self.queries, self.seconds = self.spent(), time.perf_counter() - self._t0
        return self
