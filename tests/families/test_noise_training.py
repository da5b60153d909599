"""``gaussian-noise`` (Cohen et al. 2019): the training batch is x + N(0, σ²I) from the run's generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_helpers import blobs, unit_spec

from bastion.certify.noise_training import GaussianNoiseTraining
from bastion.core.defense import DEFENSES
from bastion.core.params import ParamError
from bastion.core.training import TorchTrainingProcedure, TrainRequest, TrainStep


def test_the_batch_is_noised_at_sigma_reproducibly() -> None:
    x = torch.zeros(4000, 3)
    y = torch.zeros(4000, dtype=torch.long)
    steps = [TrainStep(module=None, x=x, y=y, epoch=0, step=0, generator=torch.Generator().manual_seed(1))
             for _ in range(2)]
    a, b = (GaussianNoiseTraining(sigma=0.3).batch_hook(s)[0] for s in steps)
    assert torch.equal(a, b) and float(a.std()) == pytest.approx(0.3, rel=0.05) and abs(float(a.mean())) < 0.02


def test_registered_for_harden_and_changes_training() -> None:
    assert DEFENSES.get_object("gaussian-noise") is GaussianNoiseTraining
    proc = TorchTrainingProcedure(lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                                              torch.nn.Linear(8, 2)), epochs=2, batch_size=32)
    req = TrainRequest(*blobs(96, 0), seed=3, input_spec=unit_spec())
    w = [torch.cat([p.detach().flatten() for p in m.fit(req).parameters()]).numpy()
         for m in (proc, GaussianNoiseTraining(sigma=0.5).apply(proc))]
    assert not np.allclose(w[0], w[1])


def test_sigma_must_be_positive() -> None:
    with pytest.raises(ParamError, match="sigma=0"):
        GaussianNoiseTraining(sigma=0)
