"""Interval bound propagation (Gowal et al. 2018): an input it verifies has no counterexample on a
dense grid of its ε-box (the exhaustive answer on a 2-input network); the bounds contain every
sampled output of a convolutional network; on a linear model the margin bound is the exact minimum
over the box's vertices; the radius is the largest ε verified; unsupported layers are refused by name."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from bastion.certify.ibp import IntervalBoundPropagation, input_box, margin_lower_bound, propagate, sequential_layers
from bastion.core.run import RunContext
from bastion.core.spec import FeatureSpec, InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import UsageError

EPS = 0.06


@pytest.fixture(scope="module")
def plane():  # noqa: ANN201 - (target, x, y): a 2-input ReLU network on three classes in [0, 1]^2
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centres = np.array([[0.25, 0.25], [0.75, 0.3], [0.5, 0.8]])
    y = rng.integers(0, 3, 300)
    x = np.clip(centres[y] + 0.12 * rng.normal(size=(300, 2)), 0, 1).astype(np.float32)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(net.parameters(), 0.03)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12)), -1).reshape(-1, 2).astype(np.float32)
    target = TorchTarget(net, InputSpec(shape=(2,), lower=0, upper=1))
    return target, grid, target.predict(grid)


def test_verified_inputs_have_no_counterexample_on_a_dense_grid_of_their_box(plane) -> None:
    target, x, y = plane
    res = IntervalBoundPropagation(eps=EPS).certify(target, x, y, RunContext())
    verified = res.radius >= EPS
    # the exhaustive answer: the model on a 41 x 41 grid of each input's box (vertices included)
    t = np.linspace(-EPS, EPS, 41)
    offsets = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    points = np.clip(x[:, None, :] + offsets[None], 0, 1).astype(np.float32)
    with torch.no_grad():
        labels = target.module(torch.from_numpy(points.reshape(-1, 2))).argmax(1).numpy().reshape(len(x), -1)
    robust = np.all(labels == y[:, None], axis=1)
    assert not np.any(verified & ~robust)  # sound: no verified input has a counterexample
    # not vacuous: IBP verifies many inputs, and the grid does find counterexamples near the boundaries
    assert verified.sum() >= 0.4 * len(x) and (~robust).sum() >= 10
    assert verified.sum() <= robust.sum()


def conv_net() -> nn.Sequential:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), nn.LeakyReLU(0.1)),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24, 12), nn.Tanh(), nn.Dropout(0.5), nn.Linear(12, 5))
    bn = net[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.2, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)  # negative scales too
    bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval().double()


def test_bounds_contain_every_sampled_output_of_a_conv_net() -> None:
    net = conv_net()
    layers = sequential_layers(net)
    assert len(layers) == 12  # the nested Sequential is flattened
    spec = InputSpec(shape=(1, 8, 8), lower=0, upper=1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, (6, 1, 8, 8)))
    lower, upper = (b[0] for b in input_box(spec, x, np.array([0.05])))
    lo, hi = propagate(layers, lower, upper)
    # 400 random points and 400 random vertices of each box
    u = torch.from_numpy(rng.uniform(0, 1, (800, *x.shape)))
    u[400:] = (u[400:] > 0.5).double()
    points = lower + u * (upper - lower)
    with torch.no_grad():
        out = net(points.reshape(-1, 1, 8, 8)).reshape(800, len(x), -1)
    assert torch.all(out >= lo - 1e-9) and torch.all(out <= hi + 1e-9)
    assert torch.all(hi - lo > 1e-4)  # not vacuous: the bounds have width
    # the margin bound holds for every sampled point, whatever class is asked about
    for c in range(5):
        cls = torch.full((len(x),), c)
        bound = margin_lower_bound(layers, lower, upper, cls)
        sampled = (out[..., c:c + 1] - out).masked_fill(torch.arange(5) == c, torch.inf).amin(dim=(0, 2))
        assert torch.all(bound <= sampled + 1e-9)
    # at ε = 0 the bounds are the network's output
    lo0, hi0 = propagate(layers, x, x)
    with torch.no_grad():
        torch.testing.assert_close(lo0, net(x)), torch.testing.assert_close(hi0, net(x))


def test_on_a_linear_model_the_margin_bound_is_the_minimum_over_the_box_vertices() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4)).double()
    spec = InputSpec(shape=(3,), lower=0, upper=1)
    x = torch.tensor([[0.5, 0.2, 0.97], [0.1, 0.6, 0.4]], dtype=torch.float64)
    lower, upper = (b[0] for b in input_box(spec, x, np.array([0.1])))
    assert upper[0, 2] == 1.0  # clipped to the input bounds
    for c in range(4):
        with torch.no_grad():
            bound = margin_lower_bound(sequential_layers(net), lower, upper, torch.full((2,), c))
        exact = []
        for i in range(2):
            vertices = torch.tensor(list(itertools.product(*zip(lower[i].tolist(), upper[i].tolist()))),
                                    dtype=torch.float64)
            z = net(vertices).detach()
            exact.append(min((z[:, c] - z[:, k]).min().item() for k in range(4) if k != c))
        np.testing.assert_allclose(bound.numpy(), exact, rtol=1e-12, atol=1e-12)


def test_the_radius_is_the_largest_eps_verified_and_agrees_with_single_eps_runs(plane) -> None:
    target, x, y = plane
    eps = [0.0, 0.02, EPS, 0.15]
    res = IntervalBoundPropagation(eps=eps, batch_size=17).certify(target, x, y, RunContext())
    assert res.norm == "linf" and res.queries == len(x) and not res.abstained.any()
    assert set(np.unique(res.radius)) <= set(eps)
    assert np.array_equal(res.prediction, target.predict(x))
    accs = res.curve(eps)
    assert accs == sorted(accs, reverse=True) and accs[0] > accs[2] > 0
    for e in eps[1:]:
        alone = IntervalBoundPropagation(eps=e).certify(target, x, y, RunContext())
        assert alone.certified_accuracy(e) == res.certified_accuracy(e)


def test_immutable_features_and_scales_shape_the_box() -> None:
    spec = InputSpec(shape=(3,), features=[FeatureSpec("a", lower=0, upper=10, scale=2.0),
                                           FeatureSpec("b", mutable=False), FeatureSpec("c", lower=-1, upper=1)])
    x = torch.tensor([[9.5, 3.0, 0.0]], dtype=torch.float64)
    lower, upper = input_box(spec, x, np.array([0.5]))
    assert lower.tolist() == [[[8.5, 3.0, -0.5]]] and upper.tolist() == [[[10.0, 3.0, 0.5]]]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2


class Skip(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x


@pytest.mark.parametrize("module,words", [
    (nn.Sequential(nn.Linear(2, 3), nn.GELU()), "layer '1' (GELU)"),
    (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Softmax(dim=1)), nn.Linear(2, 3)),
     "layer '1.1' (Softmax)"),
    (Net(), "the model (Net)"),
    (nn.Sequential(Skip(nn.Linear(2, 2)), nn.Linear(2, 3)), "layer '0' (Skip)"),
    (nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(-0.2)), "negative slope"),
    (nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False)), "running statistics"),
])
def test_unsupported_layers_are_refused_by_name(module: nn.Module, words: str) -> None:
    target = TorchTarget(module, InputSpec(shape=(2,)))
    x = np.full((2, 2), 0.5, np.float32)
    with pytest.raises(UsageError, match="certifier 'ibp' cannot bound") as err:
        IntervalBoundPropagation(eps=0.1).certify(target, x, np.zeros(2, np.int64))
    assert words in str(err.value)


def test_models_ibp_cannot_bound_are_refused() -> None:
    spec = InputSpec(shape=(2,))
    x, y = np.full((2, 2), 0.5, np.float32), np.zeros(2, np.int64)
    probs = TorchTarget(nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=1)), spec, output="probabilities")
    with pytest.raises(UsageError, match="returns probabilities"):
        IntervalBoundPropagation(eps=0.1).certify(probs, x, y)
    black_box = CallableTarget(lambda a: np.tile([0.2, 0.8], (len(a), 1)), [0, 1], spec)
    with pytest.raises(UsageError, match="needs a pytorch target, got a"):
        IntervalBoundPropagation(eps=0.1).certify(black_box, x, y)
    with pytest.raises(UsageError, match="parameter 'eps' is required"):
        IntervalBoundPropagation()
    with pytest.raises(UsageError, match=r"eps\.0=-0.1 is not allowed: must be a finite number >= 0"):
        IntervalBoundPropagation(eps=-0.1)


def test_ibp_training_raises_the_verified_accuracy() -> None:
    from bastion.certify.ibp_training import IBPTraining
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam

    rng = np.random.default_rng(0)
    centres = np.array([[0.25, 0.25], [0.75, 0.3], [0.5, 0.8]])
    y = rng.integers(0, 3, 300)
    x = np.clip(centres[y] + 0.12 * rng.normal(size=(300, 2)), 0, 1).astype(np.float32)
    spec = InputSpec(shape=(2,), lower=0, upper=1)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

    plain = TorchTrainingProcedure(model=net, optimizer=adam(0.01), epochs=30, batch_size=50)
    defense = IBPTraining(eps=0.08, warmup_epochs=2, ramp_epochs=10)
    verified = []
    for procedure in (plain, defense.apply(plain)):
        module = procedure.fit(TrainRequest(x, y, seed=0, input_spec=spec))
        res = IntervalBoundPropagation(eps=0.08).certify(TorchTarget(module, spec), x, y)
        verified.append(res.certified_accuracy(0.08))
    assert verified[1] >= verified[0] + 0.08, verified
    assert defense.schedule(0) == (0.0, 1.0) and defense.schedule(1) == (0.0, 1.0)
    assert defense.schedule(2) == pytest.approx((0.008, 0.95)) and defense.schedule(40) == pytest.approx((0.08, 0.5))
    assert defense.eps_at(0) == 0 and defense.eps_at(2) == pytest.approx(0.008)  # what bastion harden logs


def test_ibp_training_refuses_what_it_cannot_bound() -> None:
    from bastion.certify.ibp_training import IBPTraining
    from bastion.core.params import ParamError
    from bastion.core.training import TorchTrainingProcedure, TrainRequest

    x, y = np.random.default_rng(0).uniform(0, 1, (20, 2)).astype(np.float32), np.arange(20) % 2
    procedure = IBPTraining(eps=0.1, warmup_epochs=0).apply(TorchTrainingProcedure(
        model=lambda: nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), epochs=1, batch_size=10))
    with pytest.raises(UsageError, match=r"layer '1' \(BatchNorm1d\): the layer is in training mode"):
        procedure.fit(TrainRequest(x, y, seed=0))
    with pytest.raises(ParamError, match="norm='l2' is not allowed"):
        IBPTraining(eps=0.1, norm="l2")
