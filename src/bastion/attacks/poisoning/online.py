"""Online-learning poisoning: a model updated in rounds from incoming batches, a fraction of each
batch poisoned (the feedback loop of a deployed model retrained on what users send; Biggio et al.
2012, arXiv:1206.6389, and Wang & Chaudhuri 2018, "Data poisoning attacks against online
learning", arXiv:1808.08994, study this setting).

The stream is cut into batches of ``batch_size`` records; two copies of the learner start from the
same seed, one updated with the clean batches, the other with the poisoned ones (each batch
poisoned at ``fraction`` by the attack, with one trigger for the whole stream), and after every
round both are measured on the clean test records (clean accuracy, accuracy on the targeted class,
attack success: :func:`bastion.attacks.poisoning.simulate.measure`).

A learner that updates: a scikit-learn estimator with ``partial_fit`` (``SGDClassifier``,
``MLPClassifier``, ``Perceptron``, ``GaussianNB``...), bare or in an ``EstimatorTrainer`` (the
policy's ``sklearn:`` trainer), or a ``TorchTrainingProcedure`` (each round continues training
its module for ``epochs`` epochs on the batch).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from bastion.attacks.poisoning.base import PoisoningAttack
from bastion.attacks.poisoning.simulate import Outcome, measure
from bastion.core.data import Dataset
from bastion.core.results import CheckResult
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.core.training import EstimatorTrainer, TorchTrainingProcedure, TrainRequest
from bastion.errors import UsageError


class RoundOutcome(BaseModel):
    """One round: records poisoned in its batch, the clean learner and the poisoned learner after it."""

    round: int
    poisoned: int
    clean: Outcome
    attacked: Outcome


class OnlineSimulation(BaseModel):
    attack: str
    fraction: float
    batch_size: int
    rounds: list[RoundOutcome]
    seconds: float

    def record(self, check: CheckResult) -> None:
        """Per round (``where: attack, round``): ``online_clean_accuracy``, ``online_attack_success``
        (and ``online_source_accuracy``) of the poisoned learner, the clean learner's beside them
        as ``online_reference_*``."""
        for r in self.rounds:
            for prefix, o in (("online_", r.attacked), ("online_reference_", r.clean)):
                check.measure(f"{prefix}clean_accuracy", o.clean_accuracy, "ratio", attack=self.attack, round=r.round)
                if o.source_accuracy is not None:
                    check.measure(f"{prefix}source_accuracy", o.source_accuracy, "ratio", attack=self.attack,
                                  round=r.round)
                if o.attack_success is not None:
                    check.measure(f"{prefix}attack_success", o.attack_success, "ratio", attack=self.attack,
                                  round=r.round)


class _Learner:
    """One incremental learner: ``update(x, y)`` then ``predict(x)`` (class indices)."""

    def __init__(self, learner: Any, classes: list[Any], spec: InputSpec, seed: int, epochs: int) -> None:
        est = learner.estimator if isinstance(learner, EstimatorTrainer) else learner
        self.torch = isinstance(learner, TorchTrainingProcedure)
        if not self.torch and not callable(getattr(est, "partial_fit", None)):
            raise UsageError(f"online poisoning needs a learner that updates in rounds; {type(est).__name__} has no "
                             "partial_fit", hint="use e.g. sklearn SGDClassifier or MLPClassifier, or a "
                                                 "TorchTrainingProcedure")
        self.learner, self.classes, self.spec, self.seed, self.epochs = learner, classes, spec, seed, epochs
        self.model: Any = None
        if not self.torch:
            from sklearn.base import clone

            self.model = clone(est)
            if "random_state" in self.model.get_params():
                self.model.set_params(random_state=seed)

    def update(self, x: np.ndarray, y: np.ndarray, step: int) -> None:
        if self.torch:
            request = TrainRequest(x, y, seed=self.seed + step, input_spec=self.spec, classes=self.classes)
            self.model = self.learner.fit(request, module=self.model, epochs=self.epochs)
        else:
            self.model.partial_fit(x.reshape(len(x), -1), y, classes=np.arange(len(self.classes)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.torch:
            return np.asarray(self.model.predict(x.reshape(len(x), -1)))
        import torch

        with torch.no_grad():
            return self.model(torch.as_tensor(np.asarray(x, np.float32))).argmax(1).cpu().numpy()


def simulate_online(attack: PoisoningAttack, stream: Dataset, test: Dataset, learner: Any, *, fraction: float,
                    batch_size: int, spec: InputSpec | None = None, classes: list[Any] | None = None,
                    ctx: RunContext | None = None, epochs: int = 1) -> OnlineSimulation:
    """Feed ``stream`` (labels as class indices) to ``learner`` batch by batch, clean and poisoned
    at ``fraction``; both learners measured on ``test`` after every round."""
    if not 0 < fraction < 1:
        raise UsageError(f"online poisoning: fraction must lie in (0, 1), got {fraction}")
    if batch_size < 2 or batch_size > len(stream):
        raise UsageError(f"online poisoning: batch_size must lie in [2, {len(stream)}] (the stream), got {batch_size}")
    t0 = time.perf_counter()
    ctx = (ctx or RunContext()).spawn(f"online-{attack.label}")
    x, y = np.asarray(stream.x, np.float32), np.asarray(stream.y).astype(np.int64)
    xt, yt = np.asarray(test.x, np.float32), np.asarray(test.y).astype(np.int64)
    spec = spec or InputSpec(shape=x.shape[1:], lower=-np.inf, upper=np.inf)
    classes = list(classes) if classes is not None else list(range(int(max(y.max(), yt.max())) + 1))
    seed = int(ctx.key("learner") % 2**31)
    clean, attacked = (_Learner(learner, classes, spec, seed, epochs) for _ in range(2))
    poison_ctx = RunContext(seed=int(ctx.key("poison") % 2**63))  # one trigger for the whole stream
    rounds = []
    for r, start in enumerate(range(0, len(x) - batch_size + 1, batch_size)):
        ctx.check_cancelled()
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        res = attack.poison(Dataset(xb, yb), ThreatModel(poisoning_fraction=fraction), poison_ctx, spec=spec)
        clean.update(xb, yb, r)
        attacked.update(res.x, res.y, r)
        xtt = res.trigger.apply(xt) if res.trigger is not None else None
        rounds.append(RoundOutcome(
            round=r + 1, poisoned=len(res.poison_indices),
            clean=measure(attack, clean.predict(xt), clean.predict(xtt) if xtt is not None else None, yt, res.trigger),
            attacked=measure(attack, attacked.predict(xt), attacked.predict(xtt) if xtt is not None else None, yt,
                             res.trigger)))
        ctx.advance(1)
    return OnlineSimulation(attack=attack.label, fraction=fraction, batch_size=batch_size, rounds=rounds,
                            seconds=time.perf_counter() - t0)
