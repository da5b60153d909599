"""What one run owns: its random numbers, its query ledger, progress, cancellation and query log.

A :class:`RunContext` is handed to every attack (``attack.run(target, x, y, threat, ctx)``) and
every unit of work an executor runs. Nothing of a run is written onto a target or an attack:

- random numbers come from the policy seed, spawned by name (``ctx.spawn("check-name")``), so the
  order in which checks run and the number of workers never change them; per-sample streams
  (:class:`SampleStreams`) make an attack's result independent of its batch size;
- a :class:`QueryLedger` counts and limits queries; it is one counter in shared memory, so worker
  processes of one run charge the same budget (a distributed ledger can replace it behind the same
  methods);
- queries reach the ledger through :func:`metered`: while it is active, every query a target counts
  (``Target.count_queries``) is charged, and transports (HTTP) report their requests to the
  run's :class:`QueryLog`;
- the model's own randomness (a torch model that draws noise in ``forward``) is seeded per forward
  call from the run while :func:`model_draws` is active (:func:`seeded_forward`), so a run with a
  fixed seed reproduces. The model draws its noise for a whole batch, so the draws (unlike the
  attacks' own per-sample streams) depend on the batch size.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.sharedctypes  # noqa: F401 - registers its reducers before any pickler is made
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.errors import QueryBudgetExceeded, UsageError

ProgressFn = Callable[[int], None]


class Cancelled(KeyboardInterrupt):
    """The run was cancelled (Ctrl-C in the parent, or ``ctx.cancel()``): stop and keep what is done."""


# --- the ledger -----------------------------------------------------------------------------------
class QueryLedger:
    """Counts the inputs a run sends to its targets and refuses to go past ``budget``.

    The counter is an integer behind a lock; when the ledger is handed to worker processes as they
    start (an executor does this), it moves into shared memory first (:meth:`share`), so all of
    them charge one budget. ``limit(budget)`` gives a sub-ledger (one check, one attack run under a
    threat model's budget): a charge must fit both.
    """

    def __init__(self, budget: int | None = None, *, label: str = "run", parent: QueryLedger | None = None) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | np.integer)
                                   or budget <= 0):
            raise UsageError(f"query budget must be a positive integer, got {budget!r}")
        self.budget = None if budget is None else int(budget)
        self.label = label
        self.parent = parent
        self._spent: Any = _LocalCounter()

    def share(self) -> QueryLedger:
        """Move the counter (and its parents') into shared memory, usable by worker processes however
        they are started. Done automatically when the ledger is sent to a starting process."""
        if self.parent is not None:
            self.parent.share()
        local = self._spent
        with local.get_lock():
            if isinstance(local, _LocalCounter):
                self._spent = multiprocessing.get_context("spawn").Value("q", local.value)
        return self

    def __getstate__(self) -> dict[str, Any]:
        self.share()
        return dict(self.__dict__)

    @property
    def spent(self) -> int:
        """Inputs charged so far (sub-ledgers included)."""
        return int(self._spent.value)

    @property
    def remaining(self) -> int | None:
        """Inputs still allowed by this ledger and its parents (None: no limit)."""
        own = None if self.budget is None else self.budget - self.spent
        up = self.parent.remaining if self.parent is not None else None
        return own if up is None else (up if own is None else min(own, up))

    def charge(self, n: int) -> None:
        """Charge ``n`` inputs, or raise QueryBudgetExceeded (nothing charged) if any budget would be passed."""
        while True:
            counter = self._spent
            with counter.get_lock():
                if counter is not self._spent:  # moved to shared memory meanwhile: charge there
                    continue
                if self.budget is not None and counter.value + n > self.budget:
                    raise QueryBudgetExceeded(f"the {self.label} budget of {self.budget} queries is spent "
                                              f"({counter.value} spent, {n} more asked)")
                if self.parent is not None:
                    self.parent.charge(n)
                counter.value += n
                return

    def limit(self, budget: int | None = None, label: str = "") -> QueryLedger:
        """A sub-ledger (of at most ``budget`` inputs, if given) whose charges also count here."""
        return QueryLedger(budget, label=label or self.label, parent=self)


class _LocalCounter:
    """The counter of a ledger not (yet) shared with other processes."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


# --- the query log --------------------------------------------------------------------------------
@dataclass
class QueryLog:
    """What a run sent: charged queries and calls, and, from transports that report them (HTTP),
    requests, inputs on the wire, seconds, bytes, errors, retries and status codes."""

    queries: int = 0
    calls: int = 0
    transport: dict[str, Any] = field(default_factory=dict)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def note_charge(self, n: int) -> None:
        with self._lock:
            self.queries += n
            self.calls += 1

    def note_request(self, *, inputs: int, seconds: float, bytes_sent: int = 0, bytes_received: int = 0,
                     status: int | None = None) -> None:
        with self._lock:
            self._note_request(inputs, seconds, bytes_sent, bytes_received, status)

    def _note_request(self, inputs: int, seconds: float, bytes_sent: int, bytes_received: int,
                      status: int | None) -> None:
        t = self.transport
        for key, value in (("requests", 1), ("inputs", inputs), ("seconds", seconds), ("bytes_sent", bytes_sent),
                           ("bytes_received", bytes_received)):
            t[key] = t.get(key, 0) + value
        code = str(status) if status is not None else "error"
        t.setdefault("status", {})[code] = t.get("status", {}).get(code, 0) + 1
        t["errors"] = t.get("errors", 0) + int(status is None or status >= 400)
        t.setdefault("retries", 0)

    def note_retry(self) -> None:
        with self._lock:
            self.transport["retries"] = self.transport.get("retries", 0) + 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {"queries": self.queries, "calls": self.calls}
            transport = dict(self.transport)
        for key, value in transport.items():
            out[key] = round(value, 4) if key == "seconds" else (dict(value) if isinstance(value, dict) else value)
        return out


@dataclass(frozen=True)
class _Meter:
    target_ids: frozenset[int]
    ledger: QueryLedger
    log: QueryLog


_METERS: ContextVar[tuple[_Meter, ...]] = ContextVar("bastion_meters", default=())
_PAUSED: ContextVar[frozenset[int]] = ContextVar("bastion_unmetered", default=frozenset())


@contextmanager
def metered(*targets: Any, ledger: QueryLedger, log: QueryLog | None = None) -> Iterator[None]:
    """While active, queries counted by any of ``targets`` are charged to ``ledger`` (and noted in
    ``log``); requests of any transport are noted in ``log``."""
    meter = _Meter(frozenset(id(t) for t in targets), ledger, log if log is not None else QueryLog())
    token = _METERS.set((*_METERS.get(), meter))
    try:
        yield
    finally:
        _METERS.reset(token)


@contextmanager
def unmetered(target: Any) -> Iterator[None]:
    """Queries ``target`` counts inside this block are bastion's own measurements: not charged."""
    token = _PAUSED.set(_PAUSED.get() | {id(target)})
    try:
        yield
    finally:
        _PAUSED.reset(token)


def charge_queries(target: Any, n: int) -> None:
    """Called by ``Target.count_queries``: charge the active run's ledger(s) metering ``target``."""
    if id(target) in _PAUSED.get():
        return
    for m in _METERS.get():
        if id(target) in m.target_ids:
            m.ledger.charge(n)
            m.log.note_charge(n)


def log_request(**fields: Any) -> None:
    """Called by transports for every request sent (see :meth:`QueryLog.note_request`)."""
    meters = _METERS.get()
    if meters:
        meters[-1].log.note_request(**fields)


def log_retry() -> None:
    meters = _METERS.get()
    if meters:
        meters[-1].log.note_retry()


# --- random numbers -------------------------------------------------------------------------------
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class SampleStreams:
    """Counter-based random numbers, one stream per sample: what sample ``i`` draws depends only on
    the run's seed, the names it was spawned with, ``i`` and the draw (``step``, call order within
    it), never on which other samples share its batch. Draws are vectorised over the samples."""

    def __init__(self, key: int, rows: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            self._keys = _mix(np.uint64(key) + (np.asarray(rows, np.uint64) + np.uint64(1)) * _GOLDEN)
        self._step, self._call = 0, 0

    def __len__(self) -> int:
        return len(self._keys)

    def subset(self, idx: np.ndarray) -> SampleStreams:
        """The streams of the samples ``idx`` (same position in the sequence of draws)."""
        out = object.__new__(SampleStreams)
        out._keys, out._step, out._call = self._keys[idx], self._step, self._call
        return out

    def at(self, step: int) -> SampleStreams:
        """Position the draws at ``step`` (e.g. an iteration number); calls within a step are numbered."""
        out = object.__new__(SampleStreams)
        out._keys, out._step, out._call = self._keys, int(step) + 1, 0
        return out

    def _bits(self, shape: tuple[int, ...]) -> np.ndarray:
        self._call += 1
        m = int(np.prod(shape)) if shape else 1
        with np.errstate(over="ignore"):
            counter = _mix(np.uint64(self._step) * _GOLDEN + np.uint64(self._call) * np.uint64(0xD1B54A32D192ED03)
                           + np.arange(m, dtype=np.uint64))
            return _mix(self._keys[:, None] ^ counter[None, :]).reshape(len(self._keys), *shape)

    def uniform(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        """Uniform in [0, 1), shape (n, *shape), float64."""
        return (self._bits(shape) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def normal(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        """Standard normal (Box-Muller), shape (n, *shape)."""
        u1, u2 = self.uniform(shape), self.uniform(shape)
        return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)

    def integers(self, high: np.ndarray | int, shape: tuple[int, ...] = ()) -> np.ndarray:
        """Integers in [0, high) (``high`` scalar or one per sample), shape (n, *shape)."""
        h = np.asarray(high).reshape(-1, *([1] * len(shape))) if np.ndim(high) else high
        return np.minimum((self.uniform(shape) * h).astype(np.int64), np.asarray(h) - 1)

    def signs(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        """-1.0 or +1.0 with equal probability."""
        return np.where(self.uniform(shape) < 0.5, -1.0, 1.0)


# --- the model's own randomness --------------------------------------------------------------------
class _DrawSeeds:
    """One 64-bit seed per forward call of the model: splitmix64 of (key, call number)."""

    def __init__(self, key: int) -> None:
        self._key, self._calls = np.uint64(key), 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._calls += 1
            n = self._calls
        with np.errstate(over="ignore"):
            return int(_mix(np.asarray(self._key + np.uint64(n) * _GOLDEN, np.uint64)))


_DRAWS: ContextVar[_DrawSeeds | None] = ContextVar("bastion_model_draws", default=None)


@contextmanager
def model_draws(key: int) -> Iterator[None]:
    """While active, every forward call of a torch target draws its randomness from a seed derived
    from ``key`` and the call's number (see :func:`seeded_forward`)."""
    token = _DRAWS.set(_DrawSeeds(key))
    try:
        yield
    finally:
        _DRAWS.reset(token)


@contextmanager
def seeded_forward(device: str = "cpu") -> Iterator[None]:
    """Around one forward call of a torch model: inside :func:`model_draws`, torch's generator of
    ``device`` is forked and seeded from the run (the caller's generator state is restored after);
    outside, nothing changes."""
    seeds = _DRAWS.get()
    if seeds is None:
        yield
        return
    import torch

    cuda = torch.device(device).type == "cuda"
    index = torch.device(device).index
    devices = [index if index is not None else torch.cuda.current_device()] if cuda else []
    seed = seeds.next()
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield


# --- the context ----------------------------------------------------------------------------------
@dataclass
class RunContext:
    """One run: seed and name path (for random numbers), ledger, progress, cancellation, query log,
    a memo of what the run built once (``remember``) and the executor its units of work go to
    (``executor``: a :class:`bastion.campaign.executors.Executor`; None runs them in this process).

    ``RunContext()`` is a fresh run with seed 0 and no budget. ``spawn(name)`` gives a child whose
    random numbers depend on (seed, path + name) and which shares the ledger, cancellation and log.
    """

    seed: int = 0
    ledger: QueryLedger = field(default_factory=QueryLedger)
    progress: ProgressFn | None = None
    query_log: QueryLog = field(default_factory=QueryLog)
    path: tuple[str, ...] = ()
    cancel_event: Any = field(default_factory=threading.Event)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    executor: Any = field(default=None, repr=False)  # where units of work run (None: in this process)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or not 0 <= self.seed < 2 ** 63:
            raise UsageError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")

    def spawn(self, name: str, *, ledger: QueryLedger | None = None, progress: ProgressFn | None = None
              ) -> RunContext:
        """A child context named ``name`` (random numbers keyed by the name, not by when it runs)."""
        return RunContext(self.seed, ledger or self.ledger, progress or self.progress, self.query_log,
                          (*self.path, str(name)), self.cancel_event, self.memo, self.executor)

    def key(self, *names: str) -> int:
        """A 64-bit key for (seed, path, names)."""
        ss = np.random.SeedSequence(int(self.seed), spawn_key=tuple(_name_key(n) for n in (*self.path, *names)))
        return int(ss.generate_state(1, np.uint64)[0])

    def rng(self, *names: str) -> np.random.Generator:
        """A numpy generator for (seed, path, names)."""
        return np.random.default_rng(self.key(*names))

    def streams(self, rows: np.ndarray, *names: str) -> SampleStreams:
        """Per-sample random streams for the samples ``rows`` (indices in the run's inputs)."""
        return SampleStreams(self.key(*names), rows)

    def remember(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per run and key (e.g. a surrogate reused across the ε of a curve); this
        process only, shared with spawned children."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress(n)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return bool(self.cancel_event.is_set())

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the run was cancelled."""
        if self.cancelled:
            raise Cancelled("cancelled")


@dataclass(frozen=True)
class Unit:
    """One unit of work: ``fn`` (a module-level function or its "module:attr" name) called as
    ``fn(ctx, **args)``; ``name`` keys the unit's random numbers (unique within one ``map``)."""

    fn: Callable[..., Any] | str
    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def reference(self) -> str:
        if isinstance(self.fn, str):
            return self.fn
        qual = getattr(self.fn, "__qualname__", "")
        if "<" in qual or not getattr(self.fn, "__module__", None):
            raise UsageError(f"unit '{self.name}': {self.fn!r} is not a module-level function",
                             hint="executors run units in other processes: name a function defined at module level")
        return f"{self.fn.__module__}:{qual}"
