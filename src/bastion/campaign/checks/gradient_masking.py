"""The ``gradient-masking`` check: sanity checks that must pass before a white-box robustness number
is trusted (Athalye et al. 2018, arXiv:1802.00420; Croce & Hein 2020, arXiv:2003.01690).

Runs :mod:`bastion.attacks.evasion.sanity` on a sample of the data and turns every sign it sees
into a finding that says what it means and what to do instead.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bastion.attacks.base import available_attacks, get_attack
from bastion.attacks.evasion.sanity import (
    SanityResult,
    check_blackbox_vs_whitebox,
    check_gradients,
    check_output_kind,
    check_randomized,
)
from bastion.campaign.checks.base import (
    Check,
    CheckContext,
    CheckParams,
    register_check,
)
from bastion.campaign.rules import MASKING_RULE
from bastion.core.results import CheckResult
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.targets.base import DifferentiableTarget

class GradientMaskingParams(CheckParams):
    n_samples: int = Field(default=100, gt=0, description="Inputs used for the checks (a seeded sample).")
    eps: float = Field(default=0.1, ge=0, description="ε of the white-box vs black-box comparison.")
    norm: Literal["linf", "l2"] = "linf"
    repeats: int = Field(default=3, ge=2, description="Identical calls compared by the randomisation check.")
    whitebox: str = Field(default="apgd-ce", description="White-box attack of the comparison.")
    blackbox: str = Field(default="square", description="Black-box attack of the comparison.")
    blackbox_queries: int = Field(default=1000, gt=0, description="Per-sample query budget of the black-box attack.")


@register_check
class GradientMaskingCheck(Check):
    """Signs of gradient masking: randomised outputs, non-logit outputs, zero/non-finite gradients,
    black-box beating white-box."""

    kind = "gradient-masking"
    Params = GradientMaskingParams

    def __init__(self, name: str, params: GradientMaskingParams) -> None:
        super().__init__(name, params)
        self.params: GradientMaskingParams = params

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        p = self.params
        t0 = time.perf_counter()
        n = min(p.n_samples, len(y))
        idx = np.sort(np.random.default_rng(ctx.seed).choice(len(y), size=n, replace=False))
        x, yy = target.input_spec.validate(data.x[idx]), np.asarray(y)[idx]
        results: list[SanityResult] = [check_randomized(target, x, repeats=p.repeats)]
        notes: list[str] = []
        if isinstance(target, DifferentiableTarget):
            results.append(check_output_kind(target, x))
            results.append(check_gradients(target, x, yy))
            attacks = available_attacks()
            if p.blackbox in attacks and p.whitebox in attacks and p.eps > 0:
                run = RunContext(seed=ctx.seed).spawn(self.name)
                white = get_attack(p.whitebox, eps=p.eps, norm=p.norm).run(target, x, yy, None, run)
                bb_params: dict[str, Any] = ({"max_queries": p.blackbox_queries}
                                             if "max_queries" in attacks[p.blackbox].Params.model_fields else {})
                black = get_attack(p.blackbox, eps=p.eps, norm=p.norm, **bb_params).run(target, x, yy, None, run)
                results.append(check_blackbox_vs_whitebox(white, black))
            else:
                notes.append(f"black-box vs white-box comparison skipped: needs registered attacks "
                             f"'{p.whitebox}' and '{p.blackbox}' and eps > 0")
        else:
            notes.append("gradient checks skipped: the target is a black box (no gradients to mask)")
        res = CheckResult(name=self.name, kind=self.kind, seconds=time.perf_counter() - t0, metrics={
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
                res.findings.append(rule.finding(
                    title=rule.title, check=self.name, metrics={**r.metrics, "samples": r.samples[:20]},
                    description=f"{r.message}. This is a sign of gradient masking: white-box attacks may report "
                                f"robustness the model does not have (Athalye et al. 2018)."))
        if notes:
            res.metrics["notes"] = notes
        return res

