"""The ``defense-eval`` check: is a defense robust, or does it only hide gradients?

The same white-box attack runs three times on the same inputs at each ε: on the undefended model
(the target without its ``target.defenses``), on the defended model non-adaptively (the deployed
model's own gradients: none through a non-differentiable step, one draw of its randomness) and on
the defended model adaptively (its declared BPDA/EOT path). When the non-adaptive robust accuracy
exceeds the adaptive one by more than ``tolerance``, a finding says the defense only obfuscates
gradients (Athalye, Carlini & Wagner 2018, arXiv:1802.00420); the defense is credited with the
adaptive figure, and the non-adaptive figures are marked untrusted (no gate may pass on them).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, field_validator

from bastion.attacks.base import Attack, AttackResult, get_attack
from bastion.attacks.curve import robustness_curve
from bastion.campaign.checks.base import (
    Check,
    CheckContext,
    CheckParams,
    Interrupted,
    register_check,
    stopped_by_failure,
)
from bastion.campaign.checks.evasion import NORM_SYMBOL, EvasionParams, robustness_severity
from bastion.campaign.gates import GateView
from bastion.campaign.rules import EVASION_RULE, OBFUSCATION_RULE
from bastion.core.defense import DefendedTarget, DifferentiableDefendedTarget, NonAdaptiveView
from bastion.core.params import EpsList
from bastion.core.results import CheckResult, Finding, RobustnessCurve
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.errors import UsageError

SETTINGS = ("undefended", "non-adaptive", "adaptive")
NOT_CREDITED = ("non-adaptive figure: the defense's own gradients (no BPDA/EOT); it says how much a naive evaluation "
                "overstates robustness and is never credited to the defense")


class DefenseEvalParams(CheckParams):
    attack: str = Field(default="pgd", description="A registered white-box (gradient) attack.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the attack.")
    norm: Literal["linf", "l2"] = "linf"
    eps: EpsList = Field(default_factory=lambda: [0.1])
    tolerance: float = Field(default=0.05, ge=0, le=1, description=(
        "How far the non-adaptive robust accuracy may exceed the adaptive one before the defense is said to "
        "obfuscate gradients (a ratio)."))

    @field_validator("attack")
    @classmethod
    def _known(cls, v: str) -> str:
        return EvasionParams._known(v)


def undefended(target: Target) -> Target:
    """The model inside every defense wrapped around ``target``."""
    while isinstance(target, DefendedTarget):
        target = target.inner
    return target


@register_check
class DefenseEvalCheck(Check):
    kind = "defense-eval"
    Params = DefenseEvalParams
    requires = frozenset({"gradients"})
    threat_fields = ("norm", "eps")
    metric_names = frozenset({"robust_accuracy", "clean_accuracy", "obfuscation_gap"})

    def __init__(self, name: str, params: DefenseEvalParams) -> None:
        super().__init__(name, params)
        self.params: DefenseEvalParams = params
        for key in ("eps", "norm", "targeted"):
            if key in params.params:
                raise UsageError(f"set '{key}' on the check itself, not inside 'params'")
        self.attack: Attack = get_attack(params.attack, eps=params.eps[0], norm=params.norm, **params.params)
        if not self.attack.needs_gradients or self.attack.minimal:
            raise UsageError(f"defense-eval compares gradient attacks with and without the adaptive path; "
                             f"'{params.attack}' is {'a minimal-perturbation' if self.attack.minimal else 'a black-box'}"
                             f" attack", hint="use pgd, apgd-ce, apgd-dlr or fgsm")
        # the naive run takes one draw per gradient (no EOT), as an evaluation unaware of the defense would
        naive = {**params.params, "eot_iter": 1} if "eot_iter" in type(self.attack.params).model_fields \
            else dict(params.params)
        self.naive: Attack = get_attack(params.attack, eps=params.eps[0], norm=params.norm, **naive)

    def gate_view(self) -> GateView:
        p = self.params
        return GateView(self.name, frozenset({self.name, self.kind, p.attack}), self.metric_names,
                        {"attack": frozenset({p.attack}), "norm": frozenset({p.norm}),
                         "eps": frozenset(f"{e:g}" for e in p.eps), "setting": frozenset(SETTINGS)})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        if not isinstance(target, DifferentiableDefendedTarget):
            raise UsageError(f"check '{self.name}' evaluates a defense, but target '{target.name}' has none",
                             hint="wrap the model in defenses: target.defenses: [{kind: jpeg, quality: 75}] "
                                  "(bit-depth, median-smoothing, spatial-smoothing, jpeg, rescale, inference-noise, "
                                  "transform-chain)")
        p, t0 = self.params, time.perf_counter()
        runs = {"undefended": (self.attack, undefended(target)), "non-adaptive": (self.naive, NonAdaptiveView(target)),
                "adaptive": (self.attack, target)}
        results: dict[str, list[AttackResult]] = {}
        root = RunContext(seed=ctx.seed).spawn(self.name)
        with ctx.bar(f"{self.name}: {p.attack} × {len(p.eps)} ε × 3", 3 * len(y) * len(p.eps)) as advance:
            for setting, (attack, model) in runs.items():  # same seed per setting: the same random starts
                results[setting] = robustness_curve(attack, model, data.x, y, p.eps, progress=advance,
                                                    ctx=root.spawn("attack"))
        res = self._result(target, results, time.perf_counter() - t0)
        if any(r.interrupted for rs in results.values() for r in rs):
            raise Interrupted(res)
        return res

    def _result(self, target: DefendedTarget, results: dict[str, list[AttackResult]], seconds: float) -> CheckResult:
        p = self.params
        runs = [r for rs in results.values() for r in rs]
        status = ("complete" if all(r.complete for r in runs) else
                  "error" if any(map(stopped_by_failure, runs)) else "incomplete")
        defense = " + ".join(_defenses(target))
        res = CheckResult(name=self.name, kind=self.kind, status=status, seconds=seconds,
                          reason=next((r.reason for r in runs if r.reason), None))
        where = {"attack": p.attack, "norm": p.norm}
        clean = {s: results[s][0].clean_accuracy for s in ("undefended", "adaptive")}
        for setting, value in clean.items():
            res.measure("clean_accuracy", value, "ratio", **where, setting=setting)
        table = []
        for i, eps in enumerate(p.eps):
            row = {"eps": eps, **{s: results[s][i].robust_accuracy for s in SETTINGS}}
            row["obfuscation_gap"] = row["non-adaptive"] - row["adaptive"]
            table.append(row)
            for s in SETTINGS:
                m = res.measure("robust_accuracy", row[s], "ratio", **where, eps=eps, setting=s)
                if s == "non-adaptive":
                    m.untrusted = NOT_CREDITED
            res.measure("obfuscation_gap", row["obfuscation_gap"], "ratio", **where, eps=eps)
        for s in SETTINGS:  # one figure: the three settings' robust accuracy against ε
            res.artifacts.append(RobustnessCurve(
                attack=f"{p.attack}, {s}" if s == "undefended" else f"{p.attack} on {defense}, {s}", norm=p.norm,
                eps=list(p.eps), robust_accuracy=[row[s] for row in table],
                clean_accuracy=clean["undefended" if s == "undefended" else "adaptive"]))
        res.metrics = {"attack": p.attack, "norm": p.norm, "defense": defense, "tolerance": p.tolerance,
                       "adaptive_path": target.describe()["adaptive"], "table": table, "clean_accuracy": clean}
        res.findings += self._findings(defense, table, results)
        return res

    def _findings(self, defense: str, table: list[dict[str, Any]],
                  results: dict[str, list[AttackResult]]) -> list[Finding]:
        p, norm = self.params, NORM_SYMBOL[self.params.norm]
        clean = results["adaptive"][-1].clean_accuracy
        worst = table[-1]
        out: list[Finding] = []
        masked = [row for row in table if row["obfuscation_gap"] > p.tolerance]
        if masked:
            row = max(masked, key=lambda r: r["obfuscation_gap"])
            out.append(get_rule(OBFUSCATION_RULE).finding(
                title=(f"{defense} only obfuscates gradients: robust accuracy {row['non-adaptive']:.0%} under "
                       f"non-adaptive {p.attack} falls to {row['adaptive']:.0%} under the adaptive attack "
                       f"({norm}, ε={row['eps']:g}); it is credited with {row['adaptive']:.0%}"),
                check=self.name,
                description=(f"The same {p.attack} attack run through the defense's declared adaptive path "
                             f"(BPDA/EOT) fools inputs the non-adaptive run did not, by more than the tolerance "
                             f"{p.tolerance:.0%} (Athalye, Carlini & Wagner 2018, arXiv:1802.00420). Undefended "
                             f"model: {row['undefended']:.0%}."),
                metrics={"attack": p.attack, "norm": p.norm, "eps": [r["eps"] for r in masked], "defense": defense,
                         "table": masked, "credited_robust_accuracy": row["adaptive"], "tolerance": p.tolerance}))
        title = (f"{defense} under adaptive {p.attack} ({norm}, ε={worst['eps']:g}): accuracy {clean:.0%} -> "
                 f"{worst['adaptive']:.0%} (undefended model: {worst['undefended']:.0%})")
        out.append(get_rule(EVASION_RULE["evasion-whitebox"]).finding(
            title=title, severity=robustness_severity(clean, worst["adaptive"]), check=self.name,
            description=f"The robust accuracy credited to the defense is the adaptive one, measured on "
                        f"{len(results['adaptive'][-1].y)} inputs.",
            metrics={"attack": p.attack, "norm": p.norm, "eps": worst["eps"], "clean_accuracy": clean,
                     "robust_accuracy": worst["adaptive"], "defense": defense}))
        return out


def _defenses(target: Target) -> list[str]:
    names = []
    while isinstance(target, DefendedTarget):
        names.append(target.defense.label)
        target = target.inner
    return names[::-1]
