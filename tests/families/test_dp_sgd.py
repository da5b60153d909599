"""DP-SGD through Opacus (Abadi et al. 2016) as a TrainingDefense on a tiny MLP: the accountant's ε
spent is at most the target and grows with the steps, clipping and noise change the training,
BatchNorm is converted to GroupNorm (named), incompatible layers and non-uniform sampling refused,
and bad ε / δ refused naming the parameter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from bastion.core.params import ParamError  # noqa: E402
from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam  # noqa: E402
from bastion.defenses.dp_sgd import DPSGD, check_uniform_loader, fix_module  # noqa: E402
from bastion.errors import UsageError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def bn_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 2))


class Buffered(torch.nn.Module):
    """A trainable layer with a buffer: Opacus computes no per-sample gradient for it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.register_buffer("mean", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.w


def _fit(model=mlp, epochs: int = 2, **params) -> tuple[torch.nn.Module, dict]:
    x, y = _data()
    state: dict = {}
    proc = TorchTrainingProcedure(model, optimizer=adam(0.05), epochs=epochs, batch_size=32)
    defense = DPSGD(**{"epsilon": 3.0, "delta": 1e-3, "accountant": "rdp", **params})
    module = defense.apply(proc).fit(TrainRequest(x, y, seed=1), state=state)
    return module, state


def test_spent_epsilon_is_the_accountants_and_within_the_target() -> None:
    module, state = _fit()
    p = state["privacy"]
    assert 2.5 < p["epsilon"] <= 3.0 + 1e-6 and p["delta"] == 1e-3 and p["noise_multiplier"] > 0.3
    assert p["sample_rate"] == pytest.approx(1 / 10) and p["steps"] == 20
    assert not any(hasattr(q, "grad_sample") for q in module.parameters())  # Opacus's hooks removed
    assert isinstance(module, torch.nn.Sequential)  # the plain module, not Opacus's wrapper
    _, one_epoch = _fit(epochs=1)  # the noise is calibrated for the planned epochs: half of them spend less
    assert one_epoch["privacy"]["epsilon"] < p["epsilon"]


def test_private_training_differs_from_plain_and_still_learns() -> None:
    x, y = _data()
    plain = TorchTrainingProcedure(mlp, optimizer=adam(0.05), epochs=2, batch_size=32).fit(TrainRequest(x, y, seed=1))
    private, _ = _fit(epsilon=50.0)
    weak, _ = _fit(epsilon=0.05, max_grad_norm=0.01)
    flat = [torch.cat([q.detach().flatten() for q in m.parameters()]) for m in (plain, private)]
    assert not torch.allclose(*flat)
    acc = lambda m: float((m(torch.as_tensor(x)).argmax(1).numpy() == y).mean())  # noqa: E731
    assert acc(private) > 0.7 and acc(private) > acc(weak)


def test_batchnorm_becomes_groupnorm_with_a_note_naming_the_layer() -> None:
    module, state = _fit(bn_mlp)
    assert [type(m).__name__ for m in module] == ["Linear", "GroupNorm", "ReLU", "Linear"]
    assert module[1].num_groups == 1  # over the 16 features: one group per channel would output a constant
    x, y = _data()
    with torch.no_grad():
        one = module(torch.as_tensor(x[:1]))  # a batch of one passes
        acc = float((module(torch.as_tensor(x)).argmax(1).numpy() == y).mean())
    assert one.shape == (1, 2) and acc > 0.7
    notes = state["privacy"]["notes"]
    assert len(notes) == 1 and "1 (BatchNorm1d -> GroupNorm)" in notes[0]
    assert fix_module(mlp())[1] == []


def test_incompatible_layers_are_refused_with_opacus_reason() -> None:
    with pytest.raises(UsageError, match="dp-sgd cannot train this model privately: .*buffers"):
        fix_module(torch.nn.Sequential(torch.nn.Linear(8, 2), Buffered()))
    assert fix_module(mlp().eval())[1] == []  # a model in eval mode is validated as it trains


def test_non_uniform_sampling_is_refused() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    check_uniform_loader(torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True))
    weighted = torch.utils.data.WeightedRandomSampler(torch.ones(10), 10)
    with pytest.raises(UsageError, match="WeightedRandomSampler"):
        check_uniform_loader(torch.utils.data.DataLoader(ds, batch_size=2, sampler=weighted))
    with pytest.raises(UsageError, match="RandomSampler"):
        check_uniform_loader(torch.utils.data.DataLoader(ds, sampler=torch.utils.data.RandomSampler(
            ds, replacement=True)))
    x, y = _data()
    proc = DPSGD(epsilon=3.0, delta=1e-3).apply(TorchTrainingProcedure(mlp, epochs=1))
    with pytest.raises(UsageError, match="sample weights"):
        proc.fit(TrainRequest(x, y, sample_weight=np.linspace(0.1, 1, len(y))))


@pytest.mark.parametrize("params, field", [({"epsilon": 0}, "epsilon"), ({"epsilon": -1}, "epsilon"),
                                           ({"epsilon": 1, "delta": 0}, "delta"),
                                           ({"epsilon": 1, "delta": 1.0}, "delta"),
                                           ({"epsilon": 1, "max_grad_norm": 0}, "max_grad_norm")])
def test_bad_parameters_are_refused_naming_them(params: dict, field: str) -> None:
    with pytest.raises(ParamError) as err:
        DPSGD(**params)
    assert err.value.field == field


def test_delta_of_one_over_n_or_more_is_refused() -> None:
    with pytest.raises(UsageError, match=r"delta=0.01 must be below 1/n = 0.00333 \(n = 300"):
        DPSGD(epsilon=1.0, delta=0.01).check(mlp(), 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UsageError, match="delta"):
            _fit(delta=0.01)


