"""The Defense contract.

A :class:`TargetDefense` wraps a target into a :class:`DefendedTarget` — again a Target, so every
attack runs on it unchanged — through an input transformation (``preprocess``) and an output
transformation (``postprocess``). It declares its adaptive path (:class:`AdaptivePath`): how a
white-box attack gets useful gradients through it. Following Athalye, Carlini & Wagner (2018,
"Obfuscated Gradients Give a False Sense of Security", arXiv:1802.00420), a non-differentiable
step is crossed by BPDA (the forward pass is the real step; the backward pass is the identity, or
the gradient of a differentiable approximation), and a randomised step by EOT (the expectation
over ``eot_samples`` draws; Athalye et al., 2018, "Synthesizing Robust Adversarial Examples",
arXiv:1707.07397). White-box attacks take gradients from ``target.adaptive_view()``; predictions
still come from the real defended model. A defense is never credited on a non-adaptive attack.

The base enforces once for every defense: a step written only in numpy (no torch twin) must
declare BPDA, a randomised defense must declare EOT, a transformed input keeps the target's
shape and bounds, and a transformed output is a probability row.

A :class:`TrainingDefense` changes a ``TorchTrainingProcedure`` through its hooks (a batch hook
for adversarial training or augmentation, a step hook for DP-SGD).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from bastion.core.capability import Configurable
from bastion.core.registry import Registry
from bastion.core.targets.base import DifferentiableTarget, Target, check_probabilities
from bastion.errors import BastionRuntimeError, DataError, UsageError

if TYPE_CHECKING:
    import torch

    from bastion.core.training import TorchTrainingProcedure, TrainStep

Bpda = Literal["exact", "identity", "approximation"]


@dataclass(frozen=True)
class AdaptivePath:
    """How gradients cross a defense. ``bpda``: ``exact`` (the torch step is differentiable and its
    gradient is used), ``identity`` (straight-through: the backward pass treats the step as
    ``x -> x``) or ``approximation`` (the gradient of ``TargetDefense.approximation``).
    ``eot_samples``: draws averaged per gradient for a randomised defense (1: deterministic)."""

    bpda: Bpda = "exact"
    eot_samples: int = 1

    def __post_init__(self) -> None:
        if self.bpda not in ("exact", "identity", "approximation"):
            raise UsageError(f"bpda must be 'exact', 'identity' or 'approximation', got {self.bpda!r}")
        if int(self.eot_samples) < 1:
            raise UsageError(f"eot_samples must be >= 1, got {self.eot_samples}")


class TargetDefense(Configurable, ABC):
    """Base of defenses that wrap a target. Override ``preprocess`` (numpy, required for any input
    transformation), optionally ``preprocess_torch`` (a differentiable twin), ``approximation``
    (for ``bpda='approximation'``) and ``postprocess`` (output hardening); declare ``adaptive``.
    ``randomized`` defenses draw from the ``rng`` they are given, never from a global generator."""

    family: ClassVar[str] = "defense"
    randomized: ClassVar[bool] = False

    def adaptive(self) -> AdaptivePath:
        """The adaptive path white-box attacks take through this defense."""
        return AdaptivePath()

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The defended model sees ``preprocess(x)`` (float32, same shape, inside the bounds)."""
        return x

    def preprocess_torch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Torch twin of ``preprocess``; by default ``preprocess`` itself, run in numpy, which no
        gradient crosses (declare BPDA)."""
        raise NotImplementedError

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable function close to ``preprocess`` (BPDA's backward pass)."""
        raise NotImplementedError

    def postprocess(self, probs: np.ndarray) -> np.ndarray:
        """Output hardening applied to the probability rows (identity by default)."""
        return probs

    # --- what the base derives and enforces ------------------------------------------------------
    def has_torch_step(self) -> bool:
        return type(self).preprocess_torch is not TargetDefense.preprocess_torch

    def check_declaration(self) -> AdaptivePath:
        """The declared adaptive path, refused when it cannot give honest gradients."""
        path = self.adaptive()
        transforms = type(self).preprocess is not TargetDefense.preprocess
        if transforms and not self.has_torch_step() and path.bpda == "exact":
            raise UsageError(f"defense '{self.label}' has no differentiable torch step, so gradients cannot cross it",
                             hint="declare adaptive() -> AdaptivePath(bpda='identity') or 'approximation', "
                                  "or implement preprocess_torch")
        if path.bpda == "approximation" and type(self).approximation is TargetDefense.approximation:
            raise UsageError(f"defense '{self.label}' declares bpda='approximation' but defines no approximation()")
        if self.randomized and path.eot_samples < 2:
            raise UsageError(f"defense '{self.label}' is randomised; an attack needs an expectation over its "
                             f"randomness", hint="declare adaptive() -> AdaptivePath(eot_samples=...) with 2 or more")
        if type(self).postprocess is not TargetDefense.postprocess and path.bpda == "exact":
            raise UsageError(f"defense '{self.label}' post-processes outputs in numpy; declare BPDA for it",
                             hint="declare adaptive() -> AdaptivePath(bpda='identity')")
        return path

    def wrap(self, target: Target, *, seed: int = 0, name: str = "") -> DefendedTarget:
        """The defended model, a Target (white-box when ``target`` is)."""
        cls = DifferentiableDefendedTarget if isinstance(target, DifferentiableTarget) else DefendedTarget
        return cls(target, self, seed=seed, name=name)


