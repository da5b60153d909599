"""Learning-based extraction: train a copy of the model on its answers to queries.

- Knockoff Nets (Orekondy, Schiele & Fritz 2019, "Knockoff Nets: Stealing Functionality of
  Black-Box Models", arXiv:1812.02766): query natural inputs of the attacker's query set, drawn at
  random (``strategy: random``) or by the paper's adaptive gradient-bandit policy over groups of
  that data (``strategy: adaptive``, :mod:`bastion.attacks.extraction.adaptive`), and train on the
  model's full probability vectors (soft labels).
- Copycat CNN (Correia-Silva et al. 2018, "Copycat CNN: Stealing Knowledge by Persuading Confession
  with Random Non-Labeled Data", arXiv:1806.05476): the same with the model's top-1 labels only
  (what a label-only API gives).
- Jacobian-based augmentation (Papernot et al. 2017, "Practical Black-Box Attacks against Machine
  Learning", arXiv:1602.02697): start from a small seed set and, each round, add synthetic inputs
  ``x + λ·sign(∂F_label(x)/∂x)`` found with the current copy, labelled by the model.

The query set is the pool (in-distribution data), or the ``query_set`` of
:meth:`ModelExtraction.run` (out-of-distribution natural data). Every round trains a fresh copy, from
the same seed, on all answers so far with bastion's :class:`TorchTrainingProcedure`, so each point
of the fidelity curve is what an attacker with that many queries gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import ConfigDict, Field

from bastion.attacks.extraction.adaptive import AdaptiveSampler, OnlineLearner, Reward, kmeans
from bastion.attacks.extraction.base import ExtractionParams, ModelExtraction
from bastion.core.repeated import query_cost
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import DataError, TargetError, UsageError

Labels = Literal["scores", "top1"]
Draw = Callable[[int, Callable[[np.ndarray], np.ndarray]], tuple[np.ndarray, np.ndarray]]
"""Sends ``n`` more queries through ``ask`` (inputs -> answers): their indices in the pool, the answers."""


class LearnedParams(ExtractionParams):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    queries: int | None = Field(None, gt=0, description="queries to spend (default: the query budget, or every "
                                                         "input of the query set)")
    rounds: int = Field(4, ge=1, le=100, description="copies trained along the way, at equal shares of the "
                                                      "queries (the points of the fidelity curve)")
    labels: Labels = Field("scores", description="train on the model's probabilities (scores) or its top-1 label")
    epochs: int = Field(40, ge=1, le=10_000, description="training epochs of each copy")
    batch_size: int = Field(64, ge=1, le=65_536, description="training batch size")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate")
    architecture: Any = Field(None, description="the copy's untrained torch module: a callable or 'module:factory' "
                                                "(default: a small CNN for images, an MLP otherwise)")


class LearnedExtraction(ModelExtraction):
    """Base of the learning-based attacks: query, label, train a copy, per round."""

    Params: ClassVar[type[LearnedParams]] = LearnedParams

    def _budget(self, target: Target, threat: ThreatModel, available: int | None) -> int:
        """Inputs to ask about: the least of the parameter's queries and the budget left (each over
        the queries one input costs, :func:`~bastion.core.repeated.query_cost`) and the inputs available."""
        given = None if self.params.queries is None else self.params.queries // query_cost(target)
        caps = [c for c in (given, self.room(target, threat), available) if c is not None]
        if not caps:
            raise UsageError(f"{self.label}: give a number of queries or a query budget")
        total = min(caps)
        if total < self.params.rounds:
            raise UsageError(f"{self.label}: {total} queries cannot be split into {self.params.rounds} rounds",
                             hint="raise the query budget or lower rounds")
        return total

    def _check_labels(self, target: Target) -> None:
        if self.params.labels == "scores" and target.label_only:
            raise TargetError(f"{self.label} with labels=scores trains on the model's probabilities, but "
                              f"'{target.name}' answers labels only",
                              hint="set labels: top1 (what Copycat CNN does) or use the copycat attack")

    def _ask(self, target: Target, x: np.ndarray) -> np.ndarray:
        """The model's answers as training targets: probability rows, or one-hot top-1 labels."""
        p = target.predict_proba(x)
        if self.params.labels == "top1" or target.label_only:
            return np.eye(target.n_classes, dtype=np.float32)[p.argmax(1)]
        return p.astype(np.float32)

    def _trainer(self, target: Target, x: np.ndarray) -> Callable[[np.ndarray, np.ndarray, int], Any]:
        """A function training a fresh copy on (inputs, answers) from a seed and returning its module."""
        from bastion.core.training import TrainRequest

        procedure = self._procedure(target, x)

        def train(xs: np.ndarray, ys: np.ndarray, seed: int) -> Any:
            return procedure.fit(TrainRequest(xs, ys, seed=seed))

        return train

    def _procedure(self, target: Target, x: np.ndarray) -> Any:
        """The copy's training procedure: its architecture (standardised on ``x`` by default), Adam."""
        from bastion.core.surrogate import input_statistics, surrogate_module
        from bastion.core.training import TorchTrainingProcedure, adam

        spec, k = target.input_spec, target.n_classes
        arch = self.params.architecture
        if isinstance(arch, str):
            from bastion.core.loader import import_object

            arch = import_object(arch)
        if arch is None:
            mean, std = input_statistics(np.asarray(x, np.float32), spec)
            arch = lambda: surrogate_module(tuple(spec.shape), k, mean, std)  # noqa: E731
        elif not callable(arch):
            raise UsageError(f"{self.label}: architecture must be a callable or 'module:factory', "
                             f"got {type(arch).__name__}")
        return TorchTrainingProcedure(model=arch, optimizer=adam(self.params.lr), epochs=self.params.epochs,
                                      batch_size=self.params.batch_size)

    def _copy(self, module: Any, target: Target, queries: int) -> Target:
        from bastion.core.targets.torch_target import TorchTarget

        return TorchTarget(module, target.input_spec, classes=target.classes, copy=False,
                           name=f"surrogate ({self.label}, {queries} queries)")

    @staticmethod
    def _seed(ctx: RunContext, *names: str) -> int:
        return ctx.key(*names) % 2**63


