"""Run a campaign: policy → target and data → checks → findings → gates → ScanResult.

The report set in the output directory is always consistent: the previous run's reports are
removed when a scan starts (by the first ``report.json`` written), ``report.json`` is rewritten atomically after every check, and every
way a scan can end — all checks done, a check that errored, a model that failed to load, Ctrl-C or
SIGTERM — ends with the full set written and a status that says what happened. A check that
errored or did not finish makes the verdict fail (see :func:`exit_code`). Before the gates are
evaluated, the gradient-masking findings mark the evasion figures they concern as untrusted
(:mod:`bastion.campaign.trust`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion import __version__
from bastion.campaign.checks.base import CheckContext, CheckFailed, Interrupted, ProgressFactory
from bastion.campaign.policy import LoadedPolicy, load_policy
from bastion.campaign.preflight import scan_model_file
from bastion.campaign.trust import mark_untrusted
from bastion.core.data import Dataset, align_labels
from bastion.core.loader import load_data, load_target
from bastion.core.redact import redact, redact_tree
from bastion.core.results import CheckResult, ScanResult
from bastion.core.schemes import resolve_model_spec
from bastion.core.targets.base import Target
from bastion.errors import BastionError, UsageError

log = logging.getLogger(__name__)

CheckCallback = Callable[[CheckResult], None]
EXIT_OK, EXIT_FAIL, EXIT_RUNTIME, EXIT_INTERRUPTED = 0, 1, 3, 130


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a scan. ``result`` is what was written (None when nothing
    was), ``report_dir`` where."""

    def __init__(self, result: ScanResult | None, report_dir: Path | None, stage: str) -> None:
        super().__init__(f"interrupted {stage}")
        self.result, self.report_dir, self.stage = result, report_dir, stage


def scan(policy: str | Path | dict[str, Any] | LoadedPolicy, *, out_dir: str | Path | None = None,
         progress: ProgressFactory | None = None, on_check: CheckCallback | None = None,
         limit: int | None = None, write: bool = True, workers: int | None = None) -> ScanResult:
    """Run every check of a policy and return the ScanResult (reports written to ``out_dir``,
    default: the policy's ``output.dir`` relative to the current directory). ``workers``: worker
    processes for checks that split into units (``ctx.options["workers"]``; default the CPU count).

    Raises :class:`ScanInterrupted` on Ctrl-C after writing the partial report, and the load
    error (a UsageError names the policy field) when the target or data cannot be loaded."""
    loaded = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
    pol = loaded.policy
    out = Path(out_dir) if out_dir is not None else Path(pol.output.dir)
    target_spec = redact(pol.target.model) if pol.target else ""  # a URL may hold credentials
    data_spec = redact(pol.data.source) if pol.data else ""
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be a positive number of samples, got {limit}")
    if not loaded.checks:
        raise loaded.error("the policy has no checks to scan (its 'harden' section runs with: bastion harden "
                           "POLICY.yaml)", ("checks",))
    if write:
        from bastion.outputs.report.writer import require_formats

        require_formats(pol.output.formats)  # a missing extra stops here, not after the checks
        _prepare_out_dir(out, "--out" if out_dir is not None else "output.dir")
    result = ScanResult(tool={"name": "bastion", "version": __version__},
                        target={"spec": target_spec} if pol.target else {},
                        data={"spec": data_spec} if pol.data else {})
    result.target["policy"] = pol.name
    result.policy_file = str(loaded.path) if loaded.path else None
    result.fail_on = pol.fail_on
    result.status, result.status_reason = "incomplete", "scan in progress"

    def save() -> None:
        if write:
            _write(result, out, ("json",))

    save()
    stage = "while loading the target and data"
    try:
        target, data, y = _load(loaded, limit)
        datasets, trainer = _load_v2(loaded)
        if "torch" in sys.modules:  # recorded for reproducibility: timings depend on it
            result.tool["torch_threads"] = str(sys.modules["torch"].get_num_threads())
        if target is not None:
            result.target.update(target.describe(), spec=target_spec)
        if data is not None:
            result.data.update(data.describe(), spec=data_spec)
        loaded.check_capabilities(target)
        ctx = CheckContext(target=target, data=data, y=y, seed=pol.seed, out_dir=out, progress=progress,
                           policy_dir=loaded.base_dir, options={"workers": workers}, datasets=datasets,
                           trainer=trainer)
        stage = "while preparing the checks"
        for i, check in enumerate(loaded.checks):
            with loaded.blame("checks", i):
                check.prepare(ctx)
        stage = "during the checks"
        save()
        for check in loaded.checks:
            res, interrupted = _run_check(check, ctx)
            result.checks.append(res)
            if on_check:
                on_check(res)
            if interrupted:
                raise KeyboardInterrupt
            save()
    except KeyboardInterrupt:
        _finish(result, loaded, f"interrupted {stage}")
        _write_all(result, out, pol.output.formats, write)
        raise ScanInterrupted(result, out if write else None, stage) from None
    except BaseException as exc:  # a load error: the report says so, then the error goes on
        _finish(result, loaded, redact(f"stopped {stage}: {_one_line(exc)}"))
        _write_all(result, out, pol.output.formats, write)
        raise
    _finish(result, loaded, None)
    _write_all(result, out, pol.output.formats, write)
    return redact_tree(result)  # what callers print (scan --json) is as clean as the reports


