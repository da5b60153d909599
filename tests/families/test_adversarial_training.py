"""Adversarial-training defenses (pgd-at, trades, fast-fgsm): the batches they craft lie inside the
ε-ball and the bounds and raise the loss; fast-fgsm's catastrophic-overfitting check stops and
restores on a constructed collapse, and only then; parameters are refused with their name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bastion.core.defense import DEFENSES, TrainingDefense
from bastion.core.params import ParamError
from bastion.core.spec import InputSpec
from bastion.core.training import EpochEnd, TorchTrainingProcedure, TrainRequest, TrainStep

SPEC = InputSpec(shape=(1, 4, 4), lower=0.0, upper=1.0, kind="image")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def _step(module: nn.Module, n: int = 32, seed: int = 0) -> TrainStep:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 4, 4), generator=g)
    x[:4] = 0.0  # on the lower bound: clipping must hold there
    x[4:8] = 1.0
    y = torch.randint(0, 3, (n,), generator=g)
    return TrainStep(module.train(), x, y, epoch=0, step=0, generator=g, spec=SPEC)


@pytest.mark.parametrize("name, norm", [("pgd-at", "linf"), ("pgd-at", "l2"), ("trades", "linf"),
                                        ("fast-fgsm", "linf"), ("fast-fgsm", "l2")])
def test_crafted_batches_lie_in_the_ball_and_the_bounds_and_raise_the_loss(name: str, norm: str) -> None:
    eps = 0.1 if norm == "linf" else 0.5
    defense = DEFENSES.get_object(name)(eps=eps, norm=norm)
    step = _step(_cnn())
    x_adv = defense.craft(step)
    delta = (x_adv - step.x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(size.mean()) > 0.3 * eps  # it did move
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        module = step.module.eval()
        clean = F.cross_entropy(module(step.x), step.y)
        adv = F.cross_entropy(module(x_adv), step.y)
    if name != "trades":  # TRADES ascends the KL term, not the cross-entropy
        assert float(adv) > float(clean)


def test_linf_ascent_equals_the_projected_delta_loop() -> None:
    """The fused L∞ loop gives the iterates of the textbook one: step on δ, project onto the ball,
    clip x + δ to the bounds (here with a per-feature scale and an immutable feature)."""
    from bastion.attacks.evasion._torch import Geometry, ascent_direction, project_ball
    from bastion.attacks.evasion.training.base import ascend

    spec = InputSpec(shape=(4,), features=None, lower=[0, 0, -1, 0], upper=[1, 2, 1, 1], kind="vector")
    geo = Geometry.from_spec(spec)
    geo.scale = torch.tensor([1.0, 2.0, 0.5, 1.0])
    geo.mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.rand(16, 4) * torch.tensor([1.0, 2.0, 2.0, 1.0]) - torch.tensor([0.0, 0.0, 1.0, 0.0])
    y = torch.randint(0, 3, (16,))
    loss = lambda z: F.cross_entropy(z, y, reduction="none")  # noqa: E731
    fused = ascend(module, loss, x, geo, eps=0.2, norm="linf", steps=5, step_size=0.07,
                   generator=torch.Generator().manual_seed(3))
    delta = ((torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.2) * geo.mask
    delta = geo.delta_of(x, geo.apply(x, delta))
    for _ in range(5):
        x_adv = geo.apply(x, delta).requires_grad_(True)
        (g,) = torch.autograd.grad(loss(module(x_adv)).sum(), x_adv)
        delta = project_ball(delta + 0.07 * ascent_direction(g * geo.scale * geo.mask, "linf"), 0.2, "linf")
        delta = geo.delta_of(x, geo.apply(x, delta))
    assert torch.allclose(fused, geo.apply(x, delta), atol=1e-6)
    assert torch.equal(fused[:, 3], x[:, 3])  # the immutable feature never moves


def test_pgd_training_trains_on_the_crafted_batch() -> None:
    defense = DEFENSES.get_object("pgd-at")(eps=0.1, steps=3)
    step = _step(_cnn())
    x, y = defense.apply(TorchTrainingProcedure(model=_cnn)).batch_hooks[0](step)
    assert x.shape == step.x.shape and torch.equal(y, step.y) and not torch.equal(x, step.x)


def test_trades_objective_is_clean_loss_plus_beta_kl() -> None:
    trades = DEFENSES.get_object("trades")(eps=0.1, beta=6.0, steps=2)
    step = _step(_cnn())
    losses = trades.loss_hook(step)
    assert losses.shape == (32,) and losses.requires_grad
    with torch.no_grad():
        ce = F.cross_entropy(step.module.train()(step.x), step.y, reduction="none")
    assert bool((losses >= ce - 1e-5).all())  # β·KL >= 0
    zero_kl = DEFENSES.get_object("trades")(eps=1e-9, beta=6.0, steps=1)
    assert torch.allclose(zero_kl.loss_hook(_step(_cnn())), ce, atol=1e-4)  # no room to move: KL ~ 0


def test_warm_up_grows_eps_linearly() -> None:
    d = DEFENSES.get_object("pgd-at")(eps=0.1, warmup_epochs=4)
    assert [round(d.eps_at(e), 4) for e in range(6)] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]


# --- fast-fgsm's catastrophic-overfitting check ----------------------------------------------------
def _linear(weight: float) -> nn.Module:
    """Inputs at 0 are class 0 by a margin of 0.05; ``weight`` says how much any step toward 1 moves
    class 1: 0 = unbreakable, 100 = broken by a 0.1 step (a collapse)."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        m[1].weight.zero_()
        m[1].weight[1].fill_(weight)
        m[1].bias.copy_(torch.tensor([0.05, 0.0]))
    return m


