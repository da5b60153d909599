"""Randomized smoothing (Cohen et al. 2019): the certified radii equal a straightforward reference
computation of σ·Φ⁻¹(p_A lower) on the same noise draws; the draws do not depend on the batch size;
PREDICT abstains where the top two counts are close; bad parameters are refused by name."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
import torch
from family_helpers import blobs
from scipy.stats import binomtest

from bastion.certify.base import ABSTAIN
from bastion.certify.smoothing import NoiseDraws, RandomizedSmoothing
from bastion.core.params import ParamError
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget


@pytest.fixture(scope="module")
def mlp():  # noqa: ANN201 - (target, x, y)
    torch.manual_seed(0)
    x, y = blobs(200, 0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), 0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    xe, ye = blobs(12, 1)
    return TorchTarget(net, InputSpec(shape=(4,), lower=0, upper=1)), xe, ye


def reference_certify(target, x, ctx, sigma, n0, n, alpha):  # noqa: ANN001, ANN201
    """Algorithm CERTIFY written out input by input: the same noise draws, the model's argmax on each
    noisy copy, the counts, scipy's exact binomial interval and Φ⁻¹ from the standard library."""
    pred, radius = [], []
    for i in range(len(x)):
        counts = []
        for phase, num in (("selection", n0), ("estimation", n)):
            noise = NoiseDraws(ctx, phase, i, tuple(x.shape[1:]), sigma, "cpu").draw(0, num)
            with torch.no_grad():
                labels = target.module(torch.from_numpy(x[i]) + noise).argmax(dim=1).numpy()
            counts.append(np.array([np.sum(labels == c) for c in range(target.n_classes)]))
        c_a = int(np.argmax(counts[0]))
        n_a = int(counts[1][c_a])
        p_lower = binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        if p_lower < 0.5:
            pred.append(ABSTAIN)
            radius.append(0.0)
        else:
            pred.append(c_a)
            radius.append(sigma * NormalDist().inv_cdf(p_lower))
    return np.array(pred), np.array(radius)


def test_certified_radii_equal_the_reference_formula_on_the_same_draws(mlp) -> None:
    target, x, y = mlp
    params = {"sigma": 0.5, "n0": 20, "n": 300, "alpha": 0.01}
    res = RandomizedSmoothing(**params, batch_size=64).certify(target, x, y, RunContext(seed=7))
    ref_pred, ref_radius = reference_certify(target, x, RunContext(seed=7).spawn("smoothing"), **params)
    assert np.array_equal(res.prediction, ref_pred)
    np.testing.assert_allclose(res.radius, ref_radius, rtol=1e-9, atol=1e-12)
    # the figures are not degenerate: some inputs certified with a positive radius, some abstained
    assert (res.radius > 0.05).sum() >= 3 and res.abstained.sum() >= 1
    assert res.queries == len(x) * (20 + 300)


def test_the_certificate_does_not_depend_on_the_batch_size_and_follows_the_seed(mlp) -> None:
    target, x, y = mlp
    runs = [RandomizedSmoothing(sigma=0.5, n0=10, n=600, batch_size=b).certify(target, x, y, RunContext(seed=s))
            for b, s in ((1000, 3), (37, 3), (1000, 4))]
    assert np.array_equal(runs[0].radius, runs[1].radius) and np.array_equal(runs[0].prediction, runs[1].prediction)
    assert not np.array_equal(runs[0].radius, runs[2].radius)  # another seed, other draws
    # and the first input's draws alone equal its draws among the others
    alone = RandomizedSmoothing(sigma=0.5, n0=10, n=600).certify(target, x[:1], y[:1], RunContext(seed=3))
    assert alone.radius[0] == runs[0].radius[0]


def test_radius_grows_with_sigma_on_a_confident_input(mlp) -> None:
    target, x, y = mlp
    radii = [RandomizedSmoothing(sigma=s, n0=10, n=500).certify(target, x, y).radius.max() for s in (0.05, 0.2)]
    assert 0 < radii[0] < radii[1]


