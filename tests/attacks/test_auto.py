"""The ``auto`` ensemble: stage bookkeeping, strength, bounds, and a budget that runs out."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.attacks import APGD, PGD, AutoAttack, available_attacks, get_attack
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.threat import ThreatModel
from bastion.errors import UsageError

from ._whitebox_models import digits_mlp_target

torch.set_num_threads(1)
FAST = {"steps": 15, "n_target_classes": 3, "blackbox_queries": 100}


def test_auto_stages_are_cumulative_and_end_at_the_final_accuracy() -> None:
    target, x, y = digits_mlp_target()
    x, y = x[:80], y[:80]
    res = AutoAttack(eps=0.05, **FAST).run(target, x, y)
    stages = res.extra["stages"]
    names = [s["stage"] for s in stages]
    assert names[:3] == ["apgd-ce", "apgd-t", "fab-t"]
    if "square" in available_attacks():
        assert names[-1] == "square"
    else:
        assert any("square stage skipped" in n for n in res.extra["notes"])
    accs = [s["robust_accuracy"] for s in stages]
    assert all(a >= b for a, b in itertools.pairwise(accs))
    assert all(a >= res.robust_accuracy - 1e-12 for a in accs)
    assert accs[-1] == pytest.approx(res.robust_accuracy)
    assert accs[0] <= res.clean_accuracy
    assert all(s["seconds"] >= 0 and s["queries"] >= 0 for s in stages)
    assert res.norms["linf"].max() <= 0.05 + 1e-6 and res.complete
    for alone in (APGD(eps=0.05, steps=15), PGD(eps=0.05, steps=20)):
        assert res.robust_accuracy <= alone.run(target, x, y).robust_accuracy


def test_auto_stage_selection_errors_and_budget() -> None:
    target, x, y = digits_mlp_target()
    res = get_attack("auto", eps=0.05, stages=["apgd-ce"], steps=5).run(target, x[:20], y[:20])
    assert [s["stage"] for s in res.extra["stages"]] == ["apgd-ce"]
    with pytest.raises(UsageError):
        AutoAttack(stages=["fab"])
    # a query budget too small for the ensemble: partial result, marked incomplete, no exception
    res = AutoAttack(eps=0.05, **FAST, batch_size=10).run(
        target, x[:40], y[:40], ThreatModel(eps=0.05, query_budget=300))
    assert not res.complete and "budget" in (res.reason or "")
    assert res.queries <= 300


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.05, 1.5), seed=st.integers(0, 100))
def test_auto_stays_in_the_ball_and_bounds(norm: str, eps: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    target = TorchTarget(model, InputSpec(shape=(6,), lower=0.0, upper=1.0))
    x = np.random.default_rng(seed).uniform(0, 1, size=(12, 6)).astype(np.float32)
    y = target.predict(x)
    res = AutoAttack(eps=eps, norm=norm, steps=5, n_target_classes=2, blackbox_queries=20).run(target, x, y)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.norms[norm].max() <= eps * (1 + 1e-4) + 1e-6


class _Wrap(torch.nn.Module):
    """The MLP with a step inside ``forward``: logits ×1000, 3-bit rounding, sqrt·sqrt (NaN gradients
    at 0), or Gaussian input noise."""

    def __init__(self, inner: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "round":
            x = torch.round(x * 7) / 7
        elif self.kind == "sqrt":
            x = torch.sqrt(x) * torch.sqrt(x)
        elif self.kind == "noise":
            x = x + 0.2 * torch.randn_like(x)
        out = self.inner(x)
        return out * 1000 if self.kind == "scale" else out


def _wrapped(kind: str) -> TorchTarget:
    from ._whitebox_models import trained_digits_mlp

    return TorchTarget(_Wrap(trained_digits_mlp()[0], kind), InputSpec(shape=(64,), lower=0.0, upper=1.0))


def test_gradient_health_flags_saturation_rounding_and_noise() -> None:
    from bastion.attacks.evasion.auto import gradient_health

    _, x, y = digits_mlp_target()
    xt, yt = torch.from_numpy(x[:30]), torch.from_numpy(y[:30].astype(np.int64))
    assert gradient_health(_wrapped("plain"), xt, yt).all()
    assert not gradient_health(_wrapped("round"), xt, yt).any()
    assert not gradient_health(_wrapped("noise"), xt, yt).any()
    # a saturated softmax zeroes the CE gradient, not the DLR one APGD-T follows
    scaled = _wrapped("scale")
    assert gradient_health(scaled, xt, yt).all()
    xr = xt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(scaled.logits(xr), yt, reduction="sum"), xr)
    assert (g.abs().sum(1) == 0).float().mean() > 0.5  # the saturation is there


def test_square_budget_follows_gradient_health() -> None:
    """Healthy gradients: Square gets healthy_share of the queries; rounding in forward: all of them."""
    _, x, y = digits_mlp_target()
    x, y = x[:40], y[:40]
    kw = {"eps": 0.03, "stages": ["apgd-ce", "square"], "steps": 10, "blackbox_queries": 200, "healthy_share": 0.1,
          "straight_through": False}
    per_input = {}
    for kind in ("plain", "round"):
        res = AutoAttack(**kw).run(_wrapped(kind), x, y)
        sq = res.extra["stages"][-1]
        probed = res.extra["gradients"]["probed"]
        assert probed > 0
        per_input[kind] = sq["queries"] / probed
    assert per_input["plain"] <= 20 + 3  # 10% of 200, plus the probe
    assert per_input["round"] > 100
    # healed by the automatic straight-through gradients: healthy for Square, as with a declared BPDA
    healed = AutoAttack(**{**kw, "straight_through": True}).run(_wrapped("round"), x, y)
    assert healed.extra["straight_through"]["used"] > 0
    assert healed.extra["stages"][-1]["queries"] <= 23 * healed.extra["gradients"]["probed"]


def test_stage_table_is_the_headline_on_a_randomised_model() -> None:
    """The last stage row is the result's robust accuracy, over the same inputs, even when the
    final check's draw disagrees with what a stage saw (the audit: 51.5% in the table, 82.5% headline)."""
    _, x, y = digits_mlp_target()
    x, y = x[:60], y[:60]
    res = AutoAttack(eps=0.05, **FAST).run(_wrapped("noise"), x, y)
    accs = [s["robust_accuracy"] for s in res.extra["stages"]]
    assert res.expectation is not None  # measured over fresh draws, like every stage row
    assert accs[-1] == pytest.approx(res.robust_accuracy)


