"""Robustness curves: one attack at several ε, each ε attacking only the points still robust."""

from __future__ import annotations

import numpy as np

from bastion.attacks.base import AttackResult, EvasionAttack, ProgressFn
from bastion.core.metrics import perturbation_norms
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel


def robustness_curve(attack: EvasionAttack, target: Target, x: np.ndarray, y: np.ndarray, epsilons: list[float],
                     *, progress: ProgressFn | None = None, ctx: RunContext | None = None,
                     threat: ThreatModel | None = None) -> list[AttackResult]:
    """Run ``attack`` for each ε in increasing order. An adversarial input found at a smaller ε is
    also one at every larger ε, so each ε only attacks the inputs still classified correctly.
    All ε share one run context (``ctx``: one ledger, one seed); ``threat`` sets the norm, the
    targeting and a query budget for the whole curve. On a randomised target (a result measured in
    expectation) no input is ever settled: every ε attacks every input again."""
    ctx = ctx if ctx is not None else RunContext()
    if threat is not None and threat.query_budget is not None:
        ctx = ctx.spawn("curve", ledger=ctx.ledger.limit(threat.query_budget, "threat model's"))
    results: list[AttackResult] = []
    x = target.input_spec.validate(x)
    x_best, fooled = x.copy(), np.zeros(len(x), bool)
    for eps in sorted(float(e) for e in epsilons):
        settled = fooled if not (results and results[-1].expectation is not None) else np.zeros(len(x), bool)
        todo = np.flatnonzero(~settled)
        if len(todo) == 0:
            prev = results[-1]
            results.append(AttackResult(**{**prev.__dict__, "eps": eps, "queries": 0, "seconds": 0.0}))
            continue
        step = None if threat is None else threat.model_copy(update={"eps": eps, "query_budget": None})
        res = attack.clone(eps=eps).run(target, x[todo], y[todo], step, ctx, progress=progress)
        if res.expectation is not None and len(todo) == len(x):
            results.append(res)
            fooled = res.success.copy()
            if not res.complete:
                break
            continue
        x_best[todo] = res.x_adv
        fooled[todo] = res.success
        base = results[-1] if results else None
        clean = res.clean_pred if base is None else base.clean_pred.copy()
        if base is None:
            clean = np.empty(len(x), np.int64)
            clean[todo] = res.clean_pred
        adv_pred = (base.adv_pred.copy() if base else np.empty(len(x), np.int64))
        adv_pred[todo] = res.adv_pred
        conf = (base.adv_confidence.copy() if base else np.empty(len(x)))
        conf[todo] = res.adv_confidence
        results.append(AttackResult(
            attack=res.attack, x_adv=x_best.copy(), success=fooled.copy(),
            norms=perturbation_norms(x, x_best, target.input_spec.scale_array()), queries=res.queries,
            seconds=res.seconds, y=np.asarray(y), clean_pred=clean, adv_pred=adv_pred, adv_confidence=conf,
            eps=eps, norm=res.norm, targeted=res.targeted, complete=res.complete, reason=res.reason,
            interrupted=res.interrupted, extra=dict(res.extra)))
        if not res.complete:
            break
    return results
