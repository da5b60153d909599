"""Square attack on the demo digits CNN seen as a black box: stays in the ball and the bounds,
beats random search, respects per-sample and hard query budgets, reproducible with a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks import Square, get_attack
from bastion.attacks.evasion.square import l2_square_pattern, p_schedule
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.threat import ThreatModel
from bastion.errors import TargetError, UsageError

from ._whitebox_models import trained_digits_mlp


@pytest.fixture(scope="module")
def blackbox(digits_target):  # noqa: ANN001, ANN201
    """The digits CNN behind a plain callable: no gradients reachable."""
    import torch

    torch.set_num_threads(1)
    return CallableTarget(lambda z: digits_target.predict_proba(z), list(range(10)), digits_target.input_spec,
                          name="digits-blackbox")


@pytest.fixture(scope="module")
def xy(digits_data):  # noqa: ANN001, ANN201
    return digits_data.x[:40], digits_data.y[:40]


def test_registered_and_black_box() -> None:
    a = get_attack("square", eps=0.2, max_queries=50)
    assert isinstance(a, Square) and a.family == "evasion-blackbox" and not a.needs_gradients
    with pytest.raises(UsageError):
        Square(p_init=0)
    with pytest.raises(UsageError):
        Square(max_queries=0)


def test_schedule_and_l2_pattern() -> None:
    assert p_schedule(0.8, 0, 1000) == 0.8
    assert p_schedule(0.8, 2, 1000) == 0.4  # iteration 20 of 10,000 on the paper's scale
    assert p_schedule(0.8, 999, 1000) < p_schedule(0.8, 100, 1000)
    pat = l2_square_pattern(5)
    assert abs(np.linalg.norm(pat) - 1) < 1e-12 and pat[:2].sum() > 0 > pat[2:].sum()


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.0)])
def test_stays_in_ball_and_bounds_and_beats_random_noise(blackbox, xy, norm: str, eps: float) -> None:  # noqa: ANN001
    x, y = xy
    res = Square(eps=eps, norm=norm, max_queries=300).run(blackbox, x, y)
    assert res.complete and res.attack == "square"
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.norms[norm].max() <= eps * (1 + 1e-5)
    rate = res.metrics()["success_rate"]
    # random search baseline: the same number of random points of the ball's surface, best kept
    rng = np.random.default_rng(0)
    ok = res.clean_pred == y
    fooled = np.zeros(len(x), bool)
    with blackbox.uncounted():
        for _ in range(20):
            d = rng.choice([-eps, eps], size=x.shape) if norm == "linf" else rng.normal(size=x.shape)
            if norm == "l2":
                d = d / np.linalg.norm(d.reshape(len(x), -1), axis=1).reshape(-1, 1, 1, 1) * eps
            fooled |= blackbox.predict(np.clip(x + d, 0, 1).astype(np.float32)) != y
    assert rate > 0.6 and rate > fooled[ok].mean() + 0.2
    curve = res.extra["query_curve"]
    assert curve["queries"][-1] == 300
    assert np.all(np.diff(curve["success_rate"]) >= 0)
    assert curve["success_rate"][-1] == pytest.approx(rate)
    spent = res.extra["queries_per_sample"]
    assert spent["max"] <= 300 and spent["attacked"] == ok.sum()
    assert res.queries <= len(x) + 300 * ok.sum()  # clean predictions + per-sample budget


def test_reproducible_with_seed(blackbox, xy) -> None:  # noqa: ANN001
    x, y = xy
    a = Square(eps=0.15, max_queries=40, seed=3).run(blackbox, x[:10], y[:10])
    b = Square(eps=0.15, max_queries=40, seed=3).run(blackbox, x[:10], y[:10])
    c = Square(eps=0.15, max_queries=40, seed=4).run(blackbox, x[:10], y[:10])
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert not np.array_equal(a.x_adv, c.x_adv)


def test_hard_budget_gives_partial_result(blackbox, xy) -> None:  # noqa: ANN001
    x, y = xy
    res = Square(eps=0.05, max_queries=500, batch_size=16).run(blackbox, x, y, ThreatModel(eps=0.05,
                                                                                         query_budget=300))
    assert not res.complete and "budget" in res.reason
    assert res.queries <= 300
    assert res.norms["linf"].max() <= 0.05 + 1e-6


def test_targeted(blackbox, xy) -> None:  # noqa: ANN001
    x, y = xy
    goal = (y[:15] + 1) % 10
    res = Square(eps=0.3, max_queries=300, targeted=True).run(blackbox, x[:15], y[:15], y_target=goal)
    assert res.targeted and res.success.mean() > 0.3
    assert np.all(res.adv_pred[res.success] == goal[res.success])


def test_refuses_label_only_target(digits_target, xy) -> None:  # noqa: ANN001
    def labels(z: np.ndarray) -> np.ndarray:
        return np.eye(10)[digits_target.predict_proba(z).argmax(1)]

    t = CallableTarget(labels, list(range(10)), digits_target.input_spec)
    t.label_only = True  # type: ignore[attr-defined]
    with pytest.raises(TargetError, match="hopskipjump"):
        Square(max_queries=5).run(t, *xy)


def test_tabular_vector_mode() -> None:
    """On 1-D inputs Square changes random subsets of features, in each feature's scale."""
    import torch

    from bastion.core.spec import tabular_spec
    from bastion.core.targets.torch_target import TorchTarget

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)).astype(np.float32) * np.array([1, 10, 100, 1, 1, 1], np.float32)
    spec = tabular_spec(x)
    torch.manual_seed(0)
    t = TorchTarget(torch.nn.Sequential(torch.nn.Linear(6, 3)), spec, classes=[0, 1, 2])
    with t.uncounted():
        y = t.predict(x)
    for norm, eps in (("linf", 0.5), ("l2", 1.0)):
        res = Square(eps=eps, norm=norm, max_queries=200).run(t, x, y)
        assert res.norms[norm].max() <= eps * (1 + 1e-5)  # norms are in ε units (feature std)
        assert res.success.mean() > 0.3


def test_saturated_logits_keep_their_margins() -> None:
    """A ×1000 copy of a model has the same decisions; its float32 probabilities are exactly 0 and 1,
    so Square scoring on them sees one constant margin. On the logits it is as successful as on
    the original (Andriushchenko et al. 2020 use the logit margin)."""
    torch.set_num_threads(1)
    model, _, _, x, y = trained_digits_mlp()
    scaled = torch.nn.Sequential(model, _Scale(1000.0))
    spec = InputSpec(shape=(64,), lower=0.0, upper=1.0)
    plain_t, scaled_t = TorchTarget(model, spec), TorchTarget(scaled, spec)
    x, y = x[:60], y[:60]
    assert np.array_equal(plain_t.predict(x), scaled_t.predict(x))
    p = scaled_t.predict_proba(x)
    assert (p.max(axis=1) == 1.0).mean() > 0.5  # the saturation the fix is about
    attack = Square(eps=0.1, max_queries=150, seed=3)
    plain, scaled_res = attack.run(plain_t, x, y), attack.run(scaled_t, x, y)
    assert plain.success.mean() > 0.2
    assert scaled_res.success.mean() >= plain.success.mean() - 0.05
    # a probabilities-only target keeps the log of its probabilities
    box = CallableTarget(lambda z: scaled_t.predict_proba(z), list(range(10)), spec, name="probs-only")
    assert np.allclose(box.predict_log_proba(x[:5]), np.log(np.clip(p[:5], np.finfo(np.float64).tiny, None)))


class _Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, z):  # noqa: ANN001, ANN201
        return z * self.k
