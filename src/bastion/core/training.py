"""The training contract: ``TrainFn(TrainRequest) -> Target``.

Everything bastion trains — shadow models, poisoned and backdoored models, label-noise audits,
hardened models, surrogates, the demo models — goes through one contract:

- a :class:`TrainRequest` says what to train on (data, seed, optional validation data and sample
  weights, device, the input spec and classes of the resulting Target);
- a TrainFn is any callable taking it and returning a Target: the user's own function
  (``python:train.py:fit`` in a policy), a scikit-learn estimator (:func:`sklearn_train_fn` clones
  and fits it), or bastion's :class:`TorchTrainingProcedure`, whose batch and step hooks training
  defenses change (adversarial training rewrites batches, DP-SGD rewrites gradients).

Random numbers come from the request's seed through ``torch.Generator`` objects (weights, shuffling);
torch's global generator is never seeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bastion.core.spec import InputSpec
from bastion.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

    from bastion.core.targets.base import Target


@dataclass(frozen=True)
class TrainRequest:
    """What to train: inputs ``x`` and labels ``y`` (class indices, or rows of class probabilities
    for soft labels), a seed, optional validation data and per-sample weights, the device, and the
    resulting Target's input spec and classes (default: the shape of ``x``, unbounded; 0..k-1)."""

    x: np.ndarray
    y: np.ndarray
    seed: int = 0
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    sample_weight: np.ndarray | None = None
    device: str = "cpu"
    input_spec: InputSpec | None = None
    classes: list[Any] | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        if n == 0 or len(self.y) != n:
            raise DataError(f"training data: {n} inputs and {len(self.y)} labels (need the same number, > 0)")
        if self.sample_weight is not None and len(self.sample_weight) != n:
            raise DataError(f"training data: {n} inputs but {len(self.sample_weight)} sample weights")
        if (self.x_val is None) != (self.y_val is None):
            raise DataError("validation data needs both x_val and y_val")

    @property
    def spec(self) -> InputSpec:
        return self.input_spec or InputSpec(shape=tuple(np.asarray(self.x).shape[1:]), lower=-np.inf, upper=np.inf)

    @property
    def class_list(self) -> list[Any]:
        if self.classes is not None:
            return list(self.classes)
        y = np.asarray(self.y)
        k = y.shape[1] if y.ndim == 2 else int(y.max()) + 1
        return list(range(max(k, 2)))


class TrainFn(Protocol):
    """Train a model on a request and return it as a Target."""

    def __call__(self, request: TrainRequest) -> Target: ...


# --- scikit-learn ---------------------------------------------------------------------------------
def fit_estimator(estimator: Any, request: TrainRequest) -> Any:
    """A fitted clone of ``estimator`` (its ``random_state``, where it has one, set from the seed;
    sample weights passed when given). The caller's estimator is never changed."""
    from sklearn.base import clone

    est = clone(estimator)
    seeds = {k: request.seed for k in est.get_params() if k == "random_state" or k.endswith("__random_state")}
    if seeds:
        est.set_params(**seeds)
    x = np.asarray(request.x).reshape(len(request.x), -1)
    kwargs = {} if request.sample_weight is None else {"sample_weight": np.asarray(request.sample_weight)}
    if kwargs and hasattr(est, "steps"):  # a pipeline routes the weights to its last step
        kwargs = {f"{est.steps[-1][0]}__sample_weight": kwargs["sample_weight"]}
    return est.fit(x, np.asarray(request.y), **kwargs)


@dataclass(frozen=True)
class EstimatorTrainer:
    """A scikit-learn estimator as a TrainFn: each call fits a clone and wraps it in a Target.
    Picklable (it can be sent to worker processes) and with a stable :meth:`identity`."""

    estimator: Any
    name: str = ""

    def __call__(self, request: TrainRequest) -> Target:
        return self.wrap(fit_estimator(self.estimator, request), request.spec)

    def wrap(self, fitted: Any, spec: InputSpec) -> Target:
        """A fitted estimator (this trainer's, or one it trained and cached earlier) as a Target."""
        from bastion.core.targets.sklearn_target import sklearn_target

        return sklearn_target(fitted, spec, name=self.name)

    def identity(self) -> str:
        """The estimator's class and parameters: equal for estimators that train alike."""
        est = self.estimator
        params = json.dumps(est.get_params(deep=True), default=repr, sort_keys=True)
        return f"sklearn:{type(est).__module__}.{type(est).__qualname__}:{params}"