def test_restart_rounds_run_near_the_boundary_and_stop_when_they_stop_paying() -> None:
    _, x, y = digits_mlp_target()
    x, y = x[:60], y[:60]
    kw = {"eps": 0.05, "steps": 15, "n_target_classes": 3, "stages": ["apgd-t"]}
    none = AutoAttack(**kw, restarts=3, near=0.0).run(_wrapped("plain"), x, y)  # nothing is that near
    assert "apgd_t_restarts" not in none.extra
    res = AutoAttack(**kw, restarts=3, near=1.0).run(_wrapped("plain"), x, y)  # every robust input is near
    rounds = res.extra["apgd_t_restarts"]
    robust_after_first = int(round(none.robust_accuracy * len(y)))
    assert rounds[0]["round"] == 2 and 0 < rounds[0]["inputs"] <= robust_after_first
    assert len(rounds) <= 2 and all(r["fooled"] > 0 for r in rounds[:-1])  # continues only while it pays
    assert res.robust_accuracy <= none.robust_accuracy


def test_straight_through_mode_gradients_and_values() -> None:
    """Rounding passes the identity's gradient, sqrt·sqrt at 0 the identity's (not NaN); values stay."""
    from bastion.core.straight_through import StraightThrough

    x = torch.tensor([0.0, 0.26, 0.5, 0.9], requires_grad=True)
    for step in (lambda v: torch.round(v * 7) / 7, lambda v: v.floor() + v.sign(),
                 lambda v: torch.sqrt(v) * torch.sqrt(v), lambda v: (v ** 0.5) * v.sqrt()):
        (plain,) = torch.autograd.grad(step(x).sum(), x)
        assert not (torch.isfinite(plain).all() and (plain != 0).all())  # the step breaks gradients
        with StraightThrough():
            out = step(x)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(g).all() and (g != 0).all()
        assert torch.allclose(out, step(x.detach()), atol=1e-3)
    with StraightThrough():  # other ops untouched
        (g,) = torch.autograd.grad((x.exp() * 2).sum(), x)
    assert torch.allclose(g, 2 * x.detach().exp())


@pytest.mark.parametrize(("kind", "eps"), [("round", 0.1), ("sqrt", 0.05)])
def test_auto_straight_through_fools_what_plain_apgd_cannot(kind: str, eps: float) -> None:
    """Rounding / sqrt·sqrt in forward, no BPDA declared: the automatic straight-through gradients
    fool inputs the model's own gradients cannot, judged by the real model."""
    _, x, y = digits_mlp_target()
    x, y = x[:60], y[:60]
    kw = {"eps": eps, "steps": 15, "n_target_classes": 3, "stages": ["apgd-ce", "apgd-t", "fab-t"]}
    target = _wrapped(kind)
    plain = AutoAttack(**kw, straight_through=False).run(target, x, y)
    auto = AutoAttack(**kw).run(target, x, y)
    assert "straight_through" not in plain.extra
    assert auto.robust_accuracy <= plain.robust_accuracy - 0.05
    assert auto.extra["straight_through"]["used"] > 0
    assert any("automatic straight-through gradients used" in n for n in auto.extra["notes"])
    assert np.array_equal(auto.adv_pred, target.predict(auto.x_adv))  # the real model's verdict
    assert auto.norms["linf"].max() <= eps + 1e-6


def test_auto_straight_through_changes_nothing_on_healthy_gradients() -> None:
    _, x, y = digits_mlp_target()
    x, y = x[:40], y[:40]
    kw = {"eps": 0.05, "steps": 10, "n_target_classes": 3, "stages": ["apgd-ce", "apgd-t", "fab-t"]}
    on, off = (AutoAttack(**kw, straight_through=s).run(_wrapped("plain"), x, y) for s in (True, False))
    assert np.array_equal(on.x_adv, off.x_adv) and on.robust_accuracy == off.robust_accuracy
    assert "straight_through" not in on.extra


def test_apgd_t_on_a_randomised_model_can_run_only_the_most_likely_targets() -> None:
    """Every APGD-T target runs on every input of a randomised model; randomised_target_classes
    keeps the most likely ones (deterministic models keep n_target_classes)."""
    _, x, y = digits_mlp_target()
    x, y = x[:20], y[:20]
    kw = {"eps": 0.05, "steps": 5, "n_target_classes": 9, "stages": ["apgd-ce", "apgd-t"], "eot_iter": 2}
    pruned, three, wide = (AutoAttack(**{**kw, **more}).run(_wrapped("noise"), x, y).extra["stages"][1]["queries"]
                           for more in ({"randomised_target_classes": 3}, {"n_target_classes": 3}, {}))
    assert pruned == three < wide
    plain = [AutoAttack(**{**kw, **more}).run(_wrapped("plain"), x, y).x_adv
             for more in ({"randomised_target_classes": 1}, {})]
    assert np.array_equal(*plain)
