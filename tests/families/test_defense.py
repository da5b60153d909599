"""Defense contract, with small defenses written here: bit-depth reduction (non-differentiable:
BPDA) and Gaussian input noise (randomised: EOT). A defended target is a Target; its own gradients
are the deployed model's (none through a numpy step), its adaptive view gives attacks useful ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks import PGD
from bastion.core.defense import AdaptivePath, DifferentiableDefendedTarget, TargetDefense
from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import BastionRuntimeError, UsageError


class BitDepth(TargetDefense):
    """Feature squeezing by colour-depth reduction (Xu et al., 2018, NDSS): round every input to
    ``2**bits`` levels. Written in numpy only, so gradients need BPDA (straight-through)."""

    name = "bit-depth"

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="identity")

    def preprocess(self, x, rng):
        levels = 2 ** 3 - 1
        return np.round(x * levels) / levels


class Noise(TargetDefense):
    """Gaussian input noise, clipped to the bounds (random: EOT over 16 draws); a torch twin."""

    name = "noise"
    randomized = True
    sigma = 0.3

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(eot_samples=16)

    def preprocess(self, x, rng):
        return np.clip(x + self.sigma * rng.normal(size=x.shape), 0, 1).astype(np.float32)

    def preprocess_torch(self, x, rng):
        noise = torch.as_tensor(rng.normal(size=tuple(x.shape)), dtype=x.dtype, device=x.device)
        return (x + self.sigma * noise).clamp(0, 1)


def linear_target() -> TorchTarget:
    """logits = (0, 4 * sum(x - 0.5)): class 1 above the diagonal hyperplane of [0, 1]^4."""
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0] * 4, [4.0] * 4]))
        net.bias.copy_(torch.tensor([0.0, -8.0]))
    return TorchTarget(net, InputSpec(shape=(4,)))


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """Points at distance 0.15..0.3 (L∞ per coordinate) from the boundary, correctly classified."""
    rng = np.random.default_rng(0)
    side = rng.integers(0, 2, 40)
    x = 0.5 + (2 * side[:, None] - 1) * rng.uniform(0.15, 0.3, (40, 1)) + rng.uniform(-0.02, 0.02, (40, 4))
    return x.astype(np.float32), side


def test_a_defended_target_is_a_target_and_leaves_the_original_alone() -> None:
    plain = linear_target()
    defended = BitDepth().wrap(plain)
    x, y = inputs()
    assert isinstance(defended, Target) and defended.white_box
    p = defended.predict_proba(x)
    want = plain.predict_proba(np.round(x * 7) / 7)
    np.testing.assert_allclose(p, want, atol=1e-6)
    assert defended.queries == 40 and plain.queries == 40  # the second 40 are the test's own query
    assert defended.describe()["adaptive"] == {"bpda": "identity", "eot_samples": 1}


def test_bpda_fools_what_the_defended_gradients_cannot() -> None:
    defended = BitDepth().wrap(linear_target())
    x, y = inputs()
    xt = torch.from_numpy(x).requires_grad_(True)
    (g_plain,) = torch.autograd.grad(defended.logits(xt)[:, 1].sum(), xt)
    assert torch.count_nonzero(g_plain) == 0  # what the deployed model gives: masked gradients
    xt = torch.from_numpy(x).requires_grad_(True)
    (g_adapt,) = torch.autograd.grad(defended.adaptive_view().logits(xt)[:, 1].sum(), xt)
    assert torch.allclose(g_adapt, torch.full_like(g_adapt, 4.0))  # straight-through: the model's own

    attack = PGD(eps=0.35, steps=20, random_start=False)
    blind = attack.run(NonAdaptive(linear_target(), BitDepth()), x, y)  # the defended model's own gradients
    adaptive = attack.run(defended, x, y)  # the attack takes its gradients from adaptive_view()
    assert blind.success.mean() == 0.0
    assert adaptive.success.mean() == 1.0
    assert np.array_equal(adaptive.adv_pred, defended.predict(adaptive.x_adv))  # judged by the real defense
    assert adaptive.queries > len(x)  # the view's gradient queries are charged to the run, as the target's


class NonAdaptive(DifferentiableDefendedTarget):
    """A defended target whose adaptive view is itself: what a non-adaptive evaluation sees."""

    def adaptive_view(self) -> Target:
        return self


def test_eot_averages_draws_and_counts_each_as_a_query() -> None:
    defended = Noise().wrap(linear_target(), seed=3)
    x, _ = inputs()
    view = defended.adaptive_view()
    before = defended.queries
    view.logits(torch.from_numpy(x))
    assert defended.queries - before == 16 * len(x)

    def grad(t: Target, seed: int) -> torch.Tensor:
        defended.rng = np.random.default_rng(seed)
        xt = torch.from_numpy(x[:8]).requires_grad_(True)
        (g,) = torch.autograd.grad(torch.log_softmax(t.logits(xt), 1)[:, 1].sum(), xt)
        return g

    cos = torch.nn.functional.cosine_similarity
    single = cos(grad(defended, 1), grad(defended, 2), dim=1).mean()
    eot = cos(grad(view, 1), grad(view, 2), dim=1).mean()
    assert eot > single + 0.1  # two EOT estimates of the expected gradient agree more than two draws


def test_randomness_is_the_defended_targets_own_and_seeded() -> None:
    x, _ = inputs()
    a = Noise().wrap(linear_target(), seed=1).predict_proba(x)
    b = Noise().wrap(linear_target(), seed=1).predict_proba(x)
    c = Noise().wrap(linear_target(), seed=2).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_declarations_that_cannot_give_honest_gradients_are_refused() -> None:
    class NoBpda(BitDepth):
        def adaptive(self) -> AdaptivePath:
            return AdaptivePath()

    class NoEot(Noise):
        def adaptive(self) -> AdaptivePath:
            return AdaptivePath()

    class NoApprox(BitDepth):
        def adaptive(self) -> AdaptivePath:
            return AdaptivePath(bpda="approximation")

    with pytest.raises(UsageError, match="no differentiable torch step"):
        NoBpda().wrap(linear_target())
    with pytest.raises(UsageError, match="randomised"):
        NoEot().wrap(linear_target())
    with pytest.raises(UsageError, match="defines no approximation"):
        NoApprox().wrap(linear_target())
    with pytest.raises(UsageError, match="eot_samples must be >= 1"):
        AdaptivePath(eot_samples=0)


def test_bpda_approximation_takes_the_gradient_of_the_approximation() -> None:
    class Squash(BitDepth):
        def adaptive(self) -> AdaptivePath:
            return AdaptivePath(bpda="approximation")

        def approximation(self, x):
            return 0.5 * x  # a deliberately different slope, to see whose gradient is used

    defended = Squash().wrap(linear_target())
    x, _ = inputs()
    xt = torch.from_numpy(x).requires_grad_(True)
    out = defended.adaptive_view().logits(xt)
    (g,) = torch.autograd.grad(out[:, 1].sum(), xt)
    assert torch.allclose(g, torch.full_like(g, 2.0))
    np.testing.assert_allclose(torch.softmax(out, 1).detach().numpy(), defended.predict_proba(x), atol=1e-5)


def test_a_defense_that_breaks_the_input_contract_is_a_runtime_error() -> None:
    class Shifts(BitDepth):
        def preprocess(self, x, rng):
            return x + 2.0

    with pytest.raises(BastionRuntimeError, match="output of defense 'bit-depth'.*outside"):
        Shifts().wrap(linear_target()).predict_proba(inputs()[0])


def test_output_hardening_and_black_box_targets() -> None:
    from sklearn.linear_model import LogisticRegression

    from bastion.core.targets.sklearn_target import SklearnTarget

    class TopOne(TargetDefense):
        """Answer with the label only (one-hot rows): hides confidences from the attacker."""

        name = "top-one"

        def adaptive(self) -> AdaptivePath:
            return AdaptivePath(bpda="identity")

        def postprocess(self, probs, rng):
            return np.eye(probs.shape[1])[probs.argmax(1)]

    x, y = inputs()
    bb = SklearnTarget(LogisticRegression().fit(x, y), InputSpec(shape=(4,)))
    defended = TopOne().wrap(bb)
    assert not defended.white_box and defended.adaptive_view() is defended
    p = defended.predict_proba(x)
    assert set(np.unique(p)) == {0.0, 1.0}
    wb = TopOne().wrap(linear_target())
    np.testing.assert_allclose(torch.softmax(wb.logits(torch.from_numpy(x)), 1).numpy(), wb.predict_proba(x),
                               atol=1e-6)


def test_defenses_are_reachable_by_name() -> None:
    from bastion.core.defense import DEFENSES

    DEFENSES.add("test-rounding", BitDepth)
    try:
        assert DEFENSES.get_object("test-rounding")().wrap(linear_target()).white_box
        with pytest.raises(UsageError, match="unknown defense 'test-roundin'"):
            DEFENSES.get_object("test-roundin")
    finally:
        DEFENSES.remove("test-rounding")
