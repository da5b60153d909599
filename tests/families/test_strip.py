"""STRIP (Gao et al. 2019) on the detector contract: on a BadNets-backdoored digits MLP it flags triggered
inputs and few clean ones; offline scan and online updates give the same alerts."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks.poisoning.base import get_poisoning_attack
from bastion.core.data import Dataset
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.core.training import TrainRequest, sklearn_train_fn
from bastion.errors import UsageError
from bastion.monitor import DETECTORS


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16).astype(np.float32).reshape(-1, 1, 8, 8), d.target


def test_strip_flags_triggered_inputs_and_scans_like_it_updates() -> None:
    from sklearn.neural_network import MLPClassifier

    x, y = digits()
    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0)
    res = get_poisoning_attack("badnets", target_class=0, size=3).poison(
        Dataset(x[:500], y[:500]), ThreatModel(poisoning_fraction=0.1), spec=spec)
    model = sklearn_train_fn(MLPClassifier((64,), max_iter=200, random_state=0))(
        TrainRequest(res.x, res.y, input_spec=spec, classes=list(range(10))))
    xt, yt = x[1000:1200], y[1000:1200]
    xt = xt[yt != 0]
    strip = DETECTORS.get_object("strip")(model, n_overlays=16, frr=0.05).fit(x[600:800])
    flagged = {r for a in strip.scan([res.trigger.apply(xt)]) for r in a.records}
    false = {r for a in strip.scan([xt]) for r in a.records}
    assert len(flagged) / len(xt) > 0.7 and len(false) / len(xt) < 0.2
    windows = [res.trigger.apply(xt[:40]), xt[40:80]]
    offline = strip.scan(windows)
    strip.reset()
    online = [a for w in windows for a in strip.update(w)]
    assert offline == online and all(a.score >= a.threshold == 0.0 for a in offline)
    with pytest.raises(UsageError, match="not fitted"):
        DETECTORS.get_object("strip")(model).update(xt)
