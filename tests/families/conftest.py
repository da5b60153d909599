"""Small scikit-learn models and data for the capability-family contract tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # family_helpers

from family_helpers import blobs, unit_spec  # noqa: E402


@pytest.fixture(scope="module")
def overfit():  # noqa: ANN201 - (target, members, non-members)
    """A random forest of fully grown trees (it memorises its 60 training records) and 60 fresh records."""
    from sklearn.ensemble import RandomForestClassifier

    from bastion.core.targets.sklearn_target import SklearnTarget

    xm, ym = blobs(60, 0)
    xn, yn = blobs(60, 1)
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(xm, ym)
    return SklearnTarget(model, unit_spec()), (xm, ym), (xn, yn)
