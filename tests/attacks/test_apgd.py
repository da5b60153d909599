"""APGD: the DLR loss, strength against PGD, targeted runs, and the ε-ball / bounds invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.attacks import APGD, APGDT, PGD, get_attack
from bastion.attacks.evasion.apgd import dlr_loss
from bastion.core.spec import FeatureSpec, InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import UsageError

from ._whitebox_models import digits_mlp_target

torch.set_num_threads(1)


def test_dlr_loss_known_values() -> None:
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    # untargeted: -(z_y - max_other) / (z_pi1 - z_pi3) = -(4 - 3) / (4 - 1)
    assert dlr_loss(z, y, None).item() == pytest.approx(-1 / 3)
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(4 - 3) / (4 - 0.5)
    assert dlr_loss(z, y, t).item() == pytest.approx(-1 / 3.5)
    # invariant to shifting and scaling the logits
    assert dlr_loss(7 * z + 2, y, t).item() == pytest.approx(-1 / 3.5, rel=1e-5)


def test_apgd_is_at_least_as_strong_as_pgd_on_a_trained_model() -> None:
    target, x, y = digits_mlp_target()
    x, y = x[:200], y[:200]
    pgd = PGD(eps=0.05, steps=20).run(target, x, y)
    apgd = APGD(eps=0.05, steps=40).run(target, x, y)
    assert 0.1 < pgd.robust_accuracy < pgd.clean_accuracy  # an informative ε
    # one random start each, and a sign-gradient run can stall on a vertex of the ball that is a local
    # maximum of its loss: allow one input of random-start noise per single run (the ensemble test in
    # test_auto.py allows none)
    assert apgd.robust_accuracy <= pgd.robust_accuracy + 1 / len(y)
    dlr_t = APGDT(eps=0.05, steps=20, n_target_classes=3).run(target, x, y)
    assert dlr_t.robust_accuracy <= pgd.robust_accuracy + 1 / len(y)
    for res in (apgd, dlr_t):
        assert res.norms["linf"].max() <= 0.05 + 1e-6
        assert np.all(res.success == (res.adv_pred != y))


def test_targeted_apgd_reaches_the_requested_class() -> None:
    target, x, y = digits_mlp_target()
    x, y = x[:60], y[:60]
    y_target = (y + 1) % 10
    res = APGD(eps=0.2, steps=30, loss="dlr", targeted=True).run(target, x, y, y_target=y_target)
    assert res.targeted and res.success.mean() > 0.5
    assert np.all(res.adv_pred[res.success] == y_target[res.success])


def test_apgd_registry_and_parameter_errors() -> None:
    assert get_attack("apgd-t").n_target_classes == 9
    assert get_attack("apgd-dlr").loss == "dlr" and get_attack("apgd-ce").loss == "ce"
    with pytest.raises(UsageError):
        APGD(loss="hinge")
    with pytest.raises(UsageError):
        APGD(steps=0)
    with pytest.raises(UsageError):
        get_attack("apgd", momentum=1.5)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.01, 1.0), loss=st.sampled_from(["ce", "dlr"]),
       seed=st.integers(0, 1000))
def test_apgd_stays_in_the_ball_bounds_and_keeps_immutable_features(norm: str, eps: float, loss: str,
                                                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4))
    feats = [FeatureSpec(f"f{i}", lower=-1.0, upper=2.0, scale=s, mutable=i != 2)
             for i, s in enumerate([0.5, 1.0, 2.0, 1.0, 3.0])]
    target = TorchTarget(model, InputSpec(shape=(5,), features=feats, kind="tabular"))
    x = rng.uniform(-1, 2, size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=16)
    res = APGD(eps=eps, norm=norm, loss=loss, steps=8, n_target_classes=2 if loss == "dlr" else 0).run(target, x, y)
    assert res.x_adv.min() >= -1 - 1e-6 and res.x_adv.max() <= 2 + 1e-6
    assert np.array_equal(res.x_adv[:, 2], x[:, 2])
    assert res.norms[norm].max() <= eps * (1 + 1e-4) + 1e-6