def exit_code(result: ScanResult) -> int:
    """The CLI exit code of a finished scan: 3 when a check errored (the model or an endpoint
    failed), 1 when the verdict fails (a gate, a finding at ``fail_on``, an incomplete check), 0."""
    if any(c.status == "error" for c in result.checks):
        return EXIT_RUNTIME
    return EXIT_OK if result.verdict == "pass" else EXIT_FAIL


def _run_check(check: Any, ctx: CheckContext) -> tuple[CheckResult, bool]:
    """Run one check; an error becomes a result with status ``error``. Also says whether Ctrl-C
    stopped it (its partial result is kept, marked incomplete)."""
    t0 = time.perf_counter()
    interrupted = False
    try:
        res = check.run(ctx)
    except Interrupted as stop:
        interrupted = True
        res = stop.partial.model_copy(update={"status": "incomplete",
                                              "reason": stop.partial.reason or "interrupted by the user"})
    except CheckFailed as failed:
        res = failed.partial
    except KeyboardInterrupt:
        raise
    except BastionError as exc:  # the model misbehaved mid-run (NaN, wrong shape...) or an endpoint failed
        res = CheckResult(name=check.name, kind=check.kind, status="error", reason=redact(_one_line(exc)))
        log.error("check %s failed: %s", check.name, exc)
    except Exception as exc:  # a crash in one check must not lose the others
        res = CheckResult(name=check.name, kind=check.kind, status="error",
                          reason=redact(f"{type(exc).__name__}: {exc}"))
        log.error("check %s crashed: %s: %s", check.name, type(exc).__name__, exc)
        log.debug("traceback of check %s", check.name, exc_info=True)
    res.seconds = res.seconds or time.perf_counter() - t0
    return res, interrupted


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"exit({exc.code})"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, BastionError) else f"{type(exc).__name__}: {text}"


def _load(loaded: LoadedPolicy, limit: int | None) -> tuple[Target | None, Dataset | None, Any]:
    pol = loaded.policy
    if pol.target is None or pol.data is None:
        return None, None, None
    base = loaded.base_dir
    d = pol.data
    with loaded.blame("data", "source"):
        data = load_data(_rel(d.source, base), limit=limit or d.limit, seed=d.seed, label=d.label,
                         image_size=d.image_size)
    t = pol.target
    kwargs: dict[str, Any] = {}
    if t.http:
        kwargs.update(t.http)
    if t.features:
        kwargs["features"] = t.features
    model_spec = _rel(t.model, base) if t.model.startswith("python:") else resolve_model_spec(t.model, base)
    with loaded.blame("target", "model"):
        scan_model_file(model_spec)  # never open a model file that could run code
        target = load_target(model_spec, input_shape=tuple(t.input_shape) if t.input_shape else None,
                             bounds=t.bounds, classes=t.classes, output=t.output, data=data,
                             query_budget=t.query_budget, **kwargs)
    if t.bpda is not None:
        with loaded.blame("target", "bpda"):
            target = _with_bpda(target, t.bpda, base)
    if t.randomized is not None:  # declared: attacks evaluate in expectation (or not) without probing
        target.randomized = t.randomized
    for i, spec in enumerate(t.defenses):
        with loaded.blame("target", "defenses", i):
            from bastion.core.defense import DEFENSES

            target = DEFENSES[spec.name](**spec.params).wrap(target, seed=pol.seed)
    with loaded.blame("data", "source"):
        y = align_labels(data, target)
        data = Dataset(target.input_spec.validate(data.x, what=f"data '{d.source}'"), data.y, data.name,
                       data.feature_names, data.meta)
    return target, data, y


def _with_bpda(target: Target, spec: Any, base: Path) -> Target:
    """The policy's BPDA declaration on a torch target (its python: functions are user code, as a
    python: model is)."""
    from bastion.core.defense import BPDA
    from bastion.core.loader import import_object
    from bastion.core.targets.torch_target import TorchTarget

    if not isinstance(target, TorchTarget):
        raise UsageError(f"target.bpda needs a torch model; '{target.name}' is a {target.kind} target",
                         hint="BPDA changes how gradients cross a torch model; remove target.bpda for this model")
    ref = spec.substitute or spec.forward
    fn = import_object(_rel(ref, base).removeprefix("python:")) if ref else None
    return target.with_bpda(BPDA(module=spec.module, substitute=fn))


