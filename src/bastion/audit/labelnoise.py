"""Label-noise candidates by confident learning (Northcutt, Jiang & Chuang 2021, "Confident
learning: estimating uncertainty in dataset labels", JAIR 70, arXiv:1911.00068).

Out-of-fold predicted probabilities come from scikit-learn's ``cross_val_predict`` with extremely
randomised trees (Geurts, Ernst & Wehenkel 2006) on the numeric and categorical columns (a seeded
sample of at most ``max_records`` labelled records). Fully grown trees give a record deep inside a
region of one class a probability near 1 for it: a boosted model's probabilities level off at one
value across such regions, which puts a flipped label right at the class threshold. Each class ``j`` gets a threshold ``t_j``, the mean
predicted probability of ``j`` over the records labelled ``j``; a record counts in the confident
joint at ``(label, j*)`` where ``j*`` is its most probable class among those whose probability
reaches their threshold. The candidates are the off-diagonal records of the confident joint
(cleanlab's ``filter_by="confident_learning"``), most confident first.

When the out-of-fold model predicts the labels no better than always answering the most common
class, the features do not explain the labels and no record is flagged: an ``info`` finding says
that the audit was not conclusive.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from bastion.audit.base import AuditFinding, DataAudit
from bastion.audit.profile import Profile
from bastion.core.params import Params
from bastion.core.results import Severity
from bastion.core.run import RunContext


class LabelNoiseParams(Params):
    max_records: int = Field(20_000, ge=100, description="Labelled records sampled for the out-of-fold model.")
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds.")
    trees: int = Field(100, ge=10, description="Trees of the out-of-fold model.")
    min_gain: float = Field(0.02, ge=0, description="Least accuracy above the majority class for the audit to "
                                                    "flag anything.")


def confident_joint_candidates(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the off-diagonal records of the confident joint, most confident first."""
    n, k = probs.shape
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else np.inf for j in range(k)])
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(axis=1)
    confident = above.any(axis=1)
    off = np.flatnonzero(confident & (best != labels))
    margin = probs[off, best[off]] - probs[off, labels[off]]
    return off[np.argsort(-margin, kind="stable")]


class LabelNoiseAudit(DataAudit):
    """Records whose label the out-of-fold model confidently contradicts."""

    name = "label-noise"
    Params = LabelNoiseParams

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        from bastion.errors import require

        p: LabelNoiseParams = self.params  # type: ignore[assignment]
        require("sklearn", "sklearn")
        from sklearn.ensemble import ExtraTreesClassifier
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        idx = np.flatnonzero(data.labels >= 0)
        counts = np.bincount(data.labels[idx]) if len(idx) else np.zeros(0, int)
        idx = idx[counts[data.labels[idx]] >= p.folds]      # classes too rare to stratify are left out
        if len(idx) < 2 * p.folds or len(np.unique(data.labels[idx])) < 2 or not (data.numeric or data.categorical):
            return []
        rng = ctx.rng("label-noise")
        sampled = len(idx) > p.max_records
        if sampled:
            idx = np.sort(rng.choice(idx, p.max_records, replace=False))
        x = np.concatenate([data.z[idx], data.cat_codes[idx].astype(np.float32)], axis=1)
        y_raw = data.labels[idx]
        classes, y = np.unique(y_raw, return_inverse=True)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        clf = ExtraTreesClassifier(n_estimators=p.trees, max_features=None, n_jobs=1,
                                   random_state=int(rng.integers(2 ** 31)))
        cv = StratifiedKFold(p.folds, shuffle=True, random_state=int(rng.integers(2 ** 31)))
        probs = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")
        accuracy = float((probs.argmax(axis=1) == y).mean())
        baseline = float(np.bincount(y).max() / len(y))
        where = f"in a random sample of {len(idx)} labelled records" if sampled else f"in {len(idx)} labelled records"
        if accuracy < baseline + p.min_gain:
            return [AuditFinding(rule_id="BASTION-DA-007", severity=Severity.info, columns=[data.label],
                                 title=(f"label noise not assessed: the out-of-fold model is {accuracy:.1%} accurate, "
                                        f"the most common class alone {baseline:.1%} ({where})"),
                                 measurements={"oof_accuracy": accuracy, "baseline_accuracy": baseline})]
        cand = confident_joint_candidates(probs, y)
        if not len(cand):
            return []
        share = len(cand) / len(idx)
        names = data.label_names
        samples = [f"{data.where(int(idx[i]))}: labelled '{names[int(classes[y[i]])]}', predicted "
                   f"'{names[int(classes[probs[i].argmax()])]}' ({probs[i].max():.2f})" for i in cand[:5]]
        return [AuditFinding(
            rule_id="BASTION-DA-007", severity=Severity.medium if share > 0.01 else Severity.low,
            columns=[data.label], records=idx[cand].tolist(), samples=samples,
            title=f"{len(cand)} label-noise candidate(s) ({share:.2%}) {where}",
            measurements={"label_noise_candidates": len(cand), "label_noise_share": share,
                          "oof_accuracy": accuracy})]
