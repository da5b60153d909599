"""Attribute-inference attacks on tables: infer a record's sensitive column from its other
columns, its label and the model's answers.

Both attacks fill each candidate value into the record and query the model — the attacker never
needs the true value to ask:

- ``fredrikson`` (Fredrikson et al. 2014, "Privacy in Pharmacogenetics", USENIX Security): the
  value v maximising Pr(y | x, v) · Pr(v), the model's probability of the record's known label
  times the value's prior. By default the prior is uniform: the value of smallest loss, Yeom et
  al.'s (2018, arXiv:1709.01604) attack, which exploits an overfit model best (its probabilities
  are not calibrated, and a prior outweighs the small lift memorised records get);
  ``prior: known`` weights by the values' frequencies among the known records, as Fredrikson et al.
- ``learned``: an attack model fitted on the attacker's background records (attribute known) that
  maps [other columns, label, the model's answers for each candidate] to the value (the
  confidence-score attack of Mehnaz et al. 2022, "Are Your Sensitive Attributes Private?", USENIX
  Security, with a learned model as in ART's ``AttributeInferenceBlackBox``). Its baseline is the
  same learner without the model's answers (:mod:`bastion.attacks.privacy.imputation`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.imputation import LEARNERS, Learner, fit_predict, record_features
from bastion.attacks.privacy.inference import AttributeAttackParams, AttributeInference, AttributeTask
from bastion.attacks.privacy.shadows import true_class_log_probability
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.trained import predict_all


def candidate_log_probs(target: Target, x: np.ndarray, attribute: int, candidates: np.ndarray) -> np.ndarray:
    """The model's log-probabilities for every record with each candidate filled into column
    ``attribute``: shape (n_candidates, n, n_classes); one query per record and candidate."""
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    filled = np.repeat(flat[None], len(candidates), axis=0)
    filled[:, :, attribute] = np.asarray(candidates, np.float32)[:, None]
    logp = predict_all(target, [filled.reshape(-1, *np.shape(x)[1:])])[0]
    return logp.reshape(len(candidates), len(x), -1)


class FredriksonParams(AttributeAttackParams):
    prior: Literal["known", "uniform"] = Field(
        default="uniform", description="Prior of the values: uniform (Yeom et al.'s smallest-loss attack), or "
                                       "their frequency among the known records (Fredrikson et al.; uniform "
                                       "without known records).")


class Fredrikson(AttributeInference):
    """Fredrikson et al. (2014): the candidate value that makes the record's label most likely
    (weighted by the value's prior with ``prior: known``)."""

    name = "fredrikson"
    Params = FredriksonParams

    def _infer(self, target: Target, task: AttributeTask, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        cand = task.candidates
        assert cand is not None, "fredrikson infers categorical (or binned) attributes"
        score = true_class_log_probability(candidate_log_probs(target, task.x, task.attribute, cand), task.y)
        if self.params.prior == "known" and task.has_known:  # type: ignore[attr-defined]
            counts = np.array([np.sum(task.known_values == v) for v in cand], np.float64)
            score = score + np.log((counts + 1) / (counts.sum() + len(cand)))[:, None]  # Laplace-smoothed
        return cand[np.argmax(score, axis=0)]


class LearnedParams(AttributeAttackParams):
    learner: Learner = Field(default="boosting", description=f"Attack model (and baseline): one of {LEARNERS}: "
                                                             "gradient-boosted trees or a logistic regression.")


class LearnedAttribute(AttributeInference):
    """An attack model learned on background records from [other columns, label, the model's
    answers for each candidate value] (Mehnaz et al. 2022); the baseline is the same learner
    without the model's answers."""

    name = "learned"
    Params = LearnedParams
    needs_known = True

    def baseline_learner(self) -> Learner:
        return self.params.learner  # type: ignore[attr-defined, no-any-return]

    def _infer(self, target: Target, task: AttributeTask, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        cand = task.candidates
        assert cand is not None and task.known_x is not None and task.known_y is not None

        def features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            logp = candidate_log_probs(target, x, task.attribute, cand)
            own = true_class_log_probability(logp, y)  # (n_candidates, n): log Pr(y | x, v)
            return np.column_stack([record_features(x, y, task.attribute, target.n_classes),
                                    own.T, (own - logp.max(axis=2)).T])  # ... and its margin to the top class

        seed = int(ctx.rng("attack-model").integers(2**31 - 1))
        return fit_predict(self.params.learner, features(task.known_x, task.known_y),  # type: ignore[attr-defined]
                           task.known_values, features(task.x, task.y), cand, seed)