def sklearn_train_fn(estimator: Any, *, name: str = "") -> TrainFn:
    """A scikit-learn estimator as a TrainFn (an :class:`EstimatorTrainer`)."""
    return EstimatorTrainer(estimator, name)


def trainer_identity(trainer: Any) -> str | None:
    """A string that is equal for trainers that train alike, or None when there is none to trust:
    a trainer's own ``identity()``, else a function's module, name and source code (None for a
    closure or a function with defaults: what it captured is not in its source). What caches of
    trained models are keyed by (bastion.attacks.privacy.shadows)."""
    ident = getattr(trainer, "identity", None)
    if callable(ident):
        return str(ident())
    return _callable_identity(trainer)


def _callable_identity(fn: Any) -> str | None:
    import inspect

    if dataclasses.is_dataclass(fn) and not isinstance(fn, type):
        parts = [_callable_identity(v) if callable(v) else repr(v)
                 for v in (getattr(fn, f.name) for f in dataclasses.fields(fn))]
        return None if None in parts else f"{type(fn).__module__}.{type(fn).__qualname__}({', '.join(parts)})"
    if isinstance(fn, tuple | list):
        parts = [_callable_identity(v) for v in fn]
        return None if None in parts else f"[{', '.join(parts)}]"
    if inspect.isfunction(fn) and (fn.__closure__ or fn.__defaults__ or fn.__kwdefaults__):
        return None  # what it captured is not in its source
    if inspect.isfunction(fn) or inspect.isclass(fn):
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            return None
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        return f"{fn.__module__}:{fn.__qualname__}@{digest}"
    return None


# --- torch ----------------------------------------------------------------------------------------
@dataclass
class TrainStep:
    """One optimisation step, as hooks see it: the module (in training mode), the batch, its
    per-sample losses (step hooks only), the epoch and step numbers, the run's generator, the
    input spec of the data (bounds and ε scale, for hooks that craft inputs) and ``state``, the
    scratch space of this training run (one dict per ``fit`` call, shared by every hook: a
    defense keeps its run state there, under its own key, never on itself; a hook that stops
    training says why in ``state["stopped"]``)."""

    module: Any
    x: Any
    y: Any
    epoch: int
    step: int
    generator: Any
    losses: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    spec: InputSpec | None = None


@dataclass
class EpochEnd:
    """The end of one epoch, as epoch hooks see it: the module (in training mode), the epoch number,
    the steps taken so far, the run's generator, its scratch space and input spec (see
    :class:`TrainStep`), and the request's validation data as tensors (None without any)."""

    module: Any
    epoch: int
    steps: int
    generator: Any
    state: dict[str, Any] = field(default_factory=dict)
    spec: InputSpec | None = None
    x_val: Any = None
    y_val: Any = None


@dataclass
class TrainSetup:
    """The start of a training run, as setup hooks see it (the module built and initialised, no
    step taken). A hook may replace ``module`` (e.g. BatchNorm -> GroupNorm), set ``net`` (what
    each step runs forward and backward: the module, or a wrapper computing per-sample gradients),
    ``optimizer`` (built from ``make_optimizer`` after the hooks when left None), ``batches``
    (epoch -> the index tensors of each step's samples; by default a seeded shuffle cut into
    ``batch_size`` pieces) and ``step_context`` (a context manager factory around each step's
    objective and backward pass, e.g. to enable per-sample gradient hooks there only), ``backward``
    (the step's backward pass from the batch's per-sample losses, replacing the mean's; for
    unweighted runs: a hook that sets it refuses sample weights) and add ``cleanup`` callbacks,
    run when training ends. ``n``: training samples; ``weighted``: the
    request has sample weights; ``loss_hook``: a defense replaces the objective; ``state``: the
    run's scratch space."""

    module: Any
    make_optimizer: Callable[[Any], Any]
    batches: Callable[[int], Any]
    n: int
    batch_size: int
    epochs: int
    weighted: bool
    loss_hook: bool
    generator: Any
    state: dict[str, Any]
    device: str = "cpu"
    net: Any = None
    optimizer: Any = None
    step_context: Callable[[], Any] = contextlib.nullcontext
    backward: Callable[[Any], None] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


