"""Unit functions for the executor tests: module-level, so worker processes can import them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bastion.core.run import RunContext
from bastion.errors import QueryBudgetExceeded


def echo(ctx: RunContext, value: int, delay: float) -> dict[str, Any]:
    """Sleep ``delay`` (so later units can finish first), then report the value, the process and a draw."""
    time.sleep(delay)
    return {"value": value, "pid": os.getpid(), "draw": float(ctx.rng("draw").random())}


def spend(ctx: RunContext, tries: int) -> int:
    """Charge the run's ledger one query at a time until refused; return how many were accepted."""
    ok = 0
    for _ in range(tries):
        try:
            ctx.ledger.charge(1)
        except QueryBudgetExceeded:
            break
        ok += 1
    return ok


def wait_for_cancel(ctx: RunContext, flag_dir: str) -> str:
    """Note this worker's pid, then loop until the run is cancelled (as attacks do between batches)."""
    _note_pid(flag_dir)
    while not ctx.cancelled:
        time.sleep(0.02)
    return "cancelled"


def sleep_forever(ctx: RunContext, flag_dir: str) -> str:
    """Note this worker's pid, then ignore cancellation: the executor must end the process itself."""
    _note_pid(flag_dir)
    time.sleep(600)
    return "never"


def _note_pid(flag_dir: str) -> None:
    """Write ``PID.pid`` atomically (temp file, then rename): the test polls for these files and
    must never read one half-written."""
    tmp = Path(flag_dir, f"{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(Path(flag_dir, f"{os.getpid()}.pid"))


def fail(ctx: RunContext) -> None:
    raise ValueError("unit failed on purpose")
