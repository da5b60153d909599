"""Run a campaign: policy → target and data → checks → findings → gates → ScanResult.

``report.json`` is rewritten atomically after every check, so a crash or Ctrl-C leaves a valid
report with ``status: incomplete`` and every check finished so far.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion import __version__
from bastion.campaign.checks.base import CheckContext, Interrupted, ProgressFactory
from bastion.campaign.policy import LoadedPolicy, load_policy
from bastion.campaign.preflight import scan_model_file
from bastion.core.data import Dataset, align_labels
from bastion.core.loader import load_data, load_target
from bastion.core.redact import redact, redact_tree
from bastion.core.results import CheckResult, ScanResult
from bastion.core.schemes import resolve_model_spec
from bastion.core.targets.base import Target
from bastion.errors import BastionError, UsageError
from bastion.outputs.report import write_reports

log = logging.getLogger(__name__)

CheckCallback = Callable[[CheckResult], None]


def scan(policy: str | Path | dict[str, Any] | LoadedPolicy, *, out_dir: str | Path | None = None,
         progress: ProgressFactory | None = None, on_check: CheckCallback | None = None,
         limit: int | None = None, write: bool = True, workers: int | None = None) -> ScanResult:
    """Run every check of a policy and return the ScanResult (reports written to ``out_dir``,
    default: the policy's ``output.dir`` relative to the current directory). ``workers``: worker
    processes for checks that split into units (``ctx.options["workers"]``; default the CPU count)."""
    loaded = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
    pol = loaded.policy
    out = Path(out_dir) if out_dir is not None else Path(pol.output.dir)
    target_spec = redact(pol.target.model) if pol.target else ""  # a URL may hold credentials
    data_spec = redact(pol.data.source) if pol.data else ""
    result = ScanResult(tool={"name": "bastion", "version": __version__},
                        target={"spec": target_spec} if pol.target else {},
                        data={"spec": data_spec} if pol.data else {})
    result.target["policy"] = pol.name
    result.policy_file = str(loaded.path) if loaded.path else None
    result.fail_on = pol.fail_on

    def save() -> None:
        if write:
            write_reports(result, out, formats=("json",))

    target, data, y = _load(loaded, limit)
    if "torch" in sys.modules:  # recorded for reproducibility: timings depend on it
        result.tool["torch_threads"] = str(sys.modules["torch"].get_num_threads())
    if target is not None:
        result.target.update(target.describe(), spec=target_spec)
    if data is not None:
        result.data.update(data.describe(), spec=data_spec)
    ctx = CheckContext(target=target, data=data, y=y, seed=pol.seed, out_dir=out, progress=progress,
                       policy_dir=loaded.base_dir, options={"workers": workers})
    result.status, result.status_reason = "incomplete", "scan in progress"
    save()
    interrupted = False
    try:
        for check in loaded.checks:
            t0 = time.perf_counter()
            try:
                res = check.run(ctx)
            except UsageError:
                raise
            except Interrupted as stop:
                result.checks.append(stop.partial)
                if on_check:
                    on_check(stop.partial)
                raise KeyboardInterrupt from None
            except BastionError as exc:
                res = CheckResult(name=check.name, kind=check.kind, status="error", reason=redact(exc))
                log.error("check %s failed: %s", check.name, exc)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a crash in one check must not lose the others
                res = CheckResult(name=check.name, kind=check.kind, status="error",
                                  reason=redact(f"{type(exc).__name__}: {exc}"))
                log.exception("check %s crashed", check.name)
            res.seconds = res.seconds or time.perf_counter() - t0
            result.checks.append(res)
            if on_check:
                on_check(res)
            save()
    except KeyboardInterrupt:
        interrupted = True
        result.status_reason = "interrupted by the user"
    _finish(result, loaded, interrupted)
    if write:
        write_reports(result, out, formats=tuple(dict.fromkeys(["json", *pol.output.formats])))
    if interrupted:
        raise KeyboardInterrupt
    return redact_tree(result)  # what callers print (scan --json) is as clean as the reports


def _load(loaded: LoadedPolicy, limit: int | None) -> tuple[Target | None, Dataset | None, Any]:
    pol = loaded.policy
    if pol.target is None or pol.data is None:
        return None, None, None
    base = loaded.base_dir
    d = pol.data
    data = load_data(_rel(d.source, base), limit=limit or d.limit, seed=d.seed, label=d.label,
                     image_size=d.image_size)
    t = pol.target
    kwargs: dict[str, Any] = {}
    if t.http:
        kwargs.update(t.http)
    if t.features:
        kwargs["features"] = t.features
    model_spec = resolve_model_spec(t.model, base)
    scan_model_file(model_spec)  # never open a model file that could run code
    target = load_target(model_spec, input_shape=tuple(t.input_shape) if t.input_shape else None,
                         bounds=t.bounds, classes=t.classes, output=t.output, data=data,
                         query_budget=t.query_budget, **kwargs)
    y = align_labels(data, target)
    data = Dataset(target.input_spec.validate(data.x, what=f"data '{d.source}'"), data.y, data.name,
                   data.feature_names, data.meta)
    return target, data, y


def _rel(spec: str, base: Path) -> str:
    """Resolve a relative file path inside a spec against the policy's folder."""
    scheme, sep, rest = spec.partition(":")
    if sep and len(scheme) > 1:
        if scheme in ("demo", "python", "http"):
            return spec
        path_part, q, query = rest.partition("?")
        parts = [str(base / p) if p and not Path(p).is_absolute() and (base / p).exists() else p
                 for p in path_part.split(",")]
        return f"{scheme}:{','.join(parts)}{q}{query}"
    return str(base / spec) if not Path(spec).is_absolute() and (base / spec).exists() else spec


def _finish(result: ScanResult, loaded: LoadedPolicy, interrupted: bool) -> None:
    pol = loaded.policy
    result.gates = [g.evaluate(result.checks) for g in loaded.gates]
    failed_gates = [g for g in result.gates if not g.passed]
    too_severe = [f for f in result.findings if pol.fail_on is not None and f.severity.rank >= pol.fail_on.rank]
    result.verdict = "fail" if failed_gates or too_severe else "pass"
    bad_checks = [c for c in result.checks if c.status in ("incomplete", "error")]
    missing = len(loaded.checks) - len(result.checks)
    if interrupted or bad_checks or missing:
        result.status = "incomplete"
        parts = []
        if interrupted:
            parts.append("interrupted by the user")
        if missing:
            parts.append(f"{missing} check(s) not run")
        parts += [f"check '{c.name}' {c.status}: {c.reason}" for c in bad_checks]
        result.status_reason = "; ".join(parts)
    else:
        result.status, result.status_reason = "complete", None
    result.finished_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    from bastion.outputs.report.summary import plain_verdict

    result.summary = plain_verdict(result)
