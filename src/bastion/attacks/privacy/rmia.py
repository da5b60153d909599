"""RMIA, the robust membership inference attack (Zarifzadeh, Liu & Shokri 2024, "Low-Cost
High-Power Membership Inference Attacks", arXiv:2312.03262).

A record x is a member when the target raises its probability more than it raises that of
population records z: with Pr(x | θ) the target's probability of x's own label and Pr(x) its
average over reference models,

    score(x) = Pr_z[ (Pr(x | θ) / Pr(x)) / (Pr(z | θ) / Pr(z)) > γ ].

It works with a single reference model. ``offline`` (reference models trained on reference
records only) approximates Pr(x) from the OUT models by the paper's linear rule
Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2; ``online`` averages over models that did and did not
train on x. The population z is the reference records that at least one reference model did not
train on. Scores of all records come at once from one sort of the z ratios.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.membership import MembershipAttackParams, MembershipInference, MembershipSplits
from bastion.attacks.privacy.shadows import (
    Augment,
    augmented,
    query_records,
    shadow_outputs,
    true_class_probability,
)
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.trained import predict_all
from bastion.errors import UsageError


class RMIAParams(MembershipAttackParams):
    reference_models: int = Field(default=1, ge=1, le=1024, description="Reference models to train.")
    mode: Literal["online", "offline"] = Field(default="offline",
                                               description="Reference models with and without each record, or without.")
    offline_a: float = Field(default=0.3, ge=0.0, le=1.0,
                             description="Offline: a in Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2.")
    gamma: float = Field(default=1.0, gt=0.0, description="Threshold on the likelihood ratio of x over z.")
    augment: Augment = Field(default="none", description="Extra queries per record: flip (images mirrored) or "
                            "shift (moved one pixel four ways).")
    cache: bool = Field(default=True, description="Reuse reference models trained before (bastion's cache folder).")


class RMIA(MembershipInference):
    """RMIA (Zarifzadeh et al. 2024): the target's likelihood ratio of x against population records z."""

    name = "rmia"
    needs_trainer = True
    Params = RMIAParams

    def needs_reference(self) -> bool:
        return True

    def models(self) -> int:
        return int(self.params.reference_models)  # type: ignore[attr-defined]

    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        p: RMIAParams = self.params  # type: ignore[assignment]
        online = p.mode == "online"
        if online and p.reference_models < 2:
            raise UsageError("online RMIA needs at least 2 reference models", hint="or use mode: offline")
        q = query_records(splits)
        out = shadow_outputs(trainer, q, n_models=p.reference_models, online=online, augment=p.augment,
                             spec=target.input_spec, classes=target.classes, ctx=ctx, cache=p.cache, like=target)
        pt = true_class_probability(predict_all(target, augmented(q.x, p.augment)), q.y)  # (n_aug, n_q)
        pr = true_class_probability(out.logp, q.y)  # (m, n_aug, n_q)
        if online:
            px = pr.mean(0)
            z = np.arange(q.reference.start, len(q.x))
        else:
            w = np.broadcast_to(~out.keep[:, None, :], pr.shape).astype(np.float64)
            n_out = w.sum(0)
            px_out = (pr * w).sum(0) / np.maximum(n_out, 1)
            px = (1 + p.offline_a) / 2 * px_out + (1 - p.offline_a) / 2
            z = np.flatnonzero((~out.keep).any(0)[q.reference]) + q.reference.start
        if len(z) == 0:
            raise UsageError("RMIA found no population record that a reference model did not train on",
                             hint="give more reference records")
        tiny = np.finfo(np.float64).tiny
        ratio = pt / np.maximum(px, tiny)  # (n_aug, n_q)
        scores = []
        for a in range(ratio.shape[0]):
            rz = np.sort(ratio[a, z])
            scores.append(np.searchsorted(rz, ratio[a, q.targets] / p.gamma, side="left") / len(z))
        score = np.mean(scores, axis=0)
        return score[q.members], score[q.non_members]
