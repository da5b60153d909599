"""TrainingDefense contract: hooks written here change a TorchTrainingProcedure, visibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_helpers import blobs, unit_spec

from bastion.core.defense import TrainingDefense
from bastion.core.training import TorchTrainingProcedure, TrainRequest
from bastion.errors import BastionRuntimeError, UsageError


class InputNoise(TrainingDefense):
    """Gaussian noise augmentation in the batch hook (drawn from the run's generator)."""

    name = "input-noise"

    def batch_hook(self, step):
        noise = torch.randn(step.x.shape, generator=step.generator)
        return step.x + 0.3 * noise, step.y


class FrozenGradients(TrainingDefense):
    """Zero every gradient in the step hook: the optimiser then leaves the weights as initialised."""

    name = "frozen"

    def step_hook(self, step):
        for p in step.module.parameters():
            p.grad.zero_()


def procedure() -> TorchTrainingProcedure:
    return TorchTrainingProcedure(lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                                              torch.nn.Linear(8, 2)), epochs=3, batch_size=32)


def weights(module: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).numpy()


REQUEST = TrainRequest(*blobs(128, 0), seed=5, input_spec=unit_spec())


def test_batch_hook_changes_training_and_leaves_the_procedure_alone() -> None:
    plain = procedure()
    defended = InputNoise().apply(plain)
    assert plain.batch_hooks == () and len(defended.batch_hooks) == 1
    a, b = plain.fit(REQUEST), defended.fit(REQUEST)
    assert not np.allclose(weights(a), weights(b))  # the noise changed what was learnt
    np.testing.assert_array_equal(weights(b), weights(defended.fit(REQUEST)))  # seeded: reproducible
    assert defended(REQUEST).predict_proba(REQUEST.x[:3]).shape == (3, 2)  # still a TrainFn


def test_step_hook_runs_between_backward_and_the_optimiser_step() -> None:
    untrained = procedure().fit(REQUEST, epochs=0)
    frozen = FrozenGradients().apply(procedure()).fit(REQUEST)
    np.testing.assert_array_equal(weights(untrained), weights(frozen))
    assert not np.allclose(weights(untrained), weights(procedure().fit(REQUEST)))


def test_contract_is_enforced() -> None:
    class Nothing(TrainingDefense):
        pass

    class Truncates(TrainingDefense):
        def batch_hook(self, step):
            return step.x[:, :2], step.y

    with pytest.raises(UsageError, match="defines none of batch_hook, loss_hook, step_hook, epoch_hook"):
        Nothing().apply(procedure())
    with pytest.raises(UsageError, match="changes a TorchTrainingProcedure; the trainer is a function"):
        InputNoise().apply(lambda request: None)
    with pytest.raises(BastionRuntimeError, match=r"batch of \(32, 2\) inputs"):
        Truncates().apply(procedure()).fit(REQUEST)
