"""Randomised targets are evaluated in expectation (issue 9, item 1): the model's own noise is
seeded from the run, gradients are EOT gradients, no input is settled on one draw, and accuracies
are expectations over fresh draws with a confidence interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bastion
from bastion.attacks.evasion.expectation import draw_counts, shares
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from tests.attacks._whitebox_models import trained_digits_mlp


class Noisy(torch.nn.Module):
    """Gaussian noise added to the input inside ``forward``."""

    def __init__(self, inner: torch.nn.Module, sigma: float) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


@pytest.fixture(scope="module")
def noisy() -> tuple[TorchTarget, np.ndarray, np.ndarray]:
    model, _, _, xte, yte = trained_digits_mlp()
    return TorchTarget(Noisy(model, 0.3), InputSpec(shape=(64,), lower=0.0, upper=1.0)), xte[:60], yte[:60]


def test_a_fixed_seed_reproduces_a_run_on_a_randomised_model(noisy) -> None:
    target, x, y = noisy
    attack = bastion.attacks.PGD(eps=0.1, steps=5, draws=20, eot_iter=4)
    a, b = (attack.run(target, x, y, None, RunContext(seed=3)) for _ in range(2))
    c = attack.run(target, x, y, None, RunContext(seed=4))
    assert np.array_equal(a.x_adv, b.x_adv) and a.robust_accuracy == b.robust_accuracy
    assert np.array_equal(a.expectation.adv_correct, b.expectation.adv_correct)
    assert not np.array_equal(a.x_adv, c.x_adv)  # the seed does reach the model's noise
    state = torch.get_rng_state()
    attack.run(target, x[:5], y[:5], None, RunContext(seed=3))
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is left as it was


def test_expected_accuracy_and_its_interval_are_reported(noisy) -> None:
    target, x, y = noisy
    res = bastion.attacks.PGD(eps=0.1, steps=5, draws=30).run(target, x, y)
    e = res.expectation
    assert e is not None and e.draws == 30 and e.eot == 20
    per_input = e.adv_correct
    assert set(np.round(per_input * 30, 6)) <= set(range(31))  # shares of 30 draws
    assert res.robust_accuracy == pytest.approx(per_input.mean())
    assert e.ci[0] <= res.robust_accuracy <= e.ci[1] and e.ci[1] - e.ci[0] > 0
    m = res.metrics()
    assert m["draws"] == 30 and m["robust_accuracy_ci_low"] == e.ci[0] and m["robust_accuracy"] == res.robust_accuracy
    assert "robust accuracy in expectation over 30 draws" in e.describe()
    assert any("randomised target" in n for n in res.extra["notes"])


def test_deterministic_models_are_not_measured_in_expectation() -> None:
    model, _, _, xte, yte = trained_digits_mlp()
    target = TorchTarget(model, InputSpec(shape=(64,), lower=0.0, upper=1.0))
    res = bastion.attacks.PGD(eps=0.1, steps=5).run(target, xte[:30], yte[:30])
    assert res.expectation is None and "draws" not in res.metrics()


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_eot_attack_is_clearly_stronger_in_expectation_than_single_draw(noisy, name) -> None:
    """What a single-draw attack reports (and its adversarial inputs, measured in expectation) is
    clearly above what the EOT attack reaches: the audit's 18-39 points of overstatement."""
    target, x, y = noisy
    single = bastion.attacks.get_attack(name, eps=0.1, steps=10, randomized=False).run(target, x, y)
    eot = bastion.attacks.get_attack(name, eps=0.1, steps=10, draws=50).run(target, x, y)
    counts = draw_counts(target, single.x_adv, 50, 256)
    single_expected = shares(counts, y, y, False)[0].mean()
    assert eot.robust_accuracy < single.robust_accuracy - 0.15
    assert eot.robust_accuracy < single_expected - 0.1


def test_auto_never_keeps_the_clean_input_because_one_draw_was_right(noisy) -> None:
    target, x, y = noisy
    res = bastion.attacks.AutoAttack(eps=0.1, steps=10, stages=["apgd-ce"], draws=30).run(target, x, y)
    attacked = res.expectation.clean_correct > 0
    moved = np.abs(res.x_adv - x).max(axis=1) > 0
    assert moved[attacked].all()
    last = res.extra["stages"][-1]["robust_accuracy"]
    assert last == pytest.approx(res.robust_accuracy)  # the stage table agrees with the headline


def test_the_evasion_check_reports_expectations_with_their_interval(noisy) -> None:
    from bastion.campaign.checks.base import CheckContext
    from bastion.campaign.checks.evasion import EvasionCheck, EvasionParams
    from bastion.core.data import Dataset

    target, x, y = noisy
    check = EvasionCheck("pgd", EvasionParams(attack="pgd", eps=[0.05, 0.1], params={"steps": 5, "draws": 20},
                                              examples=0))
    res = check.run(CheckContext(target=target, data=Dataset(x, y), y=y))
    acc = res.values("robust_accuracy")
    low, high = res.values("robust_accuracy_ci_low"), res.values("robust_accuracy_ci_high")
    assert len(acc) == len(low) == len(high) == 2 and all(lo <= a <= hi for a, lo, hi in zip(acc, low, high))
    assert res.values("draws") == [20, 20]
    finding = res.findings[0]
    assert "robust accuracy in expectation over 20 draws, 95% CI [" in finding.title


def test_min_eps_brackets_on_a_randomised_model_need_most_draws_fooled(noisy) -> None:
    target, x, y = noisy
    res = bastion.attacks.MinimalEps(attack="pgd", attack_params={"steps": 5, "eot_iter": 4}, eps_max=0.5,
                                     search_steps=3, draws=20).run(target, x[:20], y[:20])
    upper = np.asarray(res.extra["min_eps"])
    found = np.isfinite(upper) & (upper > 0)
    assert found.any() and res.expectation is not None and res.expectation.eot == 4
    # where a bracket was found, the kept input is fooled on most of the fresh draws far more often than not
    assert res.expectation.adv_success[found].mean() > 0.5


def test_the_policy_declares_a_target_randomised(tmp_path) -> None:
    """A remote model is not probed: the policy's target.randomized puts every attack in expectation."""
    from bastion.campaign.runner import scan

    (tmp_path / "m.py").write_text("from tests.attacks._whitebox_models import trained_digits_mlp\n"
                                   "def model():\n    return trained_digits_mlp()[0]\n"
                                   "def data():\n    _, _, _, x, y = trained_digits_mlp()\n    return x[:30], y[:30]\n")
    pol = {"version": 1, "name": "r", "data": {"source": f"python:{tmp_path / 'm.py'}:data"},
           "target": {"model": f"python:{tmp_path / 'm.py'}:model", "input_shape": [64], "bounds": [0.0, 1.0]},
           "checks": [{"name": "pgd", "kind": "evasion", "attack": "pgd", "eps": [0.1],
                       "params": {"steps": 3, "draws": 7, "eot_iter": 2}, "examples": 0}],
           "output": {"dir": str(tmp_path / "out"), "formats": ["json"]}}
    assert scan(pol).checks[0].values("draws") == []  # deterministic and probed: single measurements
    pol["target"]["randomized"] = True
    assert scan(pol).checks[0].values("draws") == [7]


def test_black_box_attacks_are_measured_in_expectation_too(noisy) -> None:
    target, x, y = noisy
    res = bastion.attacks.get_attack("square", eps=0.1, max_queries=30, draws=10).run(target, x[:20], y[:20])
    assert res.expectation is not None and res.expectation.eot == 1
    assert any("black-box" in n for n in res.extra["notes"])
