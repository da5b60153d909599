"""Threshold attacks: a record is called a member when the model is confident on it (Yeom et
al. 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting",
arXiv:1709.01604). No shadow model; the ROC sweeps every threshold, so no threshold is chosen.

- ``loss-threshold``: score = minus the cross-entropy loss of the record's own label, log p_y;
- ``confidence-threshold``: score = the highest probability (its log), whatever the label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.attacks.privacy.membership import MembershipInference, MembershipSplits
from bastion.attacks.privacy.shadows import true_class_log_probability
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.trained import predict_all


class LossThreshold(MembershipInference):
    """Yeom et al. (2018): members have a lower loss; score = log p_y."""

    name = "loss-threshold"

    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return true_class_log_probability(predict_all(target, [x])[0], y)

        return score(splits.members_x, splits.members_y), score(splits.non_members_x, splits.non_members_y)


class ConfidenceThreshold(MembershipInference):
    """Yeom et al. (2018), label-free variant: members get more confident answers; score = max_c p_c."""

    name = "confidence-threshold"

    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        return (predict_all(target, [splits.members_x])[0].max(1),  # the log of the highest probability
                predict_all(target, [splits.non_members_x])[0].max(1))
