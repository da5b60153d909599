"""Stand-in models trained from a target's answers: the default small architecture and
Jacobian-based dataset augmentation (Papernot et al. 2017, "Practical Black-Box Attacks against
Machine Learning", arXiv:1602.02697). Shared by the evasion transfer attack, which trains a
surrogate to craft on, and the extraction attacks, which steal one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.spec import InputSpec


def input_statistics(x: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation the default module standardises with: per feature, or one
    scalar for images (per-pixel statistics of a few images are noise)."""
    shape = tuple(spec.shape)
    if spec.kind == "image" or len(shape) == 3:
        return np.full(shape, x.mean(), np.float32), np.full(shape, max(float(x.std()), 1e-6), np.float32)
    std = x.std(axis=0)
    return x.mean(axis=0).astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def surrogate_module(shape: tuple[int, ...], n_classes: int, mean: np.ndarray, std: np.ndarray) -> Any:
    """A small CNN (inputs c×h×w with h, w >= 4) or MLP, standardising its inputs itself."""
    import torch
    import torch.nn as nn

    class Standardise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

        def forward(self, z: Any) -> Any:
            return (z - self.mean) / self.std

    if len(shape) == 3 and min(shape[1:]) >= 4:
        c, h, w = shape
        body = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU(),
                             nn.Linear(64, n_classes))
        return nn.Sequential(Standardise(), body)
    d = int(np.prod(shape))
    return nn.Sequential(Standardise(), nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, n_classes))


def jacobian_augment(module: Any, x: np.ndarray, labels: np.ndarray, step: float, spec: InputSpec) -> np.ndarray:
    """Papernot et al.'s augmentation: ``x + step·sign(∂F_label(x)/∂x)`` for each input, the
    gradient of the module's output for the label the target gave it, ``step`` in each feature's
    scale, immutable features left alone, clipped to the bounds (a negative ``step`` walks back:
    the paper's periodic step size)."""
    import torch

    xb = torch.as_tensor(np.asarray(x, np.float32)).requires_grad_(True)
    out = module(xb)
    (grad,) = torch.autograd.grad(out.gather(1, torch.as_tensor(labels, dtype=torch.long)[:, None]).sum(), xb)
    lo, hi = spec.bounds_arrays()
    move = step * spec.scale_array() * spec.mutable_mask() * np.sign(grad.numpy())
    return np.clip(x + move, lo, hi).astype(np.float32)
