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
for adversarial training or augmentation, a setup hook for DP-SGD).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from bastion.core.capability import Configurable
from bastion.core.registry import Registry
from bastion.core.spec import InputSpec
from bastion.core.targets.base import DifferentiableTarget, Target, check_probabilities
from bastion.errors import BastionRuntimeError, DataError, UsageError

if TYPE_CHECKING:
    import torch

    from bastion.core.training import EpochEnd, TorchTrainingProcedure, TrainSetup, TrainStep

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
    label_only: ClassVar[bool] = False  # the defended model answers labels only (one-hot rows)

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

    def postprocess(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Output hardening applied to the probability rows (identity by default)."""
        return probs

    def hardens_output(self) -> bool:
        return type(self).postprocess is not TargetDefense.postprocess

    def check_input(self, spec: InputSpec) -> None:
        """Refuse (UsageError) a target whose inputs this defense cannot transform (range, layout)."""

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
        if self.hardens_output() and path.bpda == "exact":
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
        defense.check_input(inner.input_spec)
        super().__init__(inner.classes, inner.input_spec, name=name or f"{defense.label}({inner.name})")
        self.inner, self.defense = inner, defense
        # what the wrapped model offers, it still offers; a label-only defense takes the scores away
        self.label_only = defense.label_only or getattr(inner, "label_only", False)
        self.remote = getattr(inner, "remote", False)
        self.rng = np.random.default_rng(seed)
        self.randomized = True if defense.randomized else inner.randomized

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``defense.preprocess(x)``, checked to keep the target's shape and bounds."""
        out = self.defense.preprocess(x, self.rng)
        try:
            return self.input_spec.validate(np.asarray(out), what=f"the output of defense '{self.defense.label}'")
        except DataError as exc:  # the defense's fault, not the user's
            raise BastionRuntimeError(exc.message) from exc

    def harden(self, probs: np.ndarray) -> np.ndarray:
        out = np.asarray(self.defense.postprocess(probs, self.rng), np.float64)
        return check_probabilities(out, len(probs), self.n_classes, source=f"defense '{self.defense.label}'")

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        with self.inner.uncounted():  # counted once, on this target
            return self.harden(self.inner.predict_proba(self.transform(x)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "defense": self.defense.label, "inner": self.inner.describe(),
                "adaptive": {"bpda": self.path.bpda, "eot_samples": self.path.eot_samples}}


def harden_like(target: Target, logp: np.ndarray, rng: np.random.Generator, *, draws: int = 1) -> np.ndarray:
    """Log-probabilities ``logp`` (..., n_classes) of an attacker's own models passed through every
    output-hardening defense on ``target``, innermost first, as an attacker who knows the deployed
    defense hardens its shadow models' answers to compare like with like (Kerckhoffs: the defense
    is public); with ``draws`` > 1 the mean of that many hardenings, as the attacker who averages
    ``draws`` answers per query sees the target (:mod:`bastion.core.repeated`). Input
    transformations are not replayed. Unchanged when ``target`` hardens nothing."""
    layers = []
    while isinstance(target, DefendedTarget):
        if target.defense.hardens_output():
            layers.append(target.defense)
        target = target.inner
    if not layers:
        return logp
    probs = np.exp(np.asarray(logp, np.float64)).reshape(-1, logp.shape[-1])
    probs /= probs.sum(1, keepdims=True)
    mean = np.zeros_like(probs)
    for _ in range(max(1, int(draws))):
        out = probs
        for defense in reversed(layers):
            out = np.asarray(defense.postprocess(out, rng), np.float64)
        mean += out
    mean /= max(1, int(draws))
    return np.log(np.clip(mean, np.finfo(np.float64).tiny, None)).reshape(logp.shape)


class DifferentiableDefendedTarget(DefendedTarget, DifferentiableTarget):
    """A defended white-box target. ``logits`` are the defended model's own (a step written in
    numpy passes no gradient, as in the deployed model); ``adaptive_view()`` is what attacks use."""

    def __init__(self, inner: DifferentiableTarget, defense: TargetDefense, **kwargs: Any) -> None:
        super().__init__(inner, defense, **kwargs)
        self.device = inner.device

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.count_queries(int(x.shape[0]))
        return self.defended_logits(x, bpda="exact")

    def defended_logits(self, x: torch.Tensor, *, bpda: Bpda, adaptive: bool = False) -> torch.Tensor:
        """Log-probabilities of the defended model, uncounted; the backward pass per ``bpda``, and
        (``adaptive``) through the wrapped model's own adaptive view (e.g. its declared BPDA)."""
        import torch

        z = self._step(x, bpda)
        assert isinstance(self.inner, DifferentiableTarget)
        inner = self.inner.adaptive_view() if adaptive else self.inner
        assert isinstance(inner, DifferentiableTarget)
        out = inner._raw_logits(z)
        if not self.defense.hardens_output():
            return out
        p = torch.softmax(out, dim=1)
        hard = torch.as_tensor(self.harden(p.detach().double().cpu().numpy()), dtype=p.dtype, device=p.device)
        p = p + (hard - p).detach() if bpda != "exact" else hard + 0 * p  # straight-through, or no gradient
        return torch.log(p.clamp_min(1e-12))

    def _step(self, x: torch.Tensor, bpda: Bpda) -> torch.Tensor:
        import torch

        if type(self.defense).preprocess is TargetDefense.preprocess:  # no input transformation
            return x
        if self.defense.has_torch_step() and bpda == "exact":
            return self.defense.preprocess_torch(x, self.rng)
        real = torch.as_tensor(self.transform(x.detach().cpu().numpy()), device=x.device, dtype=x.dtype)
        if bpda == "identity":
            return straight_through(real, x)
        if bpda == "approximation":
            return straight_through(real, self.defense.approximation(x))
        return real + 0 * x  # the real step: no gradient crosses it

    def adaptive_view(self) -> Target:
        return AdaptiveView(self)


class TargetView(DifferentiableTarget):
    """What a white-box attack takes gradients through, for a target ``base``: predictions, the
    query counter, the budget and uncounted blocks are the base target's; only ``logits`` differ."""

    kind = "view"

    def __init__(self, base: Target, *, name: str, device: str) -> None:
        super().__init__(base.classes, base.input_spec, name=name)
        self.base, self.device = base, device

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.base.predict_proba(x)

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        return self.base.predict_log_proba(x)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - predict_proba delegates
        return self.base._predict_proba(x)

    def count_queries(self, n: int) -> None:
        self.base.count_queries(n)

    @property
    def queries(self) -> int:  # type: ignore[override]
        return self.base.queries

    @queries.setter
    def queries(self, value: int) -> None:  # Target.__init__ sets it; the base target owns it
        pass

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        with self.base.uncounted():
            yield

    def adaptive_view(self) -> Target:
        return self


def straight_through(real: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """BPDA's rule: the value of ``real``, the gradient of ``surrogate`` (Athalye et al. 2018)."""
    return surrogate + (real - surrogate).detach()


def expected_logits(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """EOT (Athalye et al. 2018, arXiv:1707.07397): the log of the mean probability over ``k`` draws
    of a randomised model, computed on one batch of ``k`` copies of ``x``; its gradient is the
    gradient of the expected prediction."""
    import torch

    n = int(x.shape[0])
    rep = x.repeat(k, *([1] * (x.dim() - 1)))
    logp = torch.log_softmax(logits(rep), dim=1).view(k, n, -1)
    return torch.logsumexp(logp, dim=0) - float(np.log(k))


class AdaptiveView(TargetView):
    """The defended model as a white-box attack should see it: predictions and queries are the
    defended target's; ``logits`` follow the declared BPDA, averaged over EOT draws (the log of the
    mean probability), each draw counted as a query."""

    kind = "adaptive-view"

    def __init__(self, defended: DifferentiableDefendedTarget) -> None:
        super().__init__(defended, name=f"adaptive({defended.name})", device=defended.device)
        self.defended = defended

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        path = self.defended.path
        n, k = int(x.shape[0]), path.eot_samples
        self.count_queries(n * k)
        if k == 1:
            return self.defended.defended_logits(x, bpda=path.bpda, adaptive=True)
        return expected_logits(lambda r: self.defended.defended_logits(r, bpda=path.bpda, adaptive=True), x, k)

    @property
    def draws_per_call(self) -> int:
        """Draws of the defense's randomness averaged in one call (its declared EOT)."""
        return self.defended.path.eot_samples


class NonAdaptiveView(TargetView):
    """A defended model attacked without adaptation: gradients are the deployed model's own (none
    through a numpy step, one draw of its randomness), as a naive evaluation would take them. Only
    for measuring what adaptation changes (the ``defense-eval`` check); never credit a defense with it."""

    kind = "non-adaptive-view"

    def __init__(self, defended: DifferentiableDefendedTarget) -> None:
        super().__init__(defended, name=f"non-adaptive({defended.name})", device=defended.device)
        self.randomized = defended.randomized
        self.label_only, self.remote = defended.label_only, defended.remote

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.base, DifferentiableTarget)
        return self.base.logits(x)


class ExpectationView(TargetView):
    """A randomised white-box target under EOT: ``logits`` are the log of the mean probability over
    ``draws`` calls of the base's logits (each draw a query), so every gradient attack optimises the
    expected prediction (Athalye et al. 2018, arXiv:1707.07397)."""

    kind = "expectation-view"

    def __init__(self, base: DifferentiableTarget, draws: int) -> None:
        if int(draws) < 1:
            raise UsageError(f"eot_iter must be >= 1, got {draws}")
        super().__init__(base, name=f"eot{draws}({base.name})", device=base.device)
        self.draws = int(draws)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.base, DifferentiableTarget)
        return expected_logits(self.base.logits, x, self.draws)


# --- BPDA declared for a model's own non-differentiable step --------------------------------------
_ACTIVE_BPDA: ContextVar[frozenset[int]] = ContextVar("bastion_bpda", default=frozenset())


@dataclass(frozen=True)
class BPDA:
    """A declared differentiable substitute for a non-differentiable step inside a torch model
    (BPDA, Athalye, Carlini & Wagner 2018, arXiv:1802.00420): white-box attacks take gradients
    through it while every prediction comes from the real model.

    - ``module`` names the submodule (dotted path, as ``module.get_submodule``) whose forward is not
      differentiable (rounding, quantisation, a numpy step): its output keeps its value, and the
      backward pass is the identity (straight-through, ``substitute`` None) or the gradient of
      ``substitute(input)``, a differentiable approximation with the same output shape;
    - without ``module``, ``substitute`` is a differentiable stand-in for the whole forward pass
      (a module or function returning logits like the model's).
    """

    module: str | None = None
    substitute: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.module is None and self.substitute is None:
            raise UsageError("BPDA needs a module (the submodule with the non-differentiable step) or a substitute "
                             "(a differentiable stand-in for the forward pass)",
                             hint="e.g. BPDA(module='quantize') for a straight-through rounding step")
        if self.substitute is not None and not callable(self.substitute):
            raise UsageError(f"BPDA substitute must be callable, got {type(self.substitute).__name__}")

    def install(self, root: Any) -> None:
        """Hook the declared submodule of ``root`` (a torch module): inert except inside a BPDA view."""
        if self.module is None:
            return
        try:
            sub = root.get_submodule(self.module)
        except AttributeError as exc:
            names = [n for n, _ in root.named_modules() if n][:20]
            raise UsageError(f"BPDA module '{self.module}' is not a submodule of the model",
                             hint=f"submodules: {', '.join(names) or '(none)'}") from exc
        sub.register_forward_hook(self._hook, with_kwargs=False)

    def _hook(self, sub: Any, args: tuple[Any, ...], out: Any) -> Any:
        if id(self) not in _ACTIVE_BPDA.get() or not args:
            return None
        inp = args[0]
        surrogate = inp if self.substitute is None else self.substitute(inp)
        if tuple(surrogate.shape) != tuple(out.shape):
            raise UsageError(f"BPDA on '{self.module}': the step maps {tuple(inp.shape)} to {tuple(out.shape)}, so "
                             f"the identity cannot stand in for it" if self.substitute is None else
                             f"BPDA on '{self.module}': the substitute returned {tuple(surrogate.shape)}, the step "
                             f"{tuple(out.shape)}", hint="declare a substitute with the step's output shape")
        return straight_through(out, surrogate.to(out.dtype))

    @contextmanager
    def active(self) -> Iterator[None]:
        token = _ACTIVE_BPDA.set(_ACTIVE_BPDA.get() | {id(self)})
        try:
            yield
        finally:
            _ACTIVE_BPDA.reset(token)

    def describe(self) -> dict[str, Any]:
        return {"module": self.module, "substitute": None if self.substitute is None else
                getattr(self.substitute, "__name__", type(self.substitute).__name__)}


class BPDAView(TargetView):
    """A torch target with a declared :class:`BPDA`, as white-box attacks see it: the real model's
    outputs, with the declared substitute's gradient."""

    kind = "bpda-view"

    def __init__(self, base: DifferentiableTarget, bpda: BPDA) -> None:
        super().__init__(base, name=f"bpda({base.name})", device=base.device)
        self.bpda = bpda

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        assert isinstance(self.base, DifferentiableTarget)
        if self.bpda.module is not None:
            with self.bpda.active():
                return self.base.logits(x)
        with torch.no_grad():
            real = self.base.logits(x)
        assert self.bpda.substitute is not None
        return straight_through(real, self.bpda.substitute(x))


class TrainingDefense(Configurable, ABC):
    """Base of defenses that change how a model is trained (adversarial training, noise
    augmentation, DP-SGD, ...). Override any of ``batch_hook`` (replace each batch before the
    forward pass), ``loss_hook`` (replace the objective: per-sample losses of the batch),
    ``step_hook`` (between backward and the optimiser step: rewrite ``module``'s gradients),
    ``epoch_hook`` (after each epoch; return True to stop training) and ``setup_hook`` (once before
    the first step: replace the module, optimiser or batch sampling); ``check`` refuses a model or
    training data the defense cannot train, before any training; ``apply`` returns a new
    :class:`~bastion.core.training.TorchTrainingProcedure` with them (the given procedure is not
    changed). The base checks that a replaced batch keeps the per-sample shape and pairs every
    input with a label, and that the objective gives one loss per sample. A defense keeps the state
    of one training run (e.g. weights saved for early stopping) in ``step.state`` / ``end.state``
    (one dict per ``fit`` call), never on ``self``."""

    family: ClassVar[str] = "defense"
    evasion: ClassVar[bool] = True  # against evasion: ``bastion harden`` attacks before and after at threat.eps

    def batch_hook(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch to train on instead of ``(step.x, step.y)``."""
        raise NotImplementedError

    def loss_hook(self, step: TrainStep) -> torch.Tensor:
        """Per-sample losses of ``(step.x, step.y)`` for ``step.module`` (with gradients)."""
        raise NotImplementedError

    def step_hook(self, step: TrainStep) -> None:
        """Change the gradients of ``step.module`` (``step.losses``: the per-sample losses)."""
        raise NotImplementedError

    def epoch_hook(self, end: EpochEnd) -> bool:
        """Called after each epoch; True stops training."""
        raise NotImplementedError

    def setup_hook(self, setup: TrainSetup) -> None:
        """Called once before the first step; may change ``setup`` (see TrainSetup)."""
        raise NotImplementedError

    def check(self, module: Any, n_samples: int, *, weighted: bool = False) -> list[str]:
        """Refuse (UsageError) a model or training data this defense cannot train, before training;
        returns notes on what it will change (none by default)."""
        return []

    def _defines(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(TrainingDefense, hook)

    def apply(self, procedure: Any) -> TorchTrainingProcedure:
        from bastion.core.training import TorchTrainingProcedure

        if not isinstance(procedure, TorchTrainingProcedure):
            raise UsageError(f"training defense '{self.label}' changes a TorchTrainingProcedure; the trainer is a "
                             f"{type(procedure).__name__}",
                             hint="train with bastion.core.training.TorchTrainingProcedure to use training defenses")
        hooks = ("batch_hook", "loss_hook", "step_hook", "epoch_hook", "setup_hook")
        if not any(self._defines(h) for h in hooks):
            raise UsageError(f"training defense '{self.label}' defines none of {', '.join(hooks)}")
        return procedure.with_hooks(batch=[self._checked_batch] if self._defines("batch_hook") else [],
                                    loss=self._checked_loss if self._defines("loss_hook") else None,
                                    step=[self.step_hook] if self._defines("step_hook") else [],
                                    epoch=[self.epoch_hook] if self._defines("epoch_hook") else [],
                                    setup=[self.setup_hook] if self._defines("setup_hook") else [])

    def _checked_batch(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch_hook(step)
        if tuple(x.shape[1:]) != tuple(step.x.shape[1:]) or len(x) != len(y) or len(x) == 0:
            raise BastionRuntimeError(f"training defense '{self.label}' returned a batch of {tuple(x.shape)} inputs "
                                      f"and {len(y)} labels for inputs of shape {tuple(step.x.shape[1:])}")
        return x, y

    def _checked_loss(self, step: TrainStep) -> torch.Tensor:
        losses = self.loss_hook(step)
        if tuple(losses.shape) != (len(step.x),):
            raise BastionRuntimeError(f"training defense '{self.label}' returned losses of shape "
                                      f"{tuple(losses.shape)} for a batch of {len(step.x)} inputs")
        return losses


_ADV_TRAINING = "bastion.attacks.evasion.training"
DEFENSES: Registry[type[TargetDefense] | type[TrainingDefense]] = Registry("defense", {
    "pgd-at": f"{_ADV_TRAINING}.madry:PGDTraining",
    "trades": f"{_ADV_TRAINING}.trades:Trades",
    "fast-fgsm": f"{_ADV_TRAINING}.fast_fgsm:FastFGSMTraining",
    "gaussian-noise": "bastion.certify.noise_training:GaussianNoiseTraining",
    "dp-sgd": "bastion.defenses.dp_sgd:DPSGD",
    "ibp": "bastion.certify.ibp_training:IBPTraining",
    **{name: f"bastion.defenses.transforms:{cls}" for name, cls in (
        ("bit-depth", "BitDepthReduction"), ("median-smoothing", "MedianSmoothing"),
        ("spatial-smoothing", "SpatialSmoothing"), ("jpeg", "JpegCompression"), ("rescale", "Rescale"),
        ("inference-noise", "InferenceNoise"), ("transform-chain", "TransformChain"))},
    **{name: f"bastion.defenses.outputs:{cls}" for name, cls in (
        ("top-k", "TopK"), ("label-only", "LabelOnly"), ("rounding", "Rounding"),
        ("reverse-sigmoid", "ReverseSigmoid"), ("output-noise", "OutputNoise"))},
})
"""Defenses by name: bastion's own and those of the ``bastion.defenses`` entry points. Training
defenses (``bastion harden``) and target defenses (``target.defenses`` in a policy) share it."""
