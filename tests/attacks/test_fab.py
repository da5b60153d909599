"""FAB / FAB-T: the exact boundary projection, the distance to a hyperplane, norms no larger than
DeepFool's on a trained model, and the min-eps search around APGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks import FAB, DeepFool, MinimalEps, get_attack
from bastion.attacks.evasion.fab import boundary_step
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import UsageError

from ._whitebox_models import digits_mlp_target, linear_binary

torch.set_num_threads(1)


def _reach(t: torch.Tensor, w: torch.Tensor, lo: float, hi: float, r: torch.Tensor, norm: str) -> torch.Tensor:
    """The largest ``w·d`` over ``‖d‖ <= r`` inside the box, by brute force for L∞ (a corner) and
    by a fine grid of the KKT multiplier for L2."""
    room = torch.where(w > 0, hi - t, t - lo)
    if norm == "linf":
        return (w.abs() * torch.minimum(r[:, None], room)).sum(1)
    best = torch.zeros(len(t), dtype=t.dtype)
    for lam in torch.logspace(-4, 4, 4000, dtype=t.dtype):
        d = torch.minimum(lam * w.abs(), room)
        ok = d.norm(dim=1) <= r
        best = torch.where(ok, torch.maximum(best, (w.abs() * d).sum(1)), best)
    return best


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_boundary_step_is_the_smallest_point_of_the_hyperplane_in_the_box(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    n, dim = 64, 7
    t = torch.rand(n, dim, generator=g, dtype=torch.float64)
    w = torch.randn(n, dim, generator=g, dtype=torch.float64) * (torch.rand(n, dim, generator=g) > 0.2)
    c = torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    lo, hi = torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)
    d = boundary_step(t, w, c, lo, hi, norm)
    assert torch.all(t + d >= -1e-12) and torch.all(t + d <= 1 + 1e-12)  # inside the box
    reached = (w * d).sum(1)
    room = torch.where(w * c.sign()[:, None] > 0, hi - t, t - lo)
    feasible = (w.abs() * room).sum(1) >= c.abs()
    assert torch.allclose(reached[feasible], c[feasible], atol=1e-9)  # on the hyperplane
    # out of reach: the whole box in the hyperplane's direction
    assert torch.all((reached[~feasible] * c[~feasible].sign()).abs() <= c[~feasible].abs() + 1e-12)
    # minimal: with 1% less norm the hyperplane is out of reach
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    sw = w * c.sign()[:, None]
    less = _reach(t, sw, 0.0, 1.0, size * 0.99, norm)
    assert torch.all(less[feasible & (c.abs() > 1e-6)] < c.abs()[feasible & (c.abs() > 1e-6)])


@pytest.mark.parametrize("norm,dual", [("l2", 2), ("linf", 1)])
def test_fab_finds_the_distance_to_a_hyperplane(rng: np.random.Generator, norm: str, dual: int) -> None:
    w, b, d = rng.normal(size=8), 0.1, 8
    x = rng.uniform(-0.5, 0.5, size=(12, d)).astype(np.float32)
    target = TorchTarget(linear_binary(w, b), InputSpec(shape=(d,), lower=-3.0, upper=3.0))
    y = np.where(x @ w + b > 0, 0, 1)
    fab = FAB(norm=norm, steps=30).run(target, x, y)
    df = DeepFool(norm=norm, overshoot=0.02).run(target, x, y)
    assert fab.success.all() and fab.eps is None
    exact = np.abs(x.astype(np.float64) @ w + b) / np.linalg.norm(w, ord=dual)
    assert np.all(fab.norms[norm] >= exact * (1 - 1e-4))  # nothing crosses for less
    np.testing.assert_allclose(fab.norms[norm], exact, rtol=0.01, atol=1e-4)
    assert np.all(fab.norms[norm] <= df.norms[norm] + 1e-6)  # no larger than DeepFool's, input by input


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_norms_no_larger_than_deepfool_on_a_trained_model(norm: str) -> None:
    target, x, y = digits_mlp_target()
    x, y = x[:40], y[:40]
    fab = FAB(norm=norm, steps=40, n_target_classes=4).run(target, x, y)
    df = DeepFool(norm=norm, overshoot=0.02).run(target, x, y)
    assert fab.x_adv.min() >= 0 and fab.x_adv.max() <= 1
    right = df.clean_pred == y
    assert fab.success[right].mean() >= df.success[right].mean()
    both = fab.success & df.success & right
    assert np.median(fab.norms[norm][both]) <= np.median(df.norms[norm][both])
    untargeted = FAB(norm=norm, steps=40, n_target_classes=0, candidates=4).run(target, x, y)
    assert untargeted.success[right].mean() >= df.success[right].mean()


def test_fab_registered_targeted_and_params() -> None:
    target, x, y = digits_mlp_target()
    a = get_attack("fab", norm="l2", steps=20)
    assert isinstance(a, FAB) and a.minimal
    goal = (y[:10] + 1) % 10
    res = FAB(norm="l2", steps=50, targeted=True).run(target, x[:10], y[:10], y_target=goal)
    right = res.clean_pred == y[:10]
    assert (res.adv_pred[res.success] == goal[res.success]).all() and res.success[right].mean() >= 0.8
    with pytest.raises(UsageError):
        FAB(alpha_max=1.5)
    with pytest.raises(UsageError):
        FAB(norm="l1")


def test_min_eps_runs_apgd() -> None:
    """min-eps around APGD: the recommended minimal-norm evaluation (docs/attacks-whitebox.md)."""
    target, x, y = digits_mlp_target()
    me = MinimalEps(attack="apgd", attack_params={"steps": 20}, norm="linf", eps_max=0.5,
                    search_steps=6).run(target, x[:20], y[:20])
    hi, lo = np.array(me.extra["min_eps"]), np.array(me.extra["min_eps_lower"])
    ok = np.isfinite(hi) & (hi > 0)
    assert ok.mean() > 0.8 and np.all(hi[ok] - lo[ok] <= 0.5 / 2 ** 6 + 1e-9)
    assert np.all(me.norms["linf"][ok] <= hi[ok] + 1e-6)