def test_predict_abstains_on_a_coin_flip_and_answers_on_a_clear_input() -> None:
    class Half(torch.nn.Module):  # class 1 when the first noisy feature is > 0: a coin flip at x = 0
        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.stack([-x[:, 0], x[:, 0]], dim=1) * 10

    target = TorchTarget(Half(), InputSpec(shape=(2,), lower=-5, upper=5))
    x = np.array([[0.0, 0.0], [3.0, 0.0]], np.float32)
    pred = RandomizedSmoothing(sigma=0.5, n=400, n0=10, alpha=0.001).predict(target, x)
    assert list(pred) == [ABSTAIN, 1]


@pytest.mark.parametrize("params,field,allowed", [
    ({"sigma": 0}, "sigma", "greater than 0"),
    ({"sigma": -1}, "sigma", "greater than 0"),
    ({"n0": 200, "n": 100}, "n", "must be >= n0"),
    ({"alpha": 0}, "alpha", "greater than 0"),
    ({"alpha": 1.0}, "alpha", "less than 1"),
])
def test_bad_parameters_are_refused_by_name(params, field, allowed) -> None:
    with pytest.raises(ParamError, match=allowed) as err:
        RandomizedSmoothing(**params)
    assert err.value.field == field and f"{field}=" in err.value.message


def test_a_non_torch_target_is_refused_clearly() -> None:
    from sklearn.linear_model import LogisticRegression

    from bastion.core.targets.sklearn_target import SklearnTarget
    from bastion.errors import UsageError

    x, y = blobs(40, 0)
    target = SklearnTarget(LogisticRegression().fit(x, y), InputSpec(shape=(4,), lower=0, upper=1))
    with pytest.raises(UsageError, match="needs a PyTorch"):
        RandomizedSmoothing(n=10, n0=5).certify(target, x[:2], y[:2])


def test_jit_gives_the_same_certificates_and_predictions(mlp) -> None:
    target, x, y = mlp
    params = {"sigma": 0.5, "n0": 20, "n": 300, "alpha": 0.01, "batch_size": 64}
    eager = RandomizedSmoothing(**params).certify(target, x, y, RunContext(seed=7))
    traced = RandomizedSmoothing(**params, jit=True).certify(target, x, y, RunContext(seed=7))
    assert np.array_equal(eager.prediction, traced.prediction) and np.array_equal(eager.radius, traced.radius)
    assert traced.queries == eager.queries == len(x) * 320
    assert np.array_equal(RandomizedSmoothing(**params, jit=True).predict(target, x, RunContext(seed=7)),
                          RandomizedSmoothing(**params).predict(target, x, RunContext(seed=7)))


class Branchy(torch.nn.Module):  # input-dependent control flow: a trace would freeze one branch
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):  # noqa: ANN001, ANN202
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class Noisy(torch.nn.Module):  # randomness in forward: the trace cannot reproduce the model's draws
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):  # noqa: ANN001, ANN202
        return self.fc(x + torch.randn_like(x))


@pytest.mark.parametrize("module,words", [(Branchy(), "cannot be traced for jit"),
                                          (Noisy(), "changed between two identical calls")])
def test_jit_refuses_models_a_trace_would_change(module, words) -> None:  # noqa: ANN001
    from bastion.errors import UsageError

    x, y = blobs(3, 0)
    target = TorchTarget(module, InputSpec(shape=(4,), lower=0, upper=1))
    with pytest.raises(UsageError, match=words):
        RandomizedSmoothing(n=10, n0=5, jit=True).certify(target, x, y)


class CountingCNN(torch.nn.Module):  # a plain CNN that counts the calls of its Python forward
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                       torch.nn.Flatten(), torch.nn.Linear(16, 3))
        self.calls = 0

    def forward(self, x):  # noqa: ANN001, ANN202
        self.calls += 1
        return self.net(x)


