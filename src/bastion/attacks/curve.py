"""Robustness curves: one attack at several ε, each ε attacking only the points still robust."""

from __future__ import annotations

import numpy as np

from bastion.attacks.base import Attack, AttackResult, ProgressFn
from bastion.core.metrics import perturbation_norms
from bastion.core.targets.base import Target


def robustness_curve(attack: Attack, target: Target, x: np.ndarray, y: np.ndarray, epsilons: list[float], *,
                     progress: ProgressFn | None = None) -> list[AttackResult]:
    """Run ``attack`` for each ε in increasing order. An adversarial input found at a smaller ε is
    also one at every larger ε, so each ε only attacks the inputs still classified correctly."""
    results: list[AttackResult] = []
    x = target.input_spec.validate(x)
    x_best, fooled = x.copy(), np.zeros(len(x), bool)
    for eps in sorted(float(e) for e in epsilons):
        todo = np.flatnonzero(~fooled)
        if len(todo) == 0:
            prev = results[-1]
            results.append(AttackResult(**{**prev.__dict__, "eps": eps, "queries": 0, "seconds": 0.0}))
            continue
        res = attack.clone(eps=eps).run(target, x[todo], y[todo], progress=progress)
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
