"""Gaussian data augmentation, the training of a base model for randomized smoothing (Cohen,
Rosenfeld & Kolter, 2019, arXiv:1902.02918, Section 3.3 and Appendix B): each training batch is
replaced by its copies under ``N(0, σ²I)`` noise, at the σ the model will be smoothed with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from bastion.core.defense import TrainingDefense
from bastion.core.params import Number, Params

if TYPE_CHECKING:
    import torch

    from bastion.core.training import TrainStep


class GaussianNoiseParams(Params):
    sigma: Number = Field(0.25, gt=0, description="Standard deviation σ of the noise (input units); train at the "
                                                  "σ you certify with.")


class GaussianNoiseTraining(TrainingDefense):
    """``gaussian-noise``: train on ``x + N(0, σ²I)`` (noise drawn from the training run's generator;
    inputs are not clipped, as the smoothed classifier sees them).

    >>> from bastion.certify.noise_training import GaussianNoiseTraining
    >>> defense = GaussianNoiseTraining(sigma=0.25)
    """

    name = "gaussian-noise"
    Params = GaussianNoiseParams

    def batch_hook(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        noise = torch.empty_like(step.x).normal_(0.0, self.params.sigma, generator=step.generator)
        return step.x + noise, step.y
