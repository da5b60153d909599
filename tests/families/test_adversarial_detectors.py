"""Detectors of adversarial inputs (feature squeezing, Mahalanobis) on the detector contract, and the
adaptive attack of Carlini & Wagner (2017) that fools the classifier and the detector together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.base import get_attack
from bastion.campaign.detector_attack import GuardedPGD
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.errors import DataError, UsageError
from bastion.monitor.adversarial import AdversarialDetector
from bastion.monitor.base import DETECTORS

SQUEEZE = {"squeezers": [{"kind": "bit-depth", "bits": 2}]}


def split(data):  # noqa: ANN001, ANN201 - a Dataset -> (fit inputs, test inputs, test labels)
    order = np.random.default_rng(0).permutation(len(data.y))
    return data.x[order[:180]], data.x[order[180:240]], data.y[order[180:240]]


@pytest.fixture(scope="module")
def squeezing(digits_target, digits_data) -> AdversarialDetector:  # noqa: ANN001
    det = DETECTORS["feature-squeezing"](digits_target, **SQUEEZE)
    return det.fit(split(digits_data)[0])


@pytest.mark.parametrize("name,params", [("feature-squeezing", SQUEEZE), ("mahalanobis", {"fpr": 0.1})])
def test_threshold_is_the_clean_quantile_and_alerts_match_offline_and_online(digits_target, digits_data, name: str,
                                                                             params: dict) -> None:  # noqa: ANN001
    fit, test, _ = split(digits_data)
    det = DETECTORS[name](digits_target, **params).fit(fit)
    fpr = det.params.fpr
    assert det.flags(fit).mean() <= fpr + 1e-9 and det.flags(fit).mean() >= fpr - 2 / len(fit)
    windows = [test[:20].reshape(20, -1), test[20:40], test[40:]]  # flat rows are accepted too
    online = [a for w in windows for a in det.update(w)]
    assert det.scan(windows) == online
    flagged = [np.flatnonzero(det.flags(w)).tolist() for w in windows]
    assert {a.window: a.records for a in online} == {i: f for i, f in enumerate(flagged) if f}


def test_feature_squeezing_flags_pgd_inputs_and_its_score_has_bpda_gradients(squeezing, digits_target,
                                                                             digits_data) -> None:  # noqa: ANN001
    _, test, y = split(digits_data)
    ok = digits_target.predict_proba(test).argmax(1) == y
    r = get_attack("pgd", eps=0.1).run(digits_target, test[ok], y[ok])
    assert r.success.sum() >= 10
    assert squeezing.flags(r.x_adv[r.success]).mean() > 0.8  # non-adaptive PGD is caught (Xu et al.)
    assert squeezing.flags(test).mean() < 0.2
    x = torch.as_tensor(test[:8]).requires_grad_(True)
    (g,) = torch.autograd.grad(squeezing.score(x).sum(), x)
    assert torch.count_nonzero(g) > 0  # through the rounding, straight-through


def test_the_adaptive_attack_evades_the_detector_within_the_budget(squeezing, digits_target,
                                                                   digits_data) -> None:  # noqa: ANN001
    _, test, y = split(digits_data)
    ok = digits_target.predict_proba(test).argmax(1) == y
    xa, ya = test[ok], y[ok]
    pgd = get_attack("pgd", eps=0.1).run(digits_target, xa, ya)
    naive = (pgd.success & ~squeezing.flags(pgd.x_adv)).mean()
    adv = GuardedPGD(eps=0.1, steps=30).run(squeezing, xa, ya, RunContext(seed=0))
    assert np.abs(adv - xa).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    evaded = (digits_target.predict_proba(adv).argmax(1) != ya) & ~squeezing.flags(adv)
    assert evaded.mean() > naive + 0.03  # knowing the detector gets more inputs past it


def test_bad_input_is_refused(digits_target, digits_data) -> None:  # noqa: ANN001
    blackbox = CallableTarget(lambda x: np.full((len(x), 10), 0.1), list(range(10)), InputSpec(shape=(1, 8, 8)))
    with pytest.raises(UsageError, match="black box"):
        DETECTORS["mahalanobis"](blackbox)
    with pytest.raises(UsageError, match="kind must be one of"):
        DETECTORS["feature-squeezing"](digits_target, squeezers=[{"kind": "inference-noise"}])
    with pytest.raises(UsageError, match="fpr"):
        DETECTORS["mahalanobis"](digits_target, fpr=1.5)
    det = DETECTORS["mahalanobis"](digits_target)
    with pytest.raises(UsageError, match="not fitted"):
        det.scores(digits_data.x[:3])
    with pytest.raises(UsageError, match="at least 20 reference inputs"):
        det.fit(digits_data.x[:10])
    with pytest.raises(DataError):
        det.fit(digits_data.x[:40] + 2.0)  # outside the model's input bounds
    with pytest.raises(UsageError, match="0 <= m < 1"):
        GuardedPGD(eps=0.1, m=1.0)
