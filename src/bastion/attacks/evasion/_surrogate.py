"""Train a surrogate of a target from its answers to queries (Papernot et al. 2017, "Practical
Black-Box Attacks against Machine Learning", arXiv:1602.02697): label the attack inputs with the
target, then grow the set by Jacobian-based augmentation, ``x + λ·sign(∂F_label/∂x)``, querying the
target for each new point, all within a query budget. Small torch models: a CNN for images, an MLP
otherwise, trained with bastion's TorchTrainingProcedure (warm-started between augmentation rounds).
Soft labels (the target's probabilities) are used unless the target returns labels only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from bastion.core.surrogate import input_statistics, jacobian_augment, surrogate_module
from bastion.core.targets.base import Target

log = logging.getLogger(__name__)


def train_surrogate(target: Target, pool: np.ndarray, *, train_queries: int, augment_rounds: int,
                    augment_step: float, epochs: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """A white-box TorchTarget imitating ``target``, and what its training cost and achieved."""
    import torch

    from bastion.core.targets.torch_target import TorchTarget
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam

    t0 = time.perf_counter()
    spec = target.input_spec
    rng = np.random.default_rng(seed)
    shape = tuple(spec.shape)
    label_only = target.label_only
    x = pool if len(pool) <= train_queries else pool[rng.choice(len(pool), train_queries, replace=False)]
    x = np.asarray(x, np.float32)
    spent = 0

    def ask(z: np.ndarray) -> np.ndarray:
        nonlocal spent
        p = np.concatenate([target.predict_proba(z[s:s + 256]) for s in range(0, len(z), 256)])
        spent += len(z)
        return np.eye(target.n_classes)[p.argmax(1)] if label_only else p

    soft = ask(x)
    mean, std = input_statistics(x, spec)
    procedure = TorchTrainingProcedure(model=lambda: surrogate_module(shape, target.n_classes, mean, std),
                                       optimizer=adam(2e-3), epochs=epochs, batch_size=128)
    module = None
    for r in range(augment_rounds):
        module = procedure.fit(TrainRequest(x, soft, seed=seed + r), module, epochs=max(epochs // 2, 1))
        room = train_queries - spent
        if room <= 0:
            break
        base = x[rng.choice(len(x), min(room, len(x)), replace=False)]
        with torch.no_grad():
            labels = module(torch.from_numpy(base)).argmax(1).numpy()
        sign = (-1.0) ** (r + 1)  # Papernot's periodic step size: alternate the direction
        new = jacobian_augment(module, base, labels, sign * augment_step, spec)
        soft = np.concatenate([soft, ask(new)])
        x = np.concatenate([x, new])
    module = procedure.fit(TrainRequest(x, soft, seed=seed + augment_rounds), module)
    surrogate = TorchTarget(module, spec, classes=target.classes, name="surrogate (trained on target queries)")
    with surrogate.uncounted():
        agree = float((surrogate.predict_proba(x).argmax(1) == soft.argmax(1)).mean())
    info = {"source": "trained", "train_queries": int(spent), "train_size": int(len(x)), "label_only": label_only,
            "train_agreement": agree, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("surrogate trained on %d target queries (agreement %.3f on its training set)", spent, agree)
    return surrogate, info
