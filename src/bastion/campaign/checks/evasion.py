"""The ``evasion`` check: one attack (any registered one) at one or more ε, turned into metrics,
pictures and a finding a non-specialist can act on."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from bastion.attacks.base import Attack, AttackResult, available_attacks, get_attack
from bastion.attacks.curve import robustness_curve
from bastion.campaign.checks.base import (
    Check,
    CheckContext,
    CheckParams,
    Interrupted,
    register_check,
    stopped_by_failure,
)
from bastion.campaign.gates import GateView
from bastion.campaign.rules import EVASION_RULE, MINIMAL_RULE
from bastion.core.results import (
    CheckResult,
    ExampleGrid,
    Finding,
    Histogram,
    QueryCurve,
    QueryLog,
    RobustnessCurve,
    Severity,
    Stage,
    StageChart,
    TabularExamples,
    TabularRow,
)
from bastion.core.metrics import METRIC_UNITS, NORM_UNITS
from bastion.core.params import EpsList
from bastion.core.rules import get_rule
from bastion.core.run import QueryLedger, RunContext
from bastion.core.threatmap import THREATS
from bastion.errors import UsageError

NORM_SYMBOL = {"linf": "L∞", "l2": "L2"}
_NOISE = {"eps", "batch_size", "seed", "targeted"}
#: Every measurement name the check can produce (what gates may read; checked when the policy loads).
MEASURED = frozenset({*METRIC_UNITS, *(f"{n}_{s}" for n in NORM_UNITS for s in ("median", "mean", "max")),
                      *(f"min_perturbation_{q}" for q in ("median", "q10", "q25", "q50", "q75", "q90"))})


class EvasionParams(CheckParams):
    attack: str = Field(default="pgd", description="Name of a registered attack.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the attack.")
    norm: Literal["linf", "l2"] = "linf"
    eps: EpsList = Field(default_factory=lambda: [0.1])
    targeted: bool = False
    query_budget: int | None = Field(default=None, gt=0)
    examples: int = Field(default=8, ge=0, le=64)

    @field_validator("attack")
    @classmethod
    def _known(cls, v: str) -> str:
        attacks = available_attacks()
        if v not in attacks:
            raise ValueError(f"unknown attack '{v}'; available: {', '.join(attacks)}")
        return v


@register_check
class EvasionCheck(Check):
    kind = "evasion"
    Params = EvasionParams
    threat_fields = ("norm", "eps", "targeted", "query_budget")

    def __init__(self, name: str, params: EvasionParams) -> None:
        super().__init__(name, params)
        self.params: EvasionParams = params
        extra = dict(params.params)
        for key in ("eps", "norm", "targeted"):
            if key in extra:
                raise UsageError(f"set '{key}' on the check itself, not inside 'params'")
        self.attack: Attack = get_attack(params.attack, eps=params.eps[0], norm=params.norm,
                                         targeted=params.targeted, **extra)

    def requirements(self) -> frozenset[str]:
        return frozenset({"gradients"}) if self.attack.needs_gradients else frozenset()

    def gate_view(self) -> GateView:
        """Bare selectors match the check, its kind or its attack; ``eps`` takes the policy's ε values
        (for a minimal-perturbation attack too: its robust accuracy is read off at each ε)."""
        p = self.params
        return GateView(self.name, frozenset({self.name, self.kind, p.attack}), MEASURED,
                        {"attack": frozenset({p.attack}), "norm": frozenset({p.norm}),
                         "eps": frozenset(f"{e:g}" for e in p.eps), "stage": None})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        p, attack = self.params, self.attack
        t0 = time.perf_counter()
        # the check's random numbers come from the policy seed and its name; its budget is its own ledger
        run = RunContext(seed=ctx.seed).spawn(self.name, ledger=QueryLedger(p.query_budget, label="check's"))
        if attack.minimal:
            with ctx.bar(f"{self.name}: {attack.name}", len(y)) as advance:
                results = [attack.run(target, data.x, y, None, run, progress=advance)]
        else:
            with ctx.bar(f"{self.name}: {attack.name} × {len(p.eps)} ε", len(y) * len(p.eps)) as advance:
                results = robustness_curve(attack, target, data.x, y, p.eps, progress=advance, ctx=run)
        result = self._result(ctx, attack, results, time.perf_counter() - t0)
        if any(r.interrupted for r in results):
            raise Interrupted(result)
        return result

    # --- turning results into a CheckResult -------------------------------------------------------
    def _result(self, ctx: CheckContext, attack: Attack, results: list[AttackResult], seconds: float) -> CheckResult:
        p = self.params
        last = results[-1]
        complete = all(r.complete for r in results)
        reason = next((r.reason for r in results if r.reason), None)
        status = "complete" if complete else "error" if any(map(stopped_by_failure, results)) else "incomplete"
        res = CheckResult(name=self.name, kind=self.kind, status=status, reason=reason, seconds=seconds,
                          metrics={"attack": attack.name, "norm": p.norm, "results": [_entry(r, p.norm) for r in results]})
        where = {"attack": attack.name, "norm": p.norm}
        if attack.minimal:
            # measured unbounded: robust accuracy exists only at each policy ε, read off the minimal norms
            stats = _minimal_stats(last, p.norm, p.eps)
            res.metrics.update(stats)
            _measure_entry(res, last, where, skip=frozenset({"robust_accuracy", "success_rate"}))
            for point in stats["results_at_eps"]:
                res.measure("robust_accuracy", point["robust_accuracy"], "ratio", **where, eps=point["eps"])
            for key, value in stats.items():
                if key.startswith("min_perturbation_"):
                    res.measure(key, value, NORM_UNITS[p.norm], **where)  # type: ignore[arg-type]
            fooled = last.success & (last.clean_pred == last.y)
            res.artifacts.append(Histogram(
                title=f"Smallest adversarial perturbation ({NORM_SYMBOL[p.norm]}, {attack.name})",
                values=[float(v) for v in last.norms[p.norm][fooled]],
                xlabel=f"{NORM_SYMBOL[p.norm]} norm (ε units)"))
        else:
            for r in results:
                _measure_entry(res, r, {**where, "eps": r.eps})
            res.measure("queries", float(sum(r.queries for r in results)), "queries", **where)
            res.artifacts.append(RobustnessCurve(attack=attack.name, norm=p.norm, eps=[r.eps for r in results],
                                                 robust_accuracy=[r.robust_accuracy for r in results],
                                                 clean_accuracy=last.clean_accuracy))
        if "stages" in last.extra:
            stages = [Stage(**{k: s[k] for k in ("stage", "robust_accuracy", "seconds", "queries") if k in s})
                      for s in last.extra["stages"]]
            res.artifacts.append(StageChart(attack=attack.name, stages=stages))
            for s in stages:
                res.measure("robust_accuracy", s.robust_accuracy, "ratio", **where, eps=last.eps, stage=s.stage)
        if "query_curve" in last.extra:
            res.artifacts.append(QueryCurve(attack=attack.name, **last.extra["query_curve"]))
        if "query_log" in last.extra:
            res.artifacts.append(QueryLog(counters=dict(last.extra["query_log"])))
        if "notes" in last.extra:
            res.metrics["notes"] = list(last.extra["notes"])
        if p.examples and ctx.target is not None:
            example = _examples(ctx, last, p.examples)
            if example is not None:
                res.artifacts.append(example)
        res.findings.append(self._finding(attack, results, res))
        return res

    def _finding(self, attack: Attack, results: list[AttackResult], res: CheckResult) -> Finding:
        last = results[-1]
        clean, robust = last.clean_accuracy, last.robust_accuracy
        norm = NORM_SYMBOL[self.params.norm]
        evidence = {"attack": attack.name, "norm": self.params.norm, "clean_accuracy": clean}
        if attack.minimal:
            med = res.metrics.get("min_perturbation_median")
            title = (f"{attack.name}: half of the inputs are fooled by a {norm} perturbation of "
                     f"{med:.3g} or less" if med is not None else f"{attack.name}: no adversarial example found")
            rule = get_rule(MINIMAL_RULE)
            severity = rule.default_severity
            evidence["min_perturbation_median"] = med
        else:
            severity = robustness_severity(clean, robust)
            title = (f"{attack.name} ({norm}, ε={last.eps:g}) lowers accuracy from {clean:.0%} to {robust:.0%}")
            if last.expectation is not None:  # a randomised model: figures are expectations over draws
                lo, hi = last.expectation.ci
                title += (f" (robust accuracy in expectation over {last.expectation.draws} draws, "
                          f"95% CI [{lo:.0%}, {hi:.0%}])")
                evidence.update(draws=last.expectation.draws, robust_accuracy_ci=[lo, hi],
                                eot_iter=last.expectation.eot)
            rule = get_rule(EVASION_RULE.get(attack.family, EVASION_RULE["evasion-whitebox"]))
            evidence.update(eps=last.eps, robust_accuracy=robust, queries=int(sum(r.queries for r in results)))
        threat = THREATS.get(attack.family, THREATS["evasion"])
        params = ", ".join(f"{k}={v}" for k, v in attack.get_params().items() if k not in _NOISE)
        return rule.finding(title=title, severity=severity, check=self.name, metrics=evidence,
                            description=f"{threat.description} Measured on {len(last.y)} inputs with "
                                        f"{attack.name} ({params}).")


def robustness_severity(clean: float, robust: float) -> Severity:
    """How bad an accuracy drop is: the share of the clean accuracy that survives the attack."""
    if clean <= 0:
        return Severity.high
    kept = robust / clean
    if kept < 0.25:
        return Severity.critical
    if kept < 0.5:
        return Severity.high
    if kept < 0.8:
        return Severity.medium
    if kept < 0.95:
        return Severity.low
    return Severity.info


def _entry(r: AttackResult, norm: str) -> dict[str, Any]:
    m = r.metrics()
    flat = {k: v for k, v in m.items() if k != "norms"}
    for name, stats in m["norms"].items():
        for stat, value in stats.items():
            flat[f"{name}_{stat}"] = value
    flat["norm"] = norm
    return flat


def _measure_entry(res: CheckResult, r: AttackResult, where: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
    """Every number of one attack run as a measurement at ``where``."""
    m = r.metrics()
    for key, unit in METRIC_UNITS.items():
        if key not in skip and m.get(key) is not None:
            res.measure(key, m[key], unit, **where)  # type: ignore[arg-type]
    for norm, stats in m["norms"].items():
        for stat, value in stats.items():
            if value is not None:
                res.measure(f"{norm}_{stat}", value, NORM_UNITS.get(norm, "eps"), **where)  # type: ignore[arg-type]


def _minimal_stats(r: AttackResult, norm: str, eps: list[float]) -> dict[str, Any]:
    fooled = r.success & (r.clean_pred == r.y)
    correct = r.clean_pred == r.y
    v = r.norms[norm][fooled]
    out: dict[str, Any] = {"n_fooled": int(fooled.sum()), "n_attacked": int(correct.sum())}
    if len(v):
        q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
        out.update({f"min_perturbation_q{int(k * 100)}": float(x) for k, x in zip([0.1, 0.25, 0.5, 0.75, 0.9], q)})
        out["min_perturbation_median"] = float(q[2])
    # robust accuracy at each policy ε, read off the distribution of minimal perturbations
    norms_all = np.where(fooled, r.norms[norm], np.inf)
    out["results_at_eps"] = [{"eps": e, "robust_accuracy": float(np.mean(correct & (norms_all > e)))} for e in eps]
    return out


def class_names(ctx: CheckContext) -> list[str]:
    """Display name of each class: the data's own names (``meta["class_names"]``, raw label ->
    name, e.g. 0 -> malignant) where it has them, else the target's class labels."""
    target = ctx.target
    assert target is not None
    labels = [str(c) for c in target.classes]
    named = ctx.data.meta.get("class_names") if ctx.data is not None else None
    return [str(named.get(c, c)) for c in labels] if isinstance(named, dict) else labels