def test_jit_auto_is_the_default_and_traces_a_plain_cnn_with_the_same_certificates() -> None:
    torch.manual_seed(0)
    target = TorchTarget(CountingCNN(), InputSpec(shape=(1, 4, 4), lower=0, upper=1), copy=False)
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, 5)
    target.module.calls = 0  # the target's own probe at construction
    params = {"sigma": 0.3, "n0": 20, "n": 500, "alpha": 0.01, "batch_size": 100}
    assert RandomizedSmoothing().params.jit == "auto"
    eager = RandomizedSmoothing(**params, jit=False).certify(target, x, y, RunContext(seed=3))
    eager_calls, target.module.calls = target.module.calls, 0
    auto = RandomizedSmoothing(**params).certify(target, x, y, RunContext(seed=3))
    assert eager_calls == 5 * (1 + 5)  # one selection batch and five estimation batches per input
    assert target.module.calls == 3  # the trace (1) and the probe check (2): the counts ran on the trace
    assert np.array_equal(auto.prediction, eager.prediction) and np.array_equal(auto.radius, eager.radius)
    assert auto.queries == eager.queries == 5 * 520
    assert (auto.radius > 0).any()  # not a degenerate comparison


def _defended_mlp(mlp):  # noqa: ANN001, ANN202 - a white-box target that is not a plain PyTorch module
    from bastion.defenses.outputs import TopK

    return TopK(k=1).wrap(mlp[0])


@pytest.mark.parametrize("make,deterministic", [
    (lambda mlp: TorchTarget(Branchy(), InputSpec(shape=(4,), lower=0, upper=1)), True),
    (lambda mlp: TorchTarget(Noisy(), InputSpec(shape=(4,), lower=0, upper=1)), False),
    (_defended_mlp, True)], ids=["control-flow", "random-forward", "defended-target"])
def test_jit_auto_falls_back_to_the_model_as_it_is(make, deterministic, mlp, caplog) -> None:  # noqa: ANN001
    import logging

    torch.manual_seed(0)
    target = make(mlp)
    x, y = blobs(3, 0)
    with caplog.at_level(logging.INFO, logger="bastion.certify.smoothing"):
        auto = RandomizedSmoothing(n=40, n0=5, sigma=0.3).certify(target, x, y, RunContext(seed=1))
    assert "jit: auto runs the model as it is" in caplog.text
    if deterministic:  # the same certificates as with jit: false (a random model's differ by its own draws)
        eager = RandomizedSmoothing(n=40, n0=5, sigma=0.3, jit=False).certify(target, x, y, RunContext(seed=1))
        assert np.array_equal(auto.prediction, eager.prediction) and np.array_equal(auto.radius, eager.radius)


def test_jit_accepts_true_false_and_auto_only() -> None:
    assert RandomizedSmoothing(jit=True).params.jit is True and RandomizedSmoothing(jit=False).params.jit is False
    with pytest.raises(ParamError) as err:
        RandomizedSmoothing(jit="sometimes")
    assert err.value.field == "jit"


def test_a_range_checking_input_defense_sees_noisy_copies_clipped_to_the_input_bounds(mlp) -> None:
    """Regression: smoothing a target behind bit-depth reduction (a defense that refuses values outside
    [0, 1]) raised a DataError on the first noisy copy. The base classifier of a defended target is
    the defended model on the noisy copy clipped to the target's input bounds: a deterministic step,
    so Cohen et al.'s guarantee holds for it, and the counts equal a reference computed that way."""
    from bastion.defenses.transforms import BitDepthReduction

    target, x, y = mlp
    defended = BitDepthReduction(bits=3).wrap(target)
    params = {"sigma": 0.5, "n0": 10, "n": 200, "alpha": 0.01}
    res = RandomizedSmoothing(**params).certify(defended, x, y, RunContext(seed=5))
    # input 0's estimation counts, written out: clip, round to 8 levels, the model's argmax
    noise = NoiseDraws(RunContext(seed=5).spawn("smoothing"), "estimation", 0, (4,), 0.5, "cpu").draw(0, 200)
    z = torch.round(torch.clamp(torch.from_numpy(x[0]) + noise, 0, 1) * 7) / 7
    with torch.no_grad():
        want = np.bincount(target.module(z).argmax(1).numpy(), minlength=2)
    got = RandomizedSmoothing(**params).counts(defended, x[:1], RunContext(seed=5).spawn("smoothing"),
                                               "estimation", 200)
    assert np.array_equal(got[0], want)
    assert (res.radius > 0).sum() >= 3