class KnockoffParams(LearnedParams):
    strategy: Literal["random", "adaptive"] = Field(
        "random", description="how queries are drawn from the query set: at random, or by Knockoff Nets' adaptive "
                              "gradient-bandit policy over groups of it")
    clusters: int = Field(10, ge=2, le=10_000, description="adaptive: groups of the query set (k-means) when it "
                                                           "has no labels of its own")
    reward: Reward = Field("all", description="adaptive: the policy's reward (certainty, diversity, loss, or all "
                                              "three standardised and averaged)")
    window: int = Field(100, ge=1, description="adaptive: answers the diversity reward compares with")
    step: int = Field(8, ge=1, le=65_536, description="adaptive: queries per request and online training step")
    alpha: float = Field(0.1, gt=0, le=10, description="adaptive: the policy's step size")


class Knockoff(LearnedExtraction):
    """Knockoff Nets: natural inputs, at random or chosen adaptively, trained on the model's scores."""

    name = "knockoff"
    Params = KnockoffParams
    uses_groups = True

    def _extract(self, target: Target, pool: np.ndarray, threat: ThreatModel, ctx: RunContext,
                 groups: np.ndarray | None = None) -> Iterator[Target]:
        from bastion.core.training import TrainRequest

        p: KnockoffParams = self.params  # type: ignore[assignment]
        self._check_labels(target)
        total = self._budget(target, threat, len(pool))
        procedure = self._procedure(target, pool)
        draw = self._random(pool, total, ctx) if p.strategy == "random" else self._adaptive(pool, groups, procedure, ctx)
        cuts = np.linspace(0, total, p.rounds + 1).round().astype(int)
        picked: list[np.ndarray] = []
        answers: list[np.ndarray] = []
        for r, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            idx, y = draw(int(b - a), lambda x: self._ask(target, x))
            picked.append(idx)
            answers.append(y)
            module = procedure.fit(TrainRequest(pool[np.concatenate(picked)], np.concatenate(answers),
                                                seed=self._seed(ctx, "train", str(r))))
            yield self._copy(module, target, int(b))

    @staticmethod
    def _random(pool: np.ndarray, total: int, ctx: RunContext) -> Draw:
        order, sent = ctx.rng("order").permutation(len(pool))[:total], 0

        def draw(n: int, ask: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            nonlocal sent
            idx, sent = order[sent:sent + n], sent + n
            return idx, ask(pool[idx])

        return draw

    def _adaptive(self, pool: np.ndarray, groups: np.ndarray | None, procedure: Any, ctx: RunContext) -> Draw:
        p: KnockoffParams = self.params  # type: ignore[assignment]
        if groups is None:
            groups = kmeans(pool, p.clusters, self._seed(ctx, "clusters") % 2**31)
        learner = OnlineLearner(procedure, self._seed(ctx, "online"))
        return AdaptiveSampler(pool, groups, p.reward, p.window, p.step, p.alpha, learner, ctx.rng("adaptive")).draw


class CopycatParams(KnockoffParams):
    labels: Labels = Field("top1", description="train on the model's top-1 label (Copycat) or its probabilities")


class Copycat(Knockoff):
    """Copycat CNN: natural (non-problem-domain) inputs labelled with the model's top-1 answer."""

    name = "copycat"
    Params = CopycatParams


class JacobianParams(LearnedParams):
    labels: Labels = Field("top1", description="train on the model's top-1 label (as Papernot et al.) or its "
                                               "probabilities")
    seed_size: int = Field(100, ge=1, description="inputs of the initial seed set, drawn from the query set")
    step: float = Field(0.1, gt=0, description="augmentation step λ, in each feature's scale")


class JacobianAugmentation(LearnedExtraction):
    """Papernot et al.'s substitute training: a small seed set grown by Jacobian-based augmentation."""

    name = "jacobian"
    Params = JacobianParams

    def _extract(self, target: Target, pool: np.ndarray, threat: ThreatModel, ctx: RunContext) -> Iterator[Target]:
        from bastion.core.surrogate import jacobian_augment

        p: JacobianParams = self.params  # type: ignore[assignment]
        self._check_labels(target)
        total = self._budget(target, threat, None)
        n_seed = min(p.seed_size, len(pool), total)
        if n_seed < 1:
            raise DataError(f"{self.label}: the query set is empty")
        rng = ctx.rng("seed-set")
        xs = pool[rng.choice(len(pool), n_seed, replace=False)].astype(np.float32)
        ys = self._ask(target, xs)
        train = self._trainer(target, xs)
        for r in range(p.rounds):
            module = train(xs, ys, self._seed(ctx, "train", str(r)))
            yield self._copy(module, target, len(xs))
            room = total - len(xs)
            if r == p.rounds - 1 or room <= 0:
                return
            pick = np.arange(len(xs)) if len(xs) <= room else rng.choice(len(xs), room, replace=False)
            base, labels = xs[pick], ys[pick].argmax(1)
            sign = -1.0 if (r + 1) % 3 == 0 else 1.0  # Papernot's periodic step size (τ = 3)
            new = jacobian_augment(module, base, labels, sign * p.step, target.input_spec)
            xs, ys = np.concatenate([xs, new]), np.concatenate([ys, self._ask(target, new)])