def _load_v2(loaded: LoadedPolicy) -> tuple[dict[str, Dataset], Any]:
    """Policy v2's other datasets (train, holdout, ...) and its trainer, as a TrainFn."""
    pol, base = loaded.policy, loaded.base_dir
    datasets: dict[str, Dataset] = {}
    for role, d in (pol.datasets.given().items() if pol.datasets else ()):
        if role == "eval":
            continue
        with loaded.blame("datasets", role, "source"):
            datasets[role] = load_data(_rel(d.source, base), limit=d.limit, seed=d.seed, label=d.label,
                                       image_size=d.image_size)
    trainer = None
    if pol.trainer is not None:
        from bastion.core.loader import import_object
        from bastion.core.training import sklearn_train_fn

        with loaded.blame("trainer"):
            scheme, _, ref = _rel(pol.trainer.spec, base).partition(":")
            obj = import_object(ref)
            try:
                trainer = sklearn_train_fn(obj(**pol.trainer.params)) if scheme == "sklearn" else obj
            except TypeError as exc:
                raise UsageError(f"cannot build the estimator '{ref}' with params {pol.trainer.params}: {exc}") \
                    from exc
    return datasets, trainer


def _rel(spec: str, base: Path) -> str:
    """Resolve a relative file path inside a spec against the policy's folder."""
    scheme, sep, rest = spec.partition(":")
    if sep and len(scheme) > 1:
        if scheme == "python":  # python:path/file.py:factory — the file relative to the policy
            module, colon, attr = rest.rpartition(":")
            if module.endswith(".py") and not Path(module).is_absolute() and (base / module).is_file():
                return f"python:{base / module}{colon}{attr}"
            return spec
        if scheme in ("demo", "http"):
            return spec
        path_part, q, query = rest.partition("?")
        parts = [str(base / p) if p and not Path(p).is_absolute() and (base / p).exists() else p
                 for p in path_part.split(",")]
        return f"{scheme}:{','.join(parts)}{q}{query}"
    return str(base / spec) if not Path(spec).is_absolute() and (base / spec).exists() else spec


def _prepare_out_dir(out: Path, what: str) -> None:
    """Refuse an output path that is a file or cannot be created, before anything runs. (The
    first ``report.json`` written removes the reports of an earlier run: no stale results.)"""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{what} '{out}' is a file, not a directory",
                         hint="give a directory for the reports (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} '{out}': cannot write reports there: {exc.strerror or exc}") from exc


def _write(result: ScanResult, out: Path, formats: tuple[str, ...]) -> None:
    from bastion.outputs.report import write_reports

    write_reports(result, out, formats=formats)


def _write_all(result: ScanResult, out: Path, formats: list[str], write: bool) -> None:
    """Write every report format; Ctrl-C or SIGTERM meanwhile is held until the set is complete."""
    if not write:
        return
    with _signals_held() as pending:
        _write(result, out, tuple(dict.fromkeys(["json", *formats])))
    if pending:
        log.warning("interrupt received while the reports were written; they are complete")


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Defer SIGINT and SIGTERM for the duration of the block (main thread only)."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _finish(result: ScanResult, loaded: LoadedPolicy, stopped: str | None) -> None:
    pol = loaded.policy
    mark_untrusted(result.checks)  # a sign of gradient masking puts the evasion figures it concerns in doubt
    result.gates = [g.evaluate(result.checks, loaded.gate_reads[i]) for i, g in enumerate(loaded.gates)]
    failed_gates = [g for g in result.gates if not g.passed]
    too_severe = [f for f in result.findings if pol.fail_on is not None and f.severity.rank >= pol.fail_on.rank]
    bad_checks = [c for c in result.checks if c.status != "complete"]
    missing = len(loaded.checks) - len(result.checks)
    incomplete = bool(stopped or bad_checks or missing)
    result.verdict = "fail" if failed_gates or too_severe or incomplete else "pass"
    if incomplete:
        result.status = "incomplete"
        parts = [stopped] if stopped else []
        if missing:
            parts.append(f"{missing} check(s) not run")
        parts += [f"check '{c.name}' {c.status}" + (f": {c.reason}" if c.reason else "") for c in bad_checks]
        result.status_reason = "; ".join(parts)
    else:
        result.status, result.status_reason = "complete", None
    result.finished_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    from bastion.outputs.report.summary import plain_verdict

    result.summary = plain_verdict(result)