def _end(module: nn.Module, epoch: int, state: dict) -> EpochEnd:
    x = torch.zeros((16, 1, 4, 4))
    y = torch.zeros(16, dtype=torch.long)
    return EpochEnd(module, epoch, steps=epoch + 1, generator=torch.Generator().manual_seed(0), state=state,
                    spec=SPEC, x_val=x, y_val=y)


def test_catastrophic_overfitting_stops_and_restores_the_previous_epoch() -> None:
    fast = DEFENSES.get_object("fast-fgsm")(eps=0.1)
    state: dict = {}
    module = _linear(0.0)
    assert fast.epoch_hook(_end(module, 0, state)) is False  # PGD accuracy 1.0: remembered
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module[1].weight[1].fill_(100.0)  # the next epoch collapses: PGD accuracy 0
    assert fast.epoch_hook(_end(module, 1, state)) is True
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())  # the previous weights
    assert "catastrophic overfitting at epoch 2" in state["stopped"] and "1.000 to 0.000" in state["stopped"]


def test_no_collapse_no_stop() -> None:
    fast = DEFENSES.get_object("fast-fgsm")(eps=0.1, collapse_drop=0.2)
    state: dict = {}
    module = _linear(0.0)
    for epoch in range(3):
        assert fast.epoch_hook(_end(module, epoch, state)) is False
    assert "stopped" not in state


def test_the_check_stops_a_training_run_early() -> None:
    """Through the procedure: the collapse after epoch 2 ends training there, weights of epoch 1."""
    fast = DEFENSES.get_object("fast-fgsm")(eps=0.1)
    weights: list[dict] = []

    def collapse(end: EpochEnd) -> bool:  # a stand-in for the overfitting: after epoch 1 the model breaks
        weights.append({k: v.clone() for k, v in end.module.state_dict().items()})
        if end.epoch == 1:
            with torch.no_grad():
                end.module[1].weight.zero_()
                end.module[1].weight[1].fill_(100.0)
                end.module[1].bias.copy_(torch.tensor([0.05, 0.0]))
        return False

    x = np.zeros((16, 1, 4, 4), np.float32)
    proc = TorchTrainingProcedure(model=lambda: _linear(0.0), epochs=5, batch_size=16,
                                  optimizer=lambda p: torch.optim.SGD(p, lr=0.0), epoch_hooks=[collapse])
    module = fast.apply(proc).fit(TrainRequest(x, np.zeros(16, np.int64), x_val=x, y_val=np.zeros(16, np.int64),
                                               input_spec=SPEC), _linear(0.0))
    assert len(weights) == 2  # epochs 1 and 2 ran, then the check stopped training
    assert float(module[1].weight.detach().abs().max()) == 0.0  # restored: not the collapsed weights


# --- parameters ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pgd-at", "trades", "fast-fgsm"])
@pytest.mark.parametrize("params, field", [({"eps": 0}, "eps"), ({"eps": -0.1}, "eps"),
                                           ({"steps": 0}, "steps"), ({"norm": "l3"}, "norm")])
def test_bad_parameters_name_the_parameter(name: str, params: dict, field: str) -> None:
    with pytest.raises(ParamError) as err:
        DEFENSES.get_object(name)(**params)
    assert err.value.field == field and field in str(err.value)


def test_registered_as_training_defenses() -> None:
    for name in ("pgd-at", "trades", "fast-fgsm"):
        assert issubclass(DEFENSES.get_object(name), TrainingDefense)
