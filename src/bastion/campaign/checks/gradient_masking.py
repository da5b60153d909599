"""The ``gradient-masking`` check: sanity checks that must pass before a white-box robustness number
is trusted (Athalye et al. 2018, arXiv:1802.00420; Carlini et al. 2019, arXiv:1902.06705; Croce &
Hein 2020, arXiv:2003.01690).

Runs :mod:`bastion.attacks.evasion.sanity` on a sample of the data and turns every sign it sees
into a finding that states the count, interval and test behind it, what it means and what to do
instead. Each finding says which evasion results it puts in doubt
(``metrics["concerns"]``: those of gradient-based attacks, or of every attack); the runner marks
them untrusted (:mod:`bastion.campaign.trust`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from bastion.attacks.base import AttackResult, EvasionAttack, available_attacks, get_attack
from bastion.attacks.evasion.sanity import (
    SanityResult,
    Significance,
    check_blackbox_vs_whitebox,
    check_gradients,
    check_large_eps,
    check_output_kind,
    check_randomized,
    check_unbounded,
    full_range_eps,
)
from bastion.campaign.checks.base import (
    Check,
    CheckContext,
    CheckFailed,
    CheckParams,
    Interrupted,
    register_check,
    stopped_by_failure,
)
from bastion.campaign.gates import GateView
from bastion.campaign.rules import MASKING_CONCERNS, MASKING_RULE
from bastion.core.results import CheckResult
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.targets.base import DifferentiableTarget

_CONCERNS_TEXT = {"gradient": "gradient-based attacks", "all": "every attack (each judged a randomised model on a "
                  "single draw)"}


class GradientMaskingParams(CheckParams):
    n_samples: int = Field(default=100, gt=0, description="Inputs used for the checks (a seeded sample).")
    eps: float = Field(default=0.1, gt=0, allow_inf_nan=False, description="ε of the white-box vs black-box comparison.")
    norm: Literal["linf", "l2"] = "linf"
    repeats: int = Field(default=3, ge=2, description="Identical calls compared by the randomisation check.")
    whitebox: str = Field(default="apgd-ce", description="White-box attack of the comparison.")
    blackbox: str = Field(default="square", description="Black-box attack of the comparison.")
    blackbox_queries: int = Field(default=1000, gt=0, description="Per-sample query budget of the black-box attack.")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Level of every test: a sign resting on a share of "
                         "inputs fires only when that share is above its tolerated rate at p < alpha.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Confidence of the intervals in the findings.")
    randomized_atol: float = Field(default=1e-6, ge=0, allow_inf_nan=False,
                                   description="Output difference between identical calls taken as randomness.")
    max_saturated_rate: float = Field(default=0.5, ge=0, lt=1,
                                      description="Tolerated share of inputs with a saturated softmax.")
    max_zero_gradient_rate: float = Field(default=0.02, ge=0, lt=1,
                                          description="Tolerated share of inputs with zero/non-finite gradients.")
    min_blackbox_only_rate: float = Field(default=0.03, ge=0, le=1, description="Minimum effect: share of attacked "
                                          "inputs only the black-box attack fooled before that signal fires.")
    large_eps: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="ε of the large-ε check "
                                    "(default: the whole input range); the white-box attack runs at it.")
    max_large_eps_accuracy: float = Field(default=0.05, ge=0, lt=1,
                                          description="Tolerated robust accuracy at the large ε.")
    unbounded: str | None = Field(default="deepfool", description="Unbounded (minimal-perturbation) attack that "
                                  "must fool every correctly classified input; null skips that check.")
    max_unbounded_failure_rate: float = Field(default=0.02, ge=0, lt=1,
                                              description="Tolerated share of inputs the unbounded attack fails on.")

    @field_validator("unbounded")
    @classmethod
    def _minimal(cls, v: str | None) -> str | None:
        if v is None:
            return v
        attacks = available_attacks()
        if v not in attacks:
            raise ValueError(f"unknown attack '{v}'; available: {', '.join(attacks)}")
        if not attacks[v].minimal:
            minimal = ", ".join(n for n, a in attacks.items() if a.minimal)
            raise ValueError(f"'{v}' is bounded by ε; the unbounded check needs a minimal-perturbation attack "
                             f"({minimal})")
        return v

    @property
    def significance(self) -> Significance:
        return Significance(alpha=self.alpha, confidence=self.confidence)

    @field_validator("whitebox", "blackbox")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in available_attacks():
            raise ValueError(f"unknown attack '{v}'; available: {', '.join(available_attacks())}")
        return v

    @field_validator("blackbox")
    @classmethod
    def _black_box(cls, v: str) -> str:
        if available_attacks()[v].needs_gradients:
            raise ValueError(f"'{v}' uses gradients; the comparison needs a black-box attack (e.g. square)")
        return v

    @field_validator("whitebox")
    @classmethod
    def _white_box(cls, v: str) -> str:
        if not available_attacks()[v].needs_gradients:
            raise ValueError(f"'{v}' does not use gradients; the comparison needs a white-box attack (e.g. apgd-ce)")
        return v


@register_check
class GradientMaskingCheck(Check):
    """Signs of gradient masking: randomised outputs, non-logit outputs, zero/non-finite gradients,
    black-box beating white-box, robust accuracy that does not fall at a large ε, an unbounded
    attack that does not always succeed."""

    kind = "gradient-masking"
    Params = GradientMaskingParams
    threat_fields = ("norm", "eps")

    @classmethod
    def threat_params(cls, threat: dict[str, Any]) -> dict[str, Any]:
        """One ε for the comparison: the largest of the threat's."""
        out = super().threat_params(threat)
        if isinstance(out.get("eps"), list):
            out["eps"] = max(out["eps"])
        return out

    def __init__(self, name: str, params: GradientMaskingParams) -> None:
        super().__init__(name, params)
        self.params: GradientMaskingParams = params

    def gate_view(self) -> GateView:
        sanity = frozenset(MASKING_RULE)
        return GateView(self.name, frozenset({self.name, self.kind}), None, {"sanity": sanity})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        p = self.params
        t0 = time.perf_counter()
        n = min(p.n_samples, len(y))
        idx = np.sort(np.random.default_rng(ctx.seed).choice(len(y), size=n, replace=False))
        x, yy = target.input_spec.validate(data.x[idx]), np.asarray(y)[idx]
        sig = p.significance
        results: list[SanityResult] = [check_randomized(target, x, repeats=p.repeats, atol=p.randomized_atol, sig=sig)]
        notes: list[str] = []
        view = target.adaptive_view()  # where white-box attacks take gradients (BPDA, EOT when declared)
        if isinstance(target, DifferentiableTarget) and isinstance(view, DifferentiableTarget):
            if view is not target:
                notes.append(f"output and gradient checks taken through the declared adaptive path '{view.name}', "
                             "as white-box attacks take them")
            results.append(check_output_kind(view, x, max_saturated_rate=p.max_saturated_rate, sig=sig))
            results.append(check_gradients(view, x, yy, max_rate=p.max_zero_gradient_rate, sig=sig))
            run = RunContext(seed=ctx.seed).spawn(self.name)
            bb_params: dict[str, Any] = ({"max_queries": p.blackbox_queries}
                                         if "max_queries" in available_attacks()[p.blackbox].Params.model_fields else {})
            white = self._attack(get_attack(p.whitebox, eps=p.eps, norm=p.norm), target, x, yy, run, results, n, t0)
            black = self._attack(get_attack(p.blackbox, eps=p.eps, norm=p.norm, **bb_params), target, x, yy, run,
                                 results, n, t0)
            results.append(check_blackbox_vs_whitebox(white, black, min_rate=p.min_blackbox_only_rate, sig=sig))
            large = p.large_eps or full_range_eps(target.input_spec, p.norm)
            if large is None:
                notes.append("large-ε check skipped: the input bounds are infinite; set large_eps")
            else:
                wide = self._attack(get_attack(p.whitebox, eps=large, norm=p.norm), target, x, yy, run, results, n, t0)
                results.append(check_large_eps(wide, max_accuracy=p.max_large_eps_accuracy, sig=sig))
            if p.unbounded is not None and results[0].flagged:
                notes.append("unbounded check skipped: the model is randomised, and a minimal-perturbation attack "
                             "stops on a boundary the randomness blurs; the large-ε check stands in for it")
            elif p.unbounded is not None:
                free = self._attack(get_attack(p.unbounded, norm=p.norm), target, x, yy, run, results, n, t0)
                results.append(check_unbounded(free, max_failure_rate=p.max_unbounded_failure_rate, sig=sig))
        else:
            notes.append("gradient checks skipped: the target is a black box (no gradients to mask)")
        return self._result(results, n, time.perf_counter() - t0, notes)

    def _attack(self, attack: EvasionAttack, target: DifferentiableTarget, x: np.ndarray, y: np.ndarray, run: RunContext,
                done: list[SanityResult], n: int, t0: float) -> AttackResult:
        """Run one attack of the checks; a partial result proves nothing (see :meth:`_stop_if_incomplete`)."""
        res = attack.run(target, x, y, None, run)
        self._stop_if_incomplete(res, done, n, t0)
        return res

    def _stop_if_incomplete(self, res: AttackResult, done: list[SanityResult], n: int, t0: float) -> None:
        """A comparison of two partial attacks proves nothing: Ctrl-C stops the scan, a failure is an error."""
        if res.complete:
            return
        status = "error" if stopped_by_failure(res) else "incomplete"
        partial = self._result(done, n, time.perf_counter() - t0, []).model_copy(update={
            "status": status, "reason": f"the {res.attack} attack of the comparison did not finish: {res.reason}"})
        if res.interrupted:
            raise Interrupted(partial)
        raise CheckFailed(partial)

    def _result(self, results: list[SanityResult], n: int, seconds: float, notes: list[str]) -> CheckResult:
        res = CheckResult(name=self.name, kind=self.kind, seconds=seconds, metrics={
            "n_samples": n, "flagged": [r.check for r in results if r.flagged],
            "checks": {r.check: {"flagged": r.flagged, "message": r.message, **r.metrics} for r in results}})
        res.measure("n_samples", n, "count")
        for r in results:
            res.measure("flagged", float(r.flagged), "count", sanity=r.check)
            for key, value in r.metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    res.measure(key, value, "", sanity=r.check)
            if r.flagged:
                rule = get_rule(MASKING_RULE[r.check])
                concerns = MASKING_CONCERNS[r.check]
                res.findings.append(rule.finding(
                    title=rule.title, check=self.name,
                    metrics={**r.metrics, "sanity": r.check, "concerns": concerns, "samples": r.samples[:20]},
                    description=f"{r.message}. This is a sign of gradient masking: white-box attacks may report "
                                f"robustness the model does not have (Athalye et al. 2018). Until it is resolved, "
                                f"the evasion results of {_CONCERNS_TEXT[concerns]} in this scan are marked "
                                "untrusted, and gates on them fail."))
        if notes:
            res.metrics["notes"] = notes
        return res

