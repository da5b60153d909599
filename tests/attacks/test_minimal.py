"""Minimal-perturbation attacks: DeepFool, Carlini-Wagner L2 and the per-sample ε search, on
linear models where the exact answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks import CarliniWagnerL2, DeepFool, MinimalEps, get_attack
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import UsageError

from ._whitebox_models import digits_mlp_target, linear_binary

torch.set_num_threads(1)


def _linear_case(rng: np.random.Generator, n: int = 12, d: int = 8, lo: float = -3.0, hi: float = 3.0):
    w = rng.normal(size=d)
    b = 0.1
    x = rng.uniform(-0.5, 0.5, size=(n, d)).astype(np.float32)
    target = TorchTarget(linear_binary(w, b), InputSpec(shape=(d,), lower=lo, upper=hi))
    y = np.where(x @ w + b > 0, 0, 1)
    return target, x, y, w, b


@pytest.mark.parametrize("norm,dual", [("l2", 2), ("linf", 1)])
def test_deepfool_finds_the_exact_distance_to_a_hyperplane(rng: np.random.Generator, norm: str, dual: int) -> None:
    target, x, y, w, b = _linear_case(rng)
    res = DeepFool(norm=norm, overshoot=0.02).run(target, x, y)
    assert res.success.all()
    exact = np.abs(x.astype(np.float64) @ w + b) / np.linalg.norm(w, ord=dual)
    np.testing.assert_allclose(res.norms[norm], exact * 1.02, rtol=2e-3, atol=2e-4)
    assert res.eps is None and res.metrics()["success_rate"] == 1.0


def test_cw_l2_on_a_linear_model_finds_nearly_the_minimal_distance(rng: np.random.Generator) -> None:
    target, x, y, w, b = _linear_case(rng, n=10)
    res = CarliniWagnerL2(max_iter=400).run(target, x, y)
    assert res.success.all()
    exact = np.abs(x.astype(np.float64) @ w + b) / np.linalg.norm(w)
    assert np.all(res.norms["l2"] >= exact * (1 - 1e-3))  # nothing crosses the boundary for less
    np.testing.assert_allclose(res.norms["l2"], exact, rtol=0.05, atol=5e-3)


def test_cw_respects_bounds_and_beats_or_matches_deepfool_on_a_trained_model() -> None:
    target, x, y = digits_mlp_target()
    x, y = x[:40], y[:40]
    cw = CarliniWagnerL2(max_iter=200, learning_rate=0.05).run(target, x, y)
    df = DeepFool(norm="l2", overshoot=0.02).run(target, x, y)
    assert cw.x_adv.min() >= 0 and cw.x_adv.max() <= 1
    both = cw.success & df.success & (cw.clean_pred == y)
    assert cw.success[cw.clean_pred == y].mean() >= 0.95
    assert np.median(cw.norms["l2"][both]) <= np.median(df.norms["l2"][both]) * 1.01


def test_min_eps_brackets_the_analytic_fgsm_threshold(rng: np.random.Generator) -> None:
    target, x, y, w, b = _linear_case(rng, n=16)
    res = MinimalEps(attack="fgsm", eps_max=1.0, search_steps=10).run(target, x, y)
    upper, lower = np.array(res.extra["min_eps"]), np.array(res.extra["min_eps_lower"])
    exact = np.abs(x.astype(np.float64) @ w + b) / np.abs(w).sum()  # FGSM succeeds iff eps > this
    reachable = exact < 1.0
    assert reachable.sum() >= 8
    assert np.all(lower[reachable] <= exact[reachable] + 1e-5)
    assert np.all(exact[reachable] <= upper[reachable] + 1e-5)
    assert np.all(upper[reachable] - lower[reachable] <= 1.0 / 2 ** 10 + 1e-9)
    assert np.all(np.isinf(upper[~reachable]))
    assert np.all(res.success == reachable)
    assert np.all(res.norms["linf"][reachable] <= upper[reachable] + 1e-6)


def test_min_eps_with_pgd_by_name_and_parameter_errors() -> None:
    target, x, y = digits_mlp_target()
    attack = get_attack("min-eps", attack="pgd", attack_params={"steps": 10}, eps_max=0.5, search_steps=5)
    res = attack.run(target, x[:20], y[:20])
    ok = res.success & (res.clean_pred == y[:20])
    assert ok.any()
    upper = np.array(res.extra["min_eps"])
    assert np.all(res.norms["linf"][ok] <= upper[ok] + 1e-6)
    with pytest.raises(UsageError):
        MinimalEps(attack="pgd", attack_params={"eps": 0.3})
    with pytest.raises(UsageError):
        MinimalEps(attack="deepfool")
    with pytest.raises(UsageError):
        CarliniWagnerL2(norm="linf")
