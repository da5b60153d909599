"""The ``detector-eval`` check: does a detector of adversarial inputs catch attacks, and does it
survive an attacker who knows it is there?

The eval data are split at random (the policy seed): ``fit_fraction`` of the inputs calibrate the
detector's threshold (its ``fpr`` quantile), the rest measure it. On the held-out clean inputs the
check measures the false-alarm rate; on those the model classifies correctly it runs each listed
attack at each ε and measures, per attack, the attack's success rate, the detector's detection
rate on the successful adversarial inputs, and the evasion rate (inputs misclassified *and* not
flagged, over the attacked inputs). Then it runs the adaptive attack of Carlini & Wagner (2017,
arXiv:1705.07263) against the classifier and the detector together
(:class:`~bastion.campaign.detector_attack.GuardedPGD`), reported as attack ``adaptive``. When the
adaptive evasion rate exceeds ``max_evasion``, a finding says the detector is bypassed.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from bastion.attacks.base import AttackResult, get_attack
from bastion.campaign.checks.base import Check, CheckContext, CheckParams, Interrupted, register_check
from bastion.campaign.checks.evasion import NORM_SYMBOL, EvasionParams
from bastion.campaign.detector_attack import GuardedPGD
from bastion.campaign.gates import GateView
from bastion.campaign.rules import DETECTOR_RULE
from bastion.core.params import EpsList
from bastion.core.results import CheckResult, Finding, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.targets.base import DifferentiableTarget
from bastion.errors import UsageError
from bastion.monitor.adversarial import AdversarialDetector
from bastion.monitor.base import DETECTORS

ADAPTIVE = "adaptive"
METRICS = frozenset({"false_alarm_rate", "detection_rate", "attack_success_rate", "evasion_rate", "threshold"})


class DetectorEvalParams(CheckParams):
    detector: str = Field(default="feature-squeezing", description="A registered detector of adversarial inputs.")
    detector_params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the detector.")
    attacks: list[str] = Field(default_factory=lambda: ["fgsm", "pgd"], min_length=1,
                               description="Non-adaptive white-box attacks whose inputs the detector should flag.")
    attack_params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                     description="Parameters per attack name, e.g. {pgd: {steps: 40}}.")
    norm: Literal["linf", "l2"] = "linf"
    eps: EpsList = Field(default_factory=lambda: [0.1])
    fit_fraction: float = Field(default=0.5, gt=0, lt=1, description="Share of the eval inputs that calibrate the "
                                                                     "detector; the rest measure it.")
    adaptive_steps: int = Field(default=50, ge=1, le=10_000, description="Steps of the adaptive attack.")
    adaptive_c: list[float] = Field(default_factory=lambda: [0.03, 0.3, 3.0], min_length=1, description=(
        "Weights of the detector term the adaptive attack tries in turn (Carlini & Wagner's search over c)."))
    max_evasion: float = Field(default=0.05, ge=0, le=1, description=(
        "Largest share of attacked inputs the adaptive attack may get past the classifier and the detector "
        "before the detector is said to be bypassed."))

    @field_validator("eps")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if v[0] <= 0:
            raise ValueError("eps must be > 0")
        return v

    @field_validator("detector")
    @classmethod
    def _detector(cls, v: str) -> str:
        known = adversarial_detectors()
        if v not in known:
            raise ValueError(f"unknown detector of adversarial inputs '{v}'; available: {', '.join(known)}")
        return v

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        return [EvasionParams._known(a) for a in v]


def adversarial_detectors() -> list[str]:
    """The registered detectors that score inputs for being adversarial (imports them)."""
    return [n for n in DETECTORS if issubclass(DETECTORS.get_object(n), AdversarialDetector)]


@register_check
class DetectorEvalCheck(Check):
    kind = "detector-eval"
    Params = DetectorEvalParams
    requires = frozenset({"gradients"})
    threat_fields = ("norm", "eps")
    metric_names = METRICS

    def __init__(self, name: str, params: DetectorEvalParams) -> None:
        super().__init__(name, params)
        self.params: DetectorEvalParams = params
        unknown = set(params.attack_params) - set(params.attacks)
        if unknown:
            raise UsageError(f"attack_params names attacks not in 'attacks': {', '.join(sorted(unknown))}")
        self.attacks = []
        for a in params.attacks:
            extra = dict(params.attack_params.get(a, {}))
            if {"eps", "norm", "targeted"} & set(extra):
                raise UsageError(f"set eps and norm on the check itself, not in attack_params.{a}")
            attack = get_attack(a, eps=params.eps[0], norm=params.norm, **extra)
            if attack.minimal:
                raise UsageError(f"detector-eval runs attacks with an ε budget; '{a}' is a minimal-perturbation attack",
                                 hint="use fgsm, pgd, apgd-ce, apgd-dlr, square, ...")
            self.attacks.append(attack)
        # the adaptive attack's settings are refused when the policy loads, not after the other attacks ran
        GuardedPGD(eps=params.eps[0], norm=params.norm, steps=params.adaptive_steps, c=tuple(params.adaptive_c))

    def gate_view(self) -> GateView:
        p = self.params
        return GateView(self.name, frozenset({self.name, self.kind, p.detector}), METRICS,
                        {"attack": frozenset({*p.attacks, ADAPTIVE}), "norm": frozenset({p.norm}),
                         "eps": frozenset(f"{e:g}" for e in p.eps), "detector": frozenset({p.detector})})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        p, t0 = self.params, time.perf_counter()
        if not isinstance(target, DifferentiableTarget):
            raise UsageError(f"check '{self.name}' needs a white-box target: its adaptive attack follows the "
                             f"gradients of the model and the detector")
        x, y = target.input_spec.validate(data.x), np.asarray(y)
        order = np.random.default_rng(ctx.seed).permutation(len(y))
        n_fit = int(round(p.fit_fraction * len(y)))
        if n_fit < 2 or len(y) - n_fit < 2:
            raise UsageError(f"check '{self.name}' splits {len(y)} eval inputs into {n_fit} to fit the detector and "
                             f"{len(y) - n_fit} to measure it; both need at least 2", hint="use more eval data")
        fit, test = np.sort(order[:n_fit]), np.sort(order[n_fit:])
        detector = DETECTORS[p.detector](target, **p.detector_params)
        assert isinstance(detector, AdversarialDetector)
        detector.fit(x[fit])
        xt, yt = x[test], y[test]
        with target.uncounted():
            correct = target.predict_proba(xt).argmax(1) == yt
        xa, ya = xt[correct], yt[correct]
        rows: list[dict[str, Any]] = []
        root = RunContext(seed=ctx.seed).spawn(self.name)
        interrupted = False
        with ctx.bar(f"{self.name}: {len(self.attacks) + 1} attacks × {len(p.eps)} ε",
                     (len(self.attacks) + 1) * len(p.eps) * len(ya)) as advance:
            for eps in p.eps:
                for attack in self.attacks:
                    r: AttackResult = attack.clone(eps=eps).run(target, xa, ya, ctx=root.spawn(attack.name),
                                                                progress=advance)
                    interrupted |= r.interrupted
                    rows.append(self._row(detector, attack.name, eps, r.x_adv, ya, r.success))
                    if interrupted:
                        break
                if interrupted:
                    break
                adv = GuardedPGD(eps=eps, norm=p.norm, steps=p.adaptive_steps, c=tuple(p.adaptive_c)).run(
                    detector, xa, ya, root.spawn(ADAPTIVE))
                advance(len(ya))
                with target.uncounted():
                    fooled = target.predict_proba(adv).argmax(1) != ya
                rows.append(self._row(detector, ADAPTIVE, eps, adv, ya, fooled))
        far = float(detector.flags(xt).mean())
        res = self._result(detector, far, len(test), len(ya), rows, time.perf_counter() - t0, interrupted)
        if interrupted:
            raise Interrupted(res)
        return res

    @staticmethod
    def _row(detector: AdversarialDetector, attack: str, eps: float, x_adv: np.ndarray, y: np.ndarray,
             fooled: np.ndarray) -> dict[str, Any]:
        flagged = detector.flags(x_adv) if len(x_adv) else np.zeros(0, bool)
        n = max(len(y), 1)
        return {"attack": attack, "eps": eps, "attacked": len(y), "fooled": int(fooled.sum()),
                "attack_success_rate": float(fooled.sum() / n),
                "detection_rate": float(flagged[fooled].mean()) if fooled.any() else None,
                "evasion_rate": float((fooled & ~flagged).sum() / n)}

    def _result(self, detector: AdversarialDetector, far: float, n_clean: int, n_attacked: int,
                rows: list[dict[str, Any]], seconds: float, interrupted: bool) -> CheckResult:
        p = self.params
        res = CheckResult(name=self.name, kind=self.kind, status="incomplete" if interrupted else "complete",
                          reason="interrupted" if interrupted else None, seconds=seconds)
        res.measure("false_alarm_rate", far, "ratio", detector=p.detector)
        res.measure("threshold", detector.threshold, "", detector=p.detector)
        for row in rows:
            where = {"detector": p.detector, "attack": row["attack"], "norm": p.norm, "eps": row["eps"]}
            for name in ("attack_success_rate", "detection_rate", "evasion_rate"):
                res.measure(name, row[name], "ratio", **where)
        res.metrics = {"detector": p.detector, "detector_params": detector.params.model_dump(), "norm": p.norm,
                       "threshold": detector.threshold, "false_alarm_rate": far, "clean_inputs": n_clean,
                       "attacked_inputs": n_attacked, "table": rows}
        res.findings += self._findings(far, rows)
        return res

    def _findings(self, far: float, rows: list[dict[str, Any]]) -> list[Finding]:
        p, norm = self.params, NORM_SYMBOL[self.params.norm]
        adaptive = [r for r in rows if r["attack"] == ADAPTIVE]
        if not adaptive:
            return []
        worst = max(adaptive, key=lambda r: r["evasion_rate"])
        naive = [r for r in rows if r["attack"] != ADAPTIVE and r["eps"] == worst["eps"]]
        caught = ", ".join(f"{r['attack']} {r['detection_rate']:.0%}" for r in naive if r["detection_rate"] is not None)
        rule = get_rule(DETECTOR_RULE)
        if worst["evasion_rate"] <= p.max_evasion:
            return [rule.finding(
                title=(f"{p.detector}: the adaptive attack got {worst['evasion_rate']:.0%} of inputs past the classifier "
                       f"and the detector ({norm}, ε={worst['eps']:g}; false alarms {far:.0%})"),
                severity=Severity.info, check=self.name,
                description=f"Within the tolerance {p.max_evasion:.0%}. Detection of non-adaptive attacks: "
                            f"{caught or 'none succeeded'}.",
                metrics={"detector": p.detector, "attack": ADAPTIVE, **worst, "false_alarm_rate": far})]
        return [rule.finding(
            title=(f"{p.detector} is bypassed by an adaptive attack: {worst['evasion_rate']:.0%} of inputs are "
                   f"misclassified and not flagged ({norm}, ε={worst['eps']:g}; it flags "
                   f"{worst['detection_rate'] or 0:.0%} of the adaptive adversarial inputs)"),
            check=self.name,
            description=(f"Against attacks that ignore it, the detector flags {caught or 'nothing (no attack succeeded)'}"
                         f" of the successful adversarial inputs, at {far:.0%} false alarms on clean inputs; an attack "
                         f"that targets the classifier and the detector together (Carlini & Wagner 2017, "
                         f"arXiv:1705.07263) evades it."),
            metrics={"detector": p.detector, "attack": ADAPTIVE, **worst, "false_alarm_rate": far,
                     "max_evasion": p.max_evasion})]
