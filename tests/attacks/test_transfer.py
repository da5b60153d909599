"""Transfer attack: crafted on a surrogate (given, or trained on queries within a budget),
measured on the target; works on black-box and label-only targets."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks import Transfer, get_attack
from bastion.core.targets.callable_target import CallableTarget
from bastion.errors import TargetError, UsageError


@pytest.fixture(scope="module")
def blackbox(digits_target):  # noqa: ANN001, ANN201
    import torch

    torch.set_num_threads(1)
    return CallableTarget(lambda z: digits_target.predict_proba(z), list(range(10)), digits_target.input_spec)


@pytest.fixture(scope="module")
def xy(digits_data):  # noqa: ANN001, ANN201
    return digits_data.x[:120], digits_data.y[:120]


def test_registered() -> None:
    a = get_attack("transfer", eps=0.2)
    assert isinstance(a, Transfer) and a.family == "evasion-transfer" and not a.needs_gradients
    with pytest.raises(UsageError):
        Transfer(attack="transfer")
    with pytest.raises(UsageError):
        Transfer(momentum=1.0)


def test_given_surrogate_identical_model_transfers(digits_target, blackbox, xy) -> None:  # noqa: ANN001
    x, y = xy
    res = Transfer(eps=0.25, surrogate=digits_target, steps=20).run(blackbox, x, y)
    assert res.complete and res.norms["linf"].max() <= 0.25 + 1e-6
    assert res.metrics()["success_rate"] > 0.9  # same weights: white-box strength
    assert res.extra["surrogate"]["source"] == "given"
    assert res.queries == len(x)  # only the clean predictions touch the target


def test_given_surrogate_with_another_attack(digits_target, blackbox, xy) -> None:  # noqa: ANN001
    x, y = xy
    res = Transfer(eps=0.25, surrogate=digits_target, attack="fgsm").run(blackbox, x[:40], y[:40])
    assert res.metrics()["success_rate"] > 0.3


def test_trained_surrogate_within_budget(blackbox, xy) -> None:  # noqa: ANN001
    x, y = xy
    noise = np.random.default_rng(0).choice([-0.3, 0.3], size=x.shape)
    with blackbox.uncounted():
        base = (blackbox.predict(np.clip(x + noise, 0, 1).astype(np.float32)) != y).mean()
    res = Transfer(eps=0.3, train_queries=300, epochs=20, augment_rounds=1, steps=20, seed=1).run(blackbox, x, y)
    info = res.extra["surrogate"]
    assert info["source"] == "trained" and info["train_queries"] <= 300
    assert res.queries <= 300 + len(x)
    assert res.metrics()["success_rate"] > base + 0.2  # crafted points transfer, random ones of that size less
    assert res.norms["linf"].max() <= 0.3 + 1e-6


def test_label_only_target(digits_target, xy) -> None:  # noqa: ANN001
    t = CallableTarget(lambda z: np.eye(10)[digits_target.predict_proba(z).argmax(1)], list(range(10)),
                       digits_target.input_spec)
    t.label_only = True  # type: ignore[attr-defined]
    x, y = xy
    res = Transfer(eps=0.3, train_queries=200, epochs=10, augment_rounds=1, steps=10).run(t, x[:60], y[:60])
    assert res.extra["surrogate"]["label_only"] and res.complete


def test_surrogate_must_be_white_box(blackbox, xy) -> None:  # noqa: ANN001
    with pytest.raises(TargetError, match="white-box"):
        Transfer(surrogate=blackbox).run(blackbox, *xy)
