"""Models shared by the white-box attack tests (APGD, auto, minimal attacks, sanity checks)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget


def linear_binary(w: np.ndarray, b: float) -> torch.nn.Linear:
    """Two logits whose difference is ``w @ x + b`` (class 0 when positive)."""
    lin = torch.nn.Linear(len(w), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.stack([w / 2, -w / 2]), dtype=torch.float32))
        lin.bias.copy_(torch.tensor([b / 2, -b / 2], dtype=torch.float32))
    return lin


@functools.lru_cache(maxsize=1)
def trained_digits_mlp() -> tuple[torch.nn.Module, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small MLP trained on scikit-learn digits (64 features in [0, 1]) in about a second."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval(), x[tr], y[tr], x[te], y[te]


def digits_mlp_target() -> tuple[TorchTarget, np.ndarray, np.ndarray]:
    model, _, _, xte, yte = trained_digits_mlp()
    return TorchTarget(model, InputSpec(shape=(64,), lower=0.0, upper=1.0)), xte, yte


@functools.lru_cache(maxsize=1)
def pgd_trained_digits_mlp() -> torch.nn.Module:
    """The MLP of :func:`trained_digits_mlp` trained on 3-step L∞ PGD inputs (ε=0.1), in about two seconds."""
    _, xtr, ytr, _, _ = trained_digits_mlp()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(150):
        d = (torch.rand_like(xt) * 2 - 1) * 0.1
        for _ in range(3):
            d.requires_grad_(True)
            (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model((xt + d).clamp(0, 1)), yt), d)
            d = (d.detach() + 0.04 * g.sign()).clamp(-0.1, 0.1)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model((xt + d).clamp(0, 1)), yt).backward()
        opt.step()
    return model.eval()