def _examples(ctx: CheckContext, r: AttackResult, n: int) -> ExampleGrid | TabularExamples | None:
    target = ctx.target
    assert target is not None
    idx = np.flatnonzero(r.success & (r.clean_pred == r.y))[:n]
    if len(idx) == 0:
        return None
    names = class_names(ctx)
    spec = target.input_spec
    if spec.kind == "image":
        x0 = ctx.data.x[idx] if ctx.data is not None else r.x_adv[idx]
        shape = list(spec.shape if spec.shape[0] not in (1,) else spec.shape[1:])
        return ExampleGrid(attack=r.attack, eps=r.eps, shape=shape,
                           original=x0.reshape(len(idx), *shape).tolist(),
                           adversarial=r.x_adv[idx].reshape(len(idx), *shape).tolist(),
                           labels=[names[int(i)] for i in r.y[idx]],
                           adv_labels=[names[int(i)] for i in r.adv_pred[idx]],
                           confidence=[float(c) for c in r.adv_confidence[idx]])
    if spec.features is not None and ctx.data is not None:
        fnames = [f.name for f in spec.features]
        rows = []
        for i in idx:
            delta = np.abs(r.x_adv[i] - ctx.data.x[i]) / spec.scale_array()
            top = np.argsort(-delta)[:5]
            rows.append(TabularRow(label=names[int(r.y[i])], adv_label=names[int(r.adv_pred[i])],
                                   changes={fnames[j]: (float(ctx.data.x[i][j]), float(r.x_adv[i][j]))
                                            for j in top if delta[j] > 1e-6}))
        return TabularExamples(attack=r.attack, feature_names=fnames, rows=rows)
    return None