SetupHook = Callable[[TrainSetup], None]  # before the first step: may replace the module, optimizer, batches
BatchHook = Callable[[TrainStep], tuple[Any, Any]]  # returns the batch to train on, e.g. adversarial inputs
StepHook = Callable[[TrainStep], None]  # after backward, before optimizer.step(): may rewrite .grad
LossHook = Callable[[TrainStep], Any]  # the per-sample losses of the step's batch (replaces ``loss``)
EpochHook = Callable[[EpochEnd], bool]  # after each epoch; True stops training (early stopping)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy; ``y`` class indices or rows of probabilities (soft labels)."""
    import torch.nn.functional as F

    if y.dim() == 2:
        return -(y * F.log_softmax(logits, dim=1)).sum(dim=1)
    return F.cross_entropy(logits, y, reduction="none")


@dataclass(frozen=True)
class Adam:
    """An optimiser factory: Adam with learning rate ``lr`` (picklable, so a procedure using it
    can train in worker processes)."""

    lr: float = 1e-3

    def __call__(self, params: Any) -> Any:
        import torch

        return torch.optim.Adam(params, lr=self.lr)


def adam(lr: float = 1e-3) -> Callable[[Any], Any]:
    """An optimiser factory: Adam with learning rate ``lr``."""
    return Adam(lr)


