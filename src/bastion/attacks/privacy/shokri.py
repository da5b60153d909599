"""Shadow-model attack with a learned attack model (Shokri et al. 2017, "Membership Inference
Attacks Against Machine Learning Models", arXiv:1610.05820).

Shadow models train on random halves of the reference records, so for each of them bastion
knows which records it saw. An attack model per class (gradient-boosted trees) learns to tell,
from a shadow model's output on a record, whether the record was in its training data; applied
to the target's outputs, its probability of "member" is the score. Features: the output
probabilities sorted from the highest, and log p_y of the record's own label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.membership import MembershipAttackParams, MembershipInference, MembershipSplits
from bastion.attacks.privacy.shadows import query_records, shadow_outputs, true_class_log_probability
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.trained import predict_all


class ShokriParams(MembershipAttackParams):
    shadow_models: int = Field(default=4, ge=1, le=256, description="Shadow models to train.")
    cache: bool = Field(default=True, description="Reuse shadow models trained before (bastion's cache folder).")


class ShadowModelAttack(MembershipInference):
    """Shokri et al. (2017): an attack model learned on shadow models' outputs on their own
    training records and on others."""

    name = "shadow"
    needs_trainer = True
    Params = ShokriParams

    def needs_reference(self) -> bool:
        return True

    def models(self) -> int:
        return int(self.params.shadow_models)  # type: ignore[attr-defined]

    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.ensemble import HistGradientBoostingClassifier

        p: ShokriParams = self.params  # type: ignore[assignment]
        q = query_records(splits)
        out = shadow_outputs(trainer, q, n_models=p.shadow_models, online=False, augment="none",
                             spec=target.input_spec, classes=target.classes, ctx=ctx, cache=p.cache, like=target)
        ref = np.arange(q.reference.start, len(q.x))
        feats = np.concatenate([_features(out.logp[i, 0, ref], q.y[ref]) for i in range(len(out.logp))])
        labels = np.concatenate([out.keep[i, ref] for i in range(len(out.logp))]).astype(int)
        classes = np.tile(q.y[ref], len(out.logp))
        tq = slice(0, q.targets.stop)
        tfeat = _features(predict_all(target, [q.x[tq]])[0], q.y[tq])
        score = np.zeros(q.targets.stop)
        seed = int(ctx.rng("attack-model").integers(2**31 - 1))
        everyone = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(feats, labels)
        for c in np.unique(q.y[tq]):
            rows = q.y[tq] == c
            mine = classes == c
            model = everyone
            if mine.sum() >= 20 and len(np.unique(labels[mine])) == 2:  # one attack model per class (Shokri)
                model = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(feats[mine], labels[mine])
            score[rows] = model.predict_proba(tfeat[rows])[:, 1]
        return score[q.members], score[q.non_members]


def _features(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The probabilities sorted from the highest, and log p_y."""
    return np.column_stack([-np.sort(-np.exp(logp), axis=1), true_class_log_probability(logp, y)])
