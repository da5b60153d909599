"""The learner shared by the learned attribute-inference attack and its no-query baseline.

Jayaraman & Evans (2022, "Are Attribute Inference Attacks Just Imputation?", arXiv:2209.01292)
show that much of what an attribute-inference attack gets right, an attacker gets without the
model, by imputing the sensitive value from the other columns. So the baseline is *the same
learner* fitted on the same background records with the same features, minus the model's
outputs; what the attack gains over it is what the model leaked.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Learner = Literal["boosting", "logistic"]
LEARNERS: tuple[Learner, ...] = ("boosting", "logistic")


def record_features(x: np.ndarray, y: np.ndarray, attribute: int, n_classes: int) -> np.ndarray:
    """What an attacker knows of a record without the model: its other columns (the attribute
    left out) and its label one-hot, shape (n, d - 1 + n_classes)."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    return np.column_stack([np.delete(flat, attribute, axis=1), np.eye(n_classes)[np.asarray(y, np.int64)]])


def fit_predict(learner: Learner, train: np.ndarray, values: np.ndarray, test: np.ndarray, candidates: np.ndarray,
                seed: int) -> np.ndarray:
    """Fit ``learner`` on ``train`` features -> attribute ``values`` (each one of ``candidates``)
    and return its guess, a candidate, for every row of ``test``. With a single value in
    ``train`` there is nothing to learn: that value is the guess."""
    codes = np.searchsorted(candidates, values)
    present = np.unique(codes)
    if len(present) == 1:
        return np.full(len(test), candidates[present[0]])
    if learner == "boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(train, codes)
    return candidates[np.asarray(model.predict(test), np.int64)]
