"""What every capability algorithm shares, whatever its family: parameters as one pydantic model
(:class:`bastion.core.params.Params`, shared by the constructor, the policy and the docs), and the
metering of a run (queries charged to the run's ledger within the threat's budget, time).

A capability class declares ``Params``; ``Configurable.__init__`` validates keyword arguments
through it, and a bad value is a :class:`~bastion.core.params.ParamError` (a UsageError) naming the
parameter, the value given and what is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from bastion.core.params import Params
from bastion.core.run import QueryLedger, RunContext, metered

if TYPE_CHECKING:
    from bastion.core.targets.base import Target
    from bastion.core.threat import ThreatModel


class Configurable:
    """A named algorithm whose parameters live in ``self.params``. Instances hold parameters only,
    never the state of a run, so one object can run many times (and in many workers)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "algorithm"
    Params: ClassVar[type[Params]] = Params

    def __init__(self, **params: Any) -> None:
        self.params = self.Params.build(f"{self.family} '{self.label}'", params)

    @property
    def label(self) -> str:
        """The registered name, or the class name of an unregistered algorithm."""
        return self.name or type(self).__name__

    def run_context(self, ctx: RunContext | None) -> RunContext:
        """The algorithm's own child of ``ctx`` (a fresh run with seed 0 when None): its random
        numbers are keyed by its name, whatever ran before it."""
        return (ctx if ctx is not None else RunContext()).spawn(self.label)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


@dataclass
class Meter:
    """Queries charged and seconds spent by one run of an algorithm (``seconds`` set at the end)."""

    ledger: QueryLedger | None
    seconds: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    @property
    def queries(self) -> int:
        return self.ledger.spent if self.ledger is not None else 0


@contextmanager
def metering(ctx: RunContext, *targets: Target, threat: ThreatModel | None = None) -> Iterator[Meter]:
    """Charge every query the ``targets`` count inside the block to a sub-ledger of ``ctx``'s,
    limited by the threat's query budget (QueryBudgetExceeded past it), and time the block."""
    budget = threat.query_budget if threat is not None else None
    meter = Meter(ctx.ledger.limit(budget, "threat model's") if targets else None)
    try:
        if meter.ledger is None:
            yield meter
        else:
            with metered(*targets, ledger=meter.ledger, log=ctx.query_log):
                yield meter
    finally:
        meter.seconds = time.perf_counter() - meter._t0