class DefendedTarget(Target):
    """A target behind a :class:`TargetDefense`. It counts its own queries and leaves the wrapped
    target's counter, budget and model untouched. Its randomness is its own seeded generator."""

    kind = "defended"

    def __init__(self, inner: Target, defense: TargetDefense, *, seed: int = 0, name: str = "") -> None:
        self.path = defense.check_declaration()
        super().__init__(inner.classes, inner.input_spec, name=name or f"{defense.label}({inner.name})")
        self.inner, self.defense = inner, defense
        self.label_only = getattr(inner, "label_only", False)  # what the wrapped model offers, it still offers
        self.remote = getattr(inner, "remote", False)
        self.rng = np.random.default_rng(seed)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``defense.preprocess(x)``, checked to keep the target's shape and bounds."""
        out = self.defense.preprocess(x, self.rng)
        try:
            return self.input_spec.validate(np.asarray(out), what=f"the output of defense '{self.defense.label}'")
        except DataError as exc:  # the defense's fault, not the user's
            raise BastionRuntimeError(exc.message) from exc

    def harden(self, probs: np.ndarray) -> np.ndarray:
        out = np.asarray(self.defense.postprocess(probs), np.float64)
        return check_probabilities(out, len(probs), self.n_classes, source=f"defense '{self.defense.label}'")

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        with self.inner.uncounted():  # counted once, on this target
            return self.harden(self.inner.predict_proba(self.transform(x)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "defense": self.defense.label, "inner": self.inner.describe(),
                "adaptive": {"bpda": self.path.bpda, "eot_samples": self.path.eot_samples}}


class DifferentiableDefendedTarget(DefendedTarget, DifferentiableTarget):
    """A defended white-box target. ``logits`` are the defended model's own (a step written in
    numpy passes no gradient, as in the deployed model); ``adaptive_view()`` is what attacks use."""

    def __init__(self, inner: DifferentiableTarget, defense: TargetDefense, **kwargs: Any) -> None:
        super().__init__(inner, defense, **kwargs)
        self.device = inner.device

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.count_queries(int(x.shape[0]))
        return self.defended_logits(x, bpda="exact")

    def defended_logits(self, x: torch.Tensor, *, bpda: Bpda) -> torch.Tensor:
        """Log-probabilities of the defended model, uncounted; the backward pass per ``bpda``."""
        import torch

        z = self._step(x, bpda)
        assert isinstance(self.inner, DifferentiableTarget)
        out = self.inner._raw_logits(z)
        if type(self.defense).postprocess is TargetDefense.postprocess:
            return out
        p = torch.softmax(out, dim=1)
        hard = torch.as_tensor(self.harden(p.detach().double().cpu().numpy()), dtype=p.dtype, device=p.device)
        p = p + (hard - p).detach() if bpda != "exact" else hard + 0 * p  # straight-through, or no gradient
        return torch.log(p.clamp_min(1e-12))

    def _step(self, x: torch.Tensor, bpda: Bpda) -> torch.Tensor:
        import torch

        if self.defense.has_torch_step() and bpda == "exact":
            return self.defense.preprocess_torch(x, self.rng)
        real = torch.as_tensor(self.transform(x.detach().cpu().numpy()), device=x.device, dtype=x.dtype)
        if bpda == "identity":
            return x + (real - x).detach()
        if bpda == "approximation":
            g = self.defense.approximation(x)
            return g + (real - g).detach()
        return real + 0 * x  # the real step: no gradient crosses it

    def adaptive_view(self) -> Target:
        return AdaptiveView(self)


class AdaptiveView(DifferentiableTarget):
    """The defended model as a white-box attack should see it: predictions and queries are the
    defended target's; ``logits`` follow the declared BPDA, averaged over EOT draws (the log of the
    mean probability), each draw counted as a query."""

    kind = "adaptive-view"

    def __init__(self, defended: DifferentiableDefendedTarget) -> None:
        super().__init__(defended.classes, defended.input_spec, name=f"adaptive({defended.name})")
        self.defended, self.device = defended, defended.device

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.defended.predict_proba(x)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - predict_proba delegates
        return self.defended._predict_proba(x)

    def count_queries(self, n: int) -> None:
        self.defended.count_queries(n)

    @property
    def queries(self) -> int:  # type: ignore[override]
        return self.defended.queries

    @queries.setter
    def queries(self, value: int) -> None:  # Target.__init__ sets it; the defended target owns it
        pass

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        with self.defended.uncounted():
            yield

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        path = self.defended.path
        n, k = int(x.shape[0]), path.eot_samples
        self.count_queries(n * k)
        if k == 1:
            return self.defended.defended_logits(x, bpda=path.bpda)
        rep = x.repeat(k, *([1] * (x.dim() - 1)))  # k draws of every input
        logp = torch.log_softmax(self.defended.defended_logits(rep, bpda=path.bpda), dim=1).view(k, n, -1)
        return torch.logsumexp(logp, dim=0) - float(np.log(k))

    def adaptive_view(self) -> Target:
        return self


class TrainingDefense(Configurable, ABC):
    """Base of defenses that change how a model is trained (adversarial training, noise
    augmentation, DP-SGD, ...). Override ``batch_hook`` (replace each batch before the forward
    pass), ``step_hook`` (between backward and the optimiser step: rewrite ``module``'s gradients)
    or both; ``apply`` returns a new :class:`~bastion.core.training.TorchTrainingProcedure` with
    them (the given procedure is not changed). The base checks that a replaced batch keeps the
    per-sample shape and pairs every input with a label."""

    family: ClassVar[str] = "defense"

    def batch_hook(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch to train on instead of ``(step.x, step.y)``."""
        raise NotImplementedError

    def step_hook(self, step: TrainStep) -> None:
        """Change the gradients of ``step.module`` (``step.losses``: the per-sample losses)."""
        raise NotImplementedError

    def apply(self, procedure: Any) -> TorchTrainingProcedure:
        from bastion.core.training import TorchTrainingProcedure

        if not isinstance(procedure, TorchTrainingProcedure):
            raise UsageError(f"training defense '{self.label}' changes a TorchTrainingProcedure; the trainer is a "
                             f"{type(procedure).__name__}",
                             hint="train with bastion.core.training.TorchTrainingProcedure to use training defenses")
        batch = type(self).batch_hook is not TrainingDefense.batch_hook
        step = type(self).step_hook is not TrainingDefense.step_hook
        if not (batch or step):
            raise UsageError(f"training defense '{self.label}' defines neither batch_hook nor step_hook")
        return procedure.with_hooks(batch=[self._checked_batch] if batch else [],
                                    step=[self.step_hook] if step else [])

    def _checked_batch(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch_hook(step)
        if tuple(x.shape[1:]) != tuple(step.x.shape[1:]) or len(x) != len(y) or len(x) == 0:
            raise BastionRuntimeError(f"training defense '{self.label}' returned a batch of {tuple(x.shape)} inputs "
                                      f"and {len(y)} labels for inputs of shape {tuple(step.x.shape[1:])}")
        return x, y


DEFENSES: Registry[type[TargetDefense] | type[TrainingDefense]] = Registry("defense", {})
"""Defenses by name: bastion's own (added by the defenses issue) and those of the
``bastion.defenses`` entry points."""