@dataclass(frozen=True)
class TorchTrainingProcedure:
    """Mini-batch training of a torch module; itself a TrainFn (returns a TorchTarget).

    ``model`` builds the untrained module; Linear and Conv layers are initialised from the request's
    seed (PyTorch's default rule, drawn from a ``torch.Generator``). ``optimizer`` builds the
    optimiser from the parameters, ``loss`` gives per-sample losses (weighted by the request's
    sample weights). ``batch_hooks`` may replace each batch (adversarial training), ``loss_hook``
    may replace the objective (TRADES: clean loss plus a term at an adversarial point),
    ``step_hooks`` run between backward and the optimiser step (clip or rewrite the gradients),
    ``epoch_hooks`` run after each epoch and may stop training (early stopping), ``setup_hooks``
    run once before the first step and may replace the module, optimiser and batch sampling
    (DP-SGD: per-sample gradients, a private optimiser, Poisson sampling).
    """

    model: Callable[[], Any]
    optimizer: Callable[[Any], Any] = field(default_factory=adam)
    loss: Callable[[Any, Any], Any] = cross_entropy
    epochs: int = 10
    batch_size: int = 64
    batch_hooks: Sequence[BatchHook] = ()
    step_hooks: Sequence[StepHook] = ()
    loss_hook: LossHook | None = None
    epoch_hooks: Sequence[EpochHook] = ()
    setup_hooks: Sequence[SetupHook] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")

    def with_hooks(self, *, batch: Sequence[BatchHook] = (), step: Sequence[StepHook] = (),
                   loss: LossHook | None = None, epoch: Sequence[EpochHook] = (),
                   setup: Sequence[SetupHook] = ()) -> TorchTrainingProcedure:
        """The same procedure with more hooks (how a training defense changes it). There is one
        objective: a second ``loss`` hook is refused."""
        if loss is not None and self.loss_hook is not None:
            raise UsageError("two training defenses both replace the training objective (loss hook); "
                             "combine at most one of them with others")
        return dataclasses.replace(self, batch_hooks=(*self.batch_hooks, *batch),
                                   step_hooks=(*self.step_hooks, *step), loss_hook=loss or self.loss_hook,
                                   epoch_hooks=(*self.epoch_hooks, *epoch),
                                   setup_hooks=(*self.setup_hooks, *setup))

    def __call__(self, request: TrainRequest) -> Target:
        from bastion.core.targets.torch_target import TorchTarget

        module = self.fit(request)
        return TorchTarget(module, request.spec, classes=request.class_list, device=request.device,
                           name=self.name or type(module).__name__)

    def fit(self, request: TrainRequest, module: Any = None, *, epochs: int | None = None,
            progress: Callable[[int], None] | None = None, state: dict[str, Any] | None = None) -> Any:
        """Train and return the module (in eval mode). ``module`` continues training an existing one
        (warm start); ``epochs`` overrides the procedure's; ``progress`` is told the number of
        samples of each batch trained on; ``state`` (a dict) becomes the run's scratch space, to
        read after training (e.g. the privacy a DP-SGD run spent)."""
        import torch

        gen = torch.Generator().manual_seed(int(request.seed))
        if module is None:
            with torch.random.fork_rng(devices=[]):  # layers draw their default weights from the global
                module = self.model()               # generator: leave its state as it was, then redraw
            init_weights(module, gen)
        module = module.to(request.device)
        module.train()
        for p in module.parameters():
            p.requires_grad_(True)
        x, y = _tensors(request.x, request.y, request.device)
        w = (None if request.sample_weight is None else
             torch.as_tensor(np.asarray(request.sample_weight, np.float32), device=request.device))
        x_val, y_val = _tensors(request.x_val, request.y_val, request.device)
        shuffle = torch.Generator().manual_seed(int(request.seed))
        n_epochs = self.epochs if epochs is None else epochs

        def shuffled(epoch: int) -> Any:
            perm = torch.randperm(len(x), generator=shuffle).to(request.device)
            return (perm[i:i + self.batch_size] for i in range(0, len(x), self.batch_size))

        state = {} if state is None else state
        setup = TrainSetup(module, self.optimizer, shuffled, len(x), self.batch_size, n_epochs, w is not None,
                           self.loss_hook is not None, gen, state, request.device)
        try:
            for hook in self.setup_hooks:
                hook(setup)
            module, net = setup.module, setup.net if setup.net is not None else setup.module
            opt = setup.optimizer if setup.optimizer is not None else setup.make_optimizer(module.parameters())
            self._loop(setup, net, opt, (x, y, w), (x_val, y_val), request.spec, progress)
        finally:
            for done in setup.cleanup:
                done()
        return setup.module.eval()

    def _loop(self, setup: TrainSetup, net: Any, opt: Any, train: tuple[Any, Any, Any], val: tuple[Any, Any],
              spec: InputSpec, progress: Callable[[int], None] | None) -> None:
        """The epochs: each step's batch through the batch hooks, the loss, backward, the step hooks,
        the optimiser step; the epoch hooks after each epoch (True from any stops training)."""
        (x, y, w), (x_val, y_val) = train, val
        module, gen, state, step = setup.module, setup.generator, setup.state, 0
        for epoch in range(setup.epochs):
            for idx in setup.batches(epoch):
                xb, yb = x[idx], y[idx]
                for hook in self.batch_hooks:
                    xb, yb = hook(TrainStep(module, xb, yb, epoch, step, gen, state=state, spec=spec))
                module.train()  # a hook may have switched to eval mode to craft its batch
                opt.zero_grad()
                with setup.step_context():
                    losses = (self.loss(net(xb), yb) if self.loss_hook is None
                              else self.loss_hook(TrainStep(module, xb, yb, epoch, step, gen, state=state, spec=spec)))
                    if setup.backward is not None:
                        setup.backward(losses)
                    else:
                        loss = ((losses * w[idx]).sum() / w[idx].sum().clamp_min(1e-12) if w is not None
                                else losses.sum() / max(len(losses), 1))  # the mean; 0 for an empty (Poisson) batch
                        loss.backward()
                for shook in self.step_hooks:
                    shook(TrainStep(module, xb, yb, epoch, step, gen, losses.detach(), state, spec))
                opt.step()
                step += 1
                if progress is not None:
                    progress(len(idx))
            stop = [bool(hook(EpochEnd(module, epoch, step, gen, state, spec, x_val, y_val))) for hook in self.epoch_hooks]
            module.train()
            if any(stop):
                break


def _tensors(x: Any, y: Any, device: str) -> tuple[Any, Any]:
    """Inputs as float32 and labels as int64 indices (float32 rows for soft labels) on ``device``."""
    import torch

    if x is None:
        return None, None
    y_np = np.asarray(y)
    return (torch.as_tensor(np.asarray(x, np.float32), device=device),
            torch.as_tensor(y_np.astype(np.float32) if y_np.ndim == 2 else y_np.astype(np.int64), device=device))


def init_weights(module: Any, gen: torch.Generator) -> None:
    """PyTorch's default initialisation of Linear and Conv layers, drawn from ``gen``: the same
    weights for the same seed, whatever ran before (torch's global generator is not touched)."""
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)