def test_make_private_refuses_a_weighted_loader_before_calling_opacus() -> None:
    from bastion.defenses.dp_sgd import make_private

    ds = torch.utils.data.TensorDataset(torch.zeros(10, 8), torch.zeros(10, dtype=torch.long))
    loader = torch.utils.data.DataLoader(ds, batch_size=2,
                                         sampler=torch.utils.data.WeightedRandomSampler(torch.ones(10), 10))
    net = mlp()
    with pytest.raises(UsageError, match="WeightedRandomSampler"):
        make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), loader, epsilon=1.0, delta=1e-3, epochs=1,
                     max_grad_norm=1.0)


def test_without_opacus_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from bastion.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus -> ImportError
    with pytest.raises(MissingExtraError, match=r"bastion\[dp\]"):
        DPSGD(epsilon=1.0).check(mlp(), 300)


def tiny_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.GroupNorm(1, 3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 5, 2))


def ln_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def seq_mlp() -> torch.nn.Module:  # a Linear layer on 3 vectors per sample
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(12, 2))


def _clipped_step_grads(model, mode: str, x: torch.Tensor, y: torch.Tensor, clip: float) -> list[torch.Tensor]:
    """The gradient one private step hands the optimiser, with the noise set to zero."""
    from bastion.core.training import TrainSetup, cross_entropy

    torch.manual_seed(0)
    setup = TrainSetup(model(), lambda ps: torch.optim.SGD(ps, lr=1.0), lambda e: iter(()), 40, 8, 1, False,
                       False, torch.Generator().manual_seed(0), {})
    DPSGD(epsilon=3.0, delta=1e-3, max_grad_norm=clip, grad_sample_mode=mode, accountant="rdp").setup_hook(setup)
    assert (setup.net is setup.module) == (mode == "bk")  # bk: the plain module, bastion's clipping
    opt = setup.optimizer
    opt.noise_multiplier = 0.0
    opt.zero_grad()
    with setup.step_context():
        losses = cross_entropy(setup.net(x), y)
        setup.backward(losses) if setup.backward else (losses.sum() / len(losses)).backward()
    assert opt.pre_step() is not False
    grads = [p.grad.detach().clone() for p in setup.module.parameters()]
    for done in setup.cleanup:
        done()
    return grads


def two_conv() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))


@pytest.mark.parametrize("model, shape, layout", [
    (mlp, (8,), None), (tiny_cnn, (1, 5, 5), None), (ln_mlp, (8,), None), (seq_mlp, (3, 8), None),
    (two_conv, (3, 5, 5), torch.channels_last)])  # Opacus's own unfold misread channels-last inputs
def test_every_mode_gives_the_clipped_sum_of_a_per_sample_loop(model, shape, layout,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """bastion's one-pass clipping (bk), Opacus's ghost clipping and Opacus's per-sample gradients
    (hooks) all give sum_i g_i * min(1, C / |g_i|) / expected batch size, computed here one sample
    at a time (Linear on one and on several vectors per sample, Conv2d, GroupNorm, LayerNorm)."""
    from bastion.core.training import cross_entropy

    monkeypatch.setattr("opacus.privacy_engine.get_noise_multiplier", lambda **kw: 1.0)  # no calibration: no noise
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(11, *shape, generator=gen), torch.randint(0, 2, (11,), generator=gen)
    if layout is not None:
        x = x.contiguous(memory_format=layout)
    clip = 0.3  # below most per-sample norms: clipping is active
    torch.manual_seed(0)
    ref = model()
    total = [torch.zeros_like(p) for p in ref.parameters()]
    norms = []
    for i in range(len(x)):
        g = torch.autograd.grad(cross_entropy(ref(x[i:i + 1]), y[i:i + 1]).sum(), list(ref.parameters()))
        norm = torch.sqrt(sum((t ** 2).sum() for t in g))
        norms.append(float(norm))
        for acc, t in zip(total, g, strict=True):
            acc += t * min(1.0, clip / (float(norm) + 1e-6))
    assert sum(n > clip for n in norms) >= 6
    expected = [t / 8 for t in total]  # the expected batch size (40 samples, batch 8)
    for mode in ("bk", "ghost", "hooks"):
        got = _clipped_step_grads(model, mode, x, y, clip)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["bk", "ghost"])
def test_an_empty_poisson_batch_gives_the_noise_alone(mode: str) -> None:
    from bastion.core.training import TrainSetup

    setup = TrainSetup(mlp(), lambda ps: torch.optim.SGD(ps, lr=1.0), lambda e: iter(()), 40, 8, 1, False,
                       False, torch.Generator().manual_seed(0), {})
    DPSGD(epsilon=3.0, delta=1e-3, accountant="rdp", grad_sample_mode=mode).setup_hook(setup)
    with setup.step_context():
        setup.backward(setup.net(torch.zeros(0, 8)).sum(dim=1))
    assert setup.optimizer.pre_step() is not False
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in setup.module.parameters())  # noise
    for done in setup.cleanup:
        done()


def test_a_layer_bk_does_not_handle_falls_back_to_ghost_with_a_note() -> None:
    def conv1d() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8)), torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(),
                                   torch.nn.Linear(12, 2))

    notes = DPSGD(epsilon=3.0, delta=1e-3).check(conv1d(), 300)
    assert len(notes) == 1 and "Opacus's ghost clipping" in notes[0]
    module, state = _fit(conv1d, epochs=1)
    assert state["privacy"]["steps"] == 10 and state["privacy"]["grad_sample_mode"] == "ghost"


class Twice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lin(torch.relu(self.lin(x))))


def test_bk_refuses_a_layer_run_twice_in_one_pass() -> None:
    with pytest.raises(UsageError, match="Linear runs twice in one forward pass"):
        _fit(Twice, epochs=1)
