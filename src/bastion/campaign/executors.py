"""Executors: checks submit units of work (one shadow model, one poisoning run, one batch of inputs,
one ε of a curve) as picklable specs and get the results back in submission order.

A :class:`Unit` names a module-level function and its arguments; the function is called as
``fn(ctx, **args)`` with the run context spawned for the unit's name, so its random numbers depend
on (seed, name), not on which worker ran it or when. Units share nothing mutable but the query
ledger: every unit gets its own copy of the arguments, as a worker process would.

- :class:`SerialExecutor` runs the units one after the other in this process (tests, small jobs);
- :class:`LocalExecutor` runs them in worker processes (``--workers``, default the CPU count),
  with progress over all units; Ctrl-C (or ``ctx.cancel()``) stops them all and raises
  :class:`ExecutionInterrupted` holding the results finished so far.

Nothing here assumes one machine: a distributed executor implements ``map`` behind the same interface.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from bastion.core.run import QueryLedger, RunContext, Unit
from bastion.errors import UsageError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
GRACE_SECONDS = 5.0  # how long cancelled units may take to stop on their own before workers are ended


class ExecutionInterrupted(KeyboardInterrupt):
    """Ctrl-C or a cancelled run stopped the units; ``results`` holds the finished ones (None elsewhere)."""

    def __init__(self, results: list[Any]) -> None:
        super().__init__("interrupted")
        self.results = results


class Executor(ABC):
    """Runs units and returns their results in order."""

    workers: int = 1

    @abstractmethod
    def map(self, units: Sequence[Unit], ctx: RunContext, *, progress: ProgressFn | None = None) -> list[Any]:
        """Run every unit under ``ctx`` (its seed, ledger and cancellation); results in ``units`` order."""


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _specs(units: Sequence[Unit]) -> list[tuple[str, str, bytes]]:
    """Each unit as (function reference, name, pickled arguments); refuses live, unpicklable objects."""
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise UsageError("unit names must be unique within one run (they key the units' random numbers)")
    out = []
    for u in units:
        try:
            blob = pickle.dumps(u.args)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
            raise UsageError(f"unit '{u.name}': its arguments cannot be sent to a worker ({exc})",
                             hint="pass specs (paths, names, arrays, parameters), not live objects") from None
        out.append((u.reference(), u.name, blob))
    return out


def _run_one(ref: str, name: str, blob: bytes, ctx: RunContext) -> Any:
    return _resolve(ref)(ctx.spawn(name), **pickle.loads(blob))


class SerialExecutor(Executor):
    """Every unit in this process, one after the other (each with its own copy of its arguments)."""

    def map(self, units: Sequence[Unit], ctx: RunContext, *, progress: ProgressFn | None = None) -> list[Any]:
        specs = _specs(units)
        results: list[Any] = [None] * len(specs)
        for i, (ref, name, blob) in enumerate(specs):
            try:
                ctx.check_cancelled()
                results[i] = _run_one(ref, name, blob, ctx)
            except KeyboardInterrupt:
                raise ExecutionInterrupted(results) from None
            if progress:
                progress(1)
        return results


# --- worker processes ------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}  # this worker process's run: ledger, cancellation, seed and name path


def _init_worker(seed: int, path: tuple[str, ...], ledger: QueryLedger, cancel: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: it sets `cancel`, then ends workers
    _WORKER.update(ctx=RunContext(seed, ledger, None, path=path, cancel_event=cancel))


def _work(ref: str, name: str, blob: bytes) -> Any:
    return _run_one(ref, name, blob, _WORKER["ctx"])


class LocalExecutor(Executor):
    """Units in up to ``workers`` processes on this machine (default: the CPU count).

    Workers start by ``start_method`` ("spawn": nothing is inherited but the ledger and the
    cancellation flag, as on another machine). The ledger is shared memory: one budget for all."""

    def __init__(self, workers: int | None = None, *, start_method: str = "spawn") -> None:
        n = (os.cpu_count() or 1) if workers is None else workers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"workers must be a positive integer, got {workers!r}")
        self.workers, self.start_method = n, start_method

    def map(self, units: Sequence[Unit], ctx: RunContext, *, progress: ProgressFn | None = None) -> list[Any]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        specs = _specs(units)
        results: list[Any] = [None] * len(specs)
        if not specs:
            return results
        mp = multiprocessing.get_context(self.start_method)
        ctx.ledger.share()  # one counter in shared memory for this process and every worker
        cancel = mp.Event()
        pool = ProcessPoolExecutor(min(self.workers, len(specs)), mp_context=mp, initializer=_init_worker,
                                   initargs=(ctx.seed, ctx.path, ctx.ledger, cancel))
        futures = {pool.submit(_work, *spec): i for i, spec in enumerate(specs)}
        pending = set(futures)
        try:
            while pending:
                if ctx.cancelled:
                    raise KeyboardInterrupt
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                for f in done:
                    results[futures[f]] = f.result()  # a unit's error is the map's error
                    if progress:
                        progress(1)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping %d unit(s)", len(pending))
            _stop(pool, cancel, pending)
            for f, i in futures.items():
                if f.done() and not f.cancelled() and f.exception() is None:
                    results[i] = f.result()
            raise ExecutionInterrupted(results) from None
        except BaseException:
            _stop(pool, cancel, pending)
            raise
        pool.shutdown(wait=True)
        return results


def _stop(pool: Any, cancel: Any, pending: set[Any]) -> None:
    """Cancel queued units, ask running ones to stop (``ctx.cancelled``), end the workers that do not."""
    cancel.set()
    for f in pending:
        f.cancel()
    deadline = time.monotonic() + GRACE_SECONDS
    while any(not f.done() for f in pending) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs = list(getattr(pool, "_processes", {}).values())  # still running after the grace period
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=GRACE_SECONDS)


def evasion_unit(ctx: RunContext, target: str, attack: str, params: dict[str, Any], x: Any, y: Any,
                 target_options: dict[str, Any] | None = None) -> Any:
    """A unit running one evasion attack on one batch of inputs: the target is loaded from its spec
    (a model spec string) in the worker, scanned first like every model file bastion opens."""
    from bastion.attacks import get_attack
    from bastion.campaign.preflight import scan_model_file
    from bastion.core.loader import load_target

    scan_model_file(target)
    model = load_target(target, **(target_options or {}))
    return get_attack(attack, **params).run(model, x, y, None, ctx)


def make_executor(workers: int | None = None) -> Executor:
    """The default executor: local worker processes (``workers``, default the CPU count); serial for 1."""
    ex = LocalExecutor(workers)
    return SerialExecutor() if ex.workers == 1 else ex
