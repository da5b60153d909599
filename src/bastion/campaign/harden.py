"""``bastion harden``: train a hardened copy of a PyTorch model and report before and after.

A policy (version 2) names the target (the model as deployed), ``datasets.train`` (and
optionally ``holdout`` and ``eval``) and a ``harden`` section: a training defense registered in
``DEFENSES`` (``pgd-at``, ``trades``, ``fast-fgsm``, ``dp-sgd``, ...; ``also`` adds more) and the
training settings. The model is trained by a :class:`~bastion.core.training.TorchTrainingProcedure`
(the policy's ``trainer`` when it is one, else one built from ``harden``) changed by the defenses'
hooks; after each epoch the clean and PGD accuracy on held-out training samples are logged. The
target and the hardened model are then attacked with the full ``auto`` ensemble on the eval data
(the ``evasion`` check, unchanged) and the report set holds both, with the training log between
them. A defense against privacy attacks (``dp-sgd``) needs no evasion ε: without ``threat.eps`` the
evasion attacks and the per-epoch PGD log are not run (robust accuracy "not measured"); when the
policy names ``non_members``, the ``membership`` check runs on the target (members: the
``members`` role, else ``train``) and on the hardened model (members: the records it was trained
on). Weights are written as safetensors, atomically, once training finished; an error or Ctrl-C
before that writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bastion import __version__
from bastion.campaign.checks.base import CheckContext, CheckFailed, Interrupted, ProgressFactory
from bastion.campaign.checks.evasion import EvasionCheck, EvasionParams
from bastion.campaign.checks.membership import MembershipCheck, MembershipParams
from bastion.campaign.checks.records import RecordSet
from bastion.campaign.policy import HardenSpec, LoadedPolicy, load_policy
from bastion.campaign.runner import _load, _load_v2, _rel, _write_all
from bastion.core.data import Dataset, align_labels
from bastion.core.results import CheckResult, ScanResult
from bastion.core.targets.base import Target
from bastion.core.params import ParamError
from bastion.errors import BastionError, UsageError

EpochCallback = Callable[["EpochLog"], None]
TrainProgress = Callable[[int, int], Any]  # (epoch, samples per epoch) -> a context manager yielding advance(n)


class EpochLog(BaseModel):
    """One epoch of hardening: ε trained at, clean and PGD accuracy on the held-out samples, time."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    eps: float | None = Field(description="ε trained at (None: no evasion ε, e.g. dp-sgd without threat.eps).")
    clean_accuracy: float
    robust_accuracy: float | None = Field(description="PGD accuracy (10 steps, full ε) on the held-out samples "
                                                      "(None: not measured, no evasion ε).")
    seconds: float = Field(description="Training time of the epoch (the log's own evaluation excluded).")


class ModelFigures(BaseModel):
    """Clean and robust accuracy of one model under the ``auto`` ensemble on the eval data."""

    model_config = ConfigDict(extra="forbid")

    clean_accuracy: float | None
    robust_accuracy: float | None
    seconds: float
    status: str = Field(description="The evasion check's status, or 'not measured' (no evasion ε).")


class MembershipFigures(BaseModel):
    """One membership attack on the target (before) and on the hardened model (after): ROC AUC and
    TPR at 1 % FPR (None: the attack failed, or too few non-members to measure that FPR)."""

    model_config = ConfigDict(extra="forbid")

    attack: str
    auc_before: float | None
    auc_after: float | None
    tpr_at_1pct_fpr_before: float | None
    tpr_at_1pct_fpr_after: float | None
    members_before: int
    members_after: int
    non_members: int


class HardenResult(BaseModel):
    """What ``bastion harden`` did: the defenses and their parameters, the per-epoch log, why
    training stopped early (if it did), where the weights are, the before and after figures and
    the report (a ScanResult: ``auto (before)``, ``harden``, ``auto (after)``)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    defenses: list[dict[str, Any]]
    eps: float | None = Field(description="The evasion ε of the before/after attacks (None: not measured).")
    norm: str
    epochs: list[EpochLog]
    stopped: str | None = None
    kept_epoch: int = Field(description="The epoch whose weights were kept (harden.keep: best or last).")
    train_seconds: float = Field(description="Wall seconds of training, the per-epoch log included.")
    weights: str | None = Field(description="The safetensors file written (None when nothing was written).")
    privacy: dict[str, Any] | None = Field(default=None, description="DP training (dp-sgd): the accountant's ε "
                                           "spent at δ, the noise multiplier, clipping norm, sample rate, steps.")
    notes: list[str] = Field(default_factory=list, description="What the defenses changed (e.g. layers converted).")
    membership: list[MembershipFigures] = Field(default_factory=list, description="Membership inference before and "
                                                "after a privacy defense (policies naming datasets.non_members).")
    before: ModelFigures
    after: ModelFigures
    report: ScanResult


def harden(policy: str | Path | dict[str, Any] | LoadedPolicy, *, out_dir: str | Path | None = None,
           method: str | None = None, epochs: int | None = None, limit: int | None = None,
           progress: ProgressFactory | None = None, on_epoch: EpochCallback | None = None,
           write: bool = True, params: dict[str, Any] | None = None) -> HardenResult:
    """Harden the policy's target (see the module docstring). ``method`` and ``epochs`` override
    the policy's, ``params`` the method's parameters (e.g. ``{"epsilon": 3, "delta": 1e-5}`` for
    ``dp-sgd``); ``limit`` keeps a seeded subset of the eval data. ``progress(description, total)``
    opens progress bars (as for ``scan``); ``on_epoch`` is told each epoch's log. Returns the typed
    result; with ``write`` the weights and the reports go to ``out_dir`` (default ``output.dir``)."""
    loaded = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
    plan = _plan(loaded, method, epochs, params)
    out = Path(out_dir) if out_dir is not None else Path(loaded.policy.output.dir)
    if write:
        from bastion.outputs.report.writer import require_formats

        require_formats(loaded.policy.output.formats)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{'--out' if out_dir is not None else 'output.dir'} '{out}' is a file, not a directory",
                             hint="give a directory for the weights and the reports (it is created if missing)")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be a positive number of samples, got {limit}")
    target, data, y = _load(loaded, limit)
    if target is None or data is None:
        raise loaded.error("bastion harden needs 'target' and 'datasets.eval' (the data the before/after "
                           "attacks run on)", ("datasets",))
    _check_torch(loaded, target)
    datasets, trainer = _load_v2(loaded)
    train, holdout = _training_data(loaded, target, datasets, plan.spec)
    base, procedure, module, notes = _procedure(loaded, plan, target, trainer, train.x[:4], len(train.y))
    ctx = CheckContext(target=target, data=data, y=y, seed=loaded.policy.seed, out_dir=out, progress=progress,
                       policy_dir=loaded.base_dir, datasets=datasets, trainer=trainer or base)
    before = _evaluate(ctx, "auto (before)", plan)
    mi_before = _membership(ctx, plan, "membership (before)", "members" if "members" in datasets else "train")
    t0 = time.perf_counter()
    state: dict[str, Any] = {}
    trained, log, stopped, kept = _train(loaded, plan, procedure, module, target, train, holdout, progress,
                                         on_epoch, state)
    privacy = _privacy(state)
    train_seconds = time.perf_counter() - t0
    from bastion.core.targets.torch_target import TorchTarget

    hardened = TorchTarget(trained, target.input_spec, classes=target.classes, device=plan.spec.device,
                           name=f"hardened ({plan.method})", copy=False)
    ctx.target = hardened
    after = _evaluate(ctx, "auto (after)", plan)
    ctx.trainer, ctx.datasets = procedure, {**datasets, "train": _raw(train, target)}  # members: what it trained on
    mi_after = _membership(ctx, plan, "membership (after)", "train")
    weights = out / plan.spec.weights
    training = _training_check(plan, log, stopped, kept, train_seconds, weights, len(train.y), len(holdout.y),
                               privacy, notes)
    checks = [c for c in (before, mi_before, training, after, mi_after) if c is not None]
    report = _report(loaded, target, data, checks)
    result = HardenResult(method=plan.method, defenses=plan.described, eps=plan.eps, norm=plan.norm, epochs=log,
                          stopped=stopped, kept_epoch=kept, train_seconds=train_seconds, weights=str(weights) if write else None,
                          privacy=privacy, notes=notes, membership=_membership_figures(mi_before, mi_after),
                          before=_figures(before, target, data, y), after=_figures(after, hardened, data, y),
                          report=report)
    if write:
        save_weights(trained, weights)
        _write_all(report, out, loaded.policy.output.formats, True)
    return result


# --- the plan: defenses, ε and norm ----------------------------------------------------------------
class _Plan:
    def __init__(self, spec: HardenSpec, method: str, defenses: list[Any], eps: float | None, norm: str) -> None:
        self.spec, self.method, self.defenses, self.eps, self.norm = spec, method, defenses, eps, norm
        self.described = [{"name": d.label, "params": d.params.model_dump()} for d in defenses]
        self.privacy = any(not d.evasion for d in defenses)  # a defense against privacy attacks (dp-sgd)

    def auto(self, name: str) -> EvasionCheck:
        """The ``evasion`` check with the ``auto`` ensemble (full by default; ``harden.evaluate``
        changes its parameters) at the training ε and norm."""
        return EvasionCheck(name, EvasionParams(attack="auto", eps=[self.eps], norm=self.norm,  # type: ignore[arg-type]
                                                params=self.spec.evaluate))

    def membership(self, name: str, members: str) -> MembershipCheck:
        """The ``membership`` check (``harden.membership`` parameters; default: loss-threshold) with
        ``members`` from that dataset role and the ``non_members`` role."""
        params = {"attacks": ["loss-threshold"], **self.spec.membership,
                  "members": RecordSet(role=members), "non_members": RecordSet(role="non_members")}
        return MembershipCheck(name, MembershipParams(**params))


def _plan(loaded: LoadedPolicy, method: str | None, epochs: int | None, params: dict[str, Any] | None = None
          ) -> _Plan:
    """The training defenses to apply (``harden.method`` or ``method``, then ``harden.also``), each
    built from its parameters; ε and norm default to the policy's threat."""
    from bastion.core.defense import DEFENSES, TrainingDefense

    pol = loaded.policy
    if pol.harden is None:
        raise loaded.error("the policy has no 'harden' section: add one (harden: {method: pgd-at, params: "
                           "{eps: 0.1}}) and 'version: 2'", ())
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")
    spec = pol.harden.model_copy(update={"epochs": epochs} if epochs is not None else {})
    name = method or spec.method
    if params:
        spec = spec.model_copy(update={"params": {**(spec.params if name == spec.method else {}), **params}})
    threat = pol.threat.check_fields() if pol.threat else {}
    defaults = {k: v for k, v in (("eps", _first(threat.get("eps"))), ("norm", threat.get("norm"))) if v is not None}
    wanted = [(("harden",), "method", name, spec.params, defaults),
              *((("harden", "also", i), "name", d.name, d.params, {}) for i, d in enumerate(spec.also))]
    built = []
    for loc, key, dname, params, inherited in wanted:
        if dname not in DEFENSES or not _is_training(DEFENSES, dname):
            training = [n for n in DEFENSES if _is_training(DEFENSES, n)]
            raise loaded.error(f"'{dname}' is not a training defense; allowed: {', '.join(training)}", (*loc, key))
        cls = DEFENSES.get_object(dname)
        given = {**{k: v for k, v in inherited.items() if k in cls.Params.model_fields}, **params}
        try:
            defense = cls(**given)
        except ParamError as exc:
            at = (*loc, "params", exc.field) if exc.field in params else (("threat", exc.field) if exc.field in given
                                                                          else (*loc, "params"))
            raise loaded.error(exc.message, at, exc.hint) from None
        assert isinstance(defense, TrainingDefense)
        built.append(defense)
    first = built[0].params
    eps = getattr(first, "eps", None) or defaults.get("eps")
    if eps is None and any(d.evasion for d in built):
        raise loaded.error(f"'{name}' has no ε: set threat.eps (the ε the before/after attacks use)", ("threat",))
    plan = _Plan(spec, name, built, None if eps is None else float(eps),
                 str(getattr(first, "norm", None) or defaults.get("norm", "linf")))
    try:
        if plan.eps is not None:
            plan.auto("auto")  # a bad evaluate parameter is refused now, not after training
    except UsageError as exc:
        field = getattr(exc, "field", None)
        raise loaded.error(exc.message, ("harden", "evaluate", *([field] if field in spec.evaluate else [])),
                           exc.hint) from None
    if spec.membership:
        try:
            plan.membership("membership", "train")  # bad membership parameters: refused before training too
        except (ParamError, ValueError) as exc:
            raise loaded.error(str(getattr(exc, "message", exc)), ("harden", "membership")) from None
    return plan


def _is_training(registry: Any, name: str) -> bool:
    from bastion.core.defense import TrainingDefense

    obj = registry.get_object(name)
    return isinstance(obj, type) and issubclass(obj, TrainingDefense)


def _first(eps: Any) -> Any:
    return eps[0] if isinstance(eps, list) and eps else eps


# --- inputs: the model, the training data ----------------------------------------------------------
def _check_torch(loaded: LoadedPolicy, target: Target) -> None:
    from bastion.core.targets.torch_target import TorchTarget

    if not isinstance(target, TorchTarget):
        raise loaded.error(f"bastion harden trains PyTorch models; '{loaded.policy.target.model}' is a "  # type: ignore[union-attr]
                           f"{target.kind} model", ("target", "model"),
                           hint="give a python:FILE.py:FACTORY that returns a torch.nn.Module (or demo:digits-cnn)")


def _training_data(loaded: LoadedPolicy, target: Target, datasets: dict[str, Dataset], spec: HardenSpec
                   ) -> tuple[Dataset, Dataset]:
    """The training data (labels as the target's class indices, inputs checked against its spec)
    and the held-out samples: ``datasets.holdout``, or ``spec.holdout`` seeded samples of train."""
    if "train" not in datasets:
        raise loaded.error("bastion harden needs training data: add 'datasets: {train: {source: ...}}'",
                           ("datasets",), hint="e.g. train: {source: npz:train.npz} (arrays x and y)")
    out = []
    for role in ("train", "holdout"):
        if role not in datasets:
            continue
        ds = datasets[role]
        with loaded.blame("datasets", role, "source"):
            y = align_labels(ds, target)
            x = target.input_spec.validate(ds.x, what=f"datasets.{role}")
        out.append(Dataset(x, y, ds.name))
    train = out[0]
    if len(out) == 2:
        return train, out[1]
    n = len(train.y)
    if n < 2:
        raise loaded.error(f"datasets.train has {n} sample(s); hardening needs at least 2", ("datasets", "train"))
    kept, held = holdout_split(n, spec.holdout, loaded.policy.seed)
    return Dataset(train.x[kept], train.y[kept], train.name), Dataset(train.x[held], train.y[held], train.name)


def holdout_split(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training samples kept and of those held out (``size``, at most a fifth,
    at least one), a seeded random split."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(size, n // 5) or 1
    return order[k:], order[:k]


def _procedure(loaded: LoadedPolicy, plan: _Plan, target: Target, trainer: Any, probe: np.ndarray, n_train: int
               ) -> tuple[Any, Any, Any, list[str]]:
    """The training procedure without and with the defenses' hooks, the module to start from
    (None: a fresh one, initialised from the seed) and the defenses' notes. The architecture is
    built once, checked on a probe batch of the training data and by each defense first."""
    from bastion.core.loader import call_factory
    from bastion.core.training import TorchTrainingProcedure, adam

    spec = plan.spec
    if trainer is not None:
        if not isinstance(trainer, TorchTrainingProcedure):
            raise loaded.error(f"bastion harden changes a TorchTrainingProcedure; the trainer is a "
                               f"{type(trainer).__name__}", ("trainer",),
                               hint="make trainer a python:FILE.py:NAME that is a TorchTrainingProcedure, or "
                                    "remove it (harden then trains the target's architecture with its own settings)")
        label, where = loaded.policy.trainer.spec, ("trainer",)  # type: ignore[union-attr]
        procedure = trainer if "epochs" not in spec.model_fields_set else replace(trainer, epochs=spec.epochs)
    else:
        ref, where = _architecture(loaded, spec)
        label = f"python:{ref}"
        procedure = TorchTrainingProcedure(model=lambda: call_factory(ref), optimizer=adam(spec.lr),
                                           epochs=spec.epochs, batch_size=spec.batch_size,
                                           name=f"hardened ({plan.method})")
    with loaded.blame(*where):
        built = _checked_module(_build(procedure.model, label), label, target, probe)
    start = _copy_module(target.module) if spec.init == "pretrained" else None  # type: ignore[attr-defined]
    notes: list[str] = []
    base = procedure
    for i, defense in enumerate(plan.defenses):
        with loaded.blame("harden", *(("also", i - 1) if i else ()), "params"):
            notes += defense.check(start if start is not None else built, n_train)
        with loaded.blame("harden", *(("also", i - 1) if i else ())):
            procedure = defense.apply(procedure)
    return base, procedure, start, notes


def _build(factory: Callable[[], Any], label: str) -> Any:
    """Call the user's model factory; its failure is the user's to fix (exit 2), never a crash."""
    try:
        return factory()
    except (BastionError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:
        raise UsageError(f"the model factory '{label}' raised {type(exc).__name__}: {exc}",
                         hint="this is an error in your code: run the factory in Python to see the traceback") \
            from exc


def _architecture(loaded: LoadedPolicy, spec: HardenSpec) -> tuple[str, tuple[Any, ...]]:
    """The ``pkg.module:factory`` reference that builds the architecture, and where it was given."""
    if spec.model is not None:
        return _rel(spec.model, loaded.base_dir).removeprefix("python:"), ("harden", "model")
    model = loaded.policy.target.model  # type: ignore[union-attr]
    if model.startswith("python:"):
        return _rel(model, loaded.base_dir).removeprefix("python:"), ("target", "model")
    if model == "demo:digits-cnn":
        return "bastion.core.demo:digits_cnn_module", ("target", "model")
    raise loaded.error(f"bastion harden cannot rebuild '{model}' for training", ("harden", "model"),
                       hint="set harden.model to a python:FILE.py:FACTORY returning the untrained torch.nn.Module")


def _checked_module(module: Any, ref: str, target: Target, probe: np.ndarray) -> Any:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"the model factory '{ref}' returned a {type(module).__name__}, not a torch.nn.Module",
                         hint="bastion harden trains PyTorch models: return the untrained torch.nn.Module")
    try:
        with torch.no_grad():
            out = module.eval()(torch.as_tensor(probe, dtype=torch.float32))
    except Exception as exc:
        raise UsageError(f"the model from '{ref}' failed on a batch of the training data of shape "
                         f"{tuple(probe.shape)}: {type(exc).__name__}: {exc}") from exc
    width = int(out.reshape(len(probe), -1).shape[1]) if out.ndim >= 2 else 1
    if out.ndim < 2 or width != target.n_classes:
        raise UsageError(f"the model from '{ref}' gives {width} output(s) per input; the target has "
                         f"{target.n_classes} classes (allowed: {target.n_classes} outputs, one per class)")
    return module


def _copy_module(module: Any) -> Any:
    import copy

    out = copy.deepcopy(module)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


# --- training --------------------------------------------------------------------------------------
def _train(loaded: LoadedPolicy, plan: _Plan, procedure: Any, module: Any, target: Target, train: Dataset,
           holdout: Dataset, progress: ProgressFactory | None, on_epoch: EpochCallback | None,
           state: dict[str, Any]) -> tuple[Any, list[EpochLog], str | None, int]:
    """Fit the procedure with a logging epoch hook (clean and PGD accuracy on the held-out
    samples); returns the trained module (with ``keep: best``, the weights of the epoch of best
    held-out PGD accuracy, the later one on a tie), the log, why training stopped early (if it
    did) and the epoch whose weights were kept. ``state`` becomes the run's scratch space."""
    import copy

    import torch

    from bastion.attacks.evasion.training.base import clean_accuracy, geometry, pgd_accuracy
    from bastion.core.training import EpochEnd, TrainRequest

    spec = plan.spec
    log: list[EpochLog] = []
    clock = {"start": time.perf_counter()}
    captured: dict[str, Any] = {}
    eps_at = getattr(plan.defenses[0], "eps_at", lambda epoch: plan.eps)
    bars: dict[str, Any] = {}

    def record(end: EpochEnd) -> bool:
        seconds = time.perf_counter() - clock["start"]
        _close(bars)
        captured["state"] = end.state
        if "stopped" in end.state:  # a defense discarded this epoch's weights and stops: nothing to log
            return False
        robust: float | None = None
        if plan.eps is None:  # no evasion ε: clean accuracy only
            clean = clean_accuracy(end.module, end.x_val, end.y_val)
        else:
            geo = geometry(end.state, end.spec, end.x_val.device)
            own = torch.Generator().manual_seed(loaded.policy.seed + end.epoch)  # the log draws nothing from training's
            clean, robust = pgd_accuracy(end.module, end.x_val, end.y_val, geo, eps=plan.eps, norm=plan.norm,
                                         steps=10, generator=own)
        at = eps_at(end.epoch)
        entry = EpochLog(epoch=end.epoch + 1, eps=None if at is None else float(at), clean_accuracy=clean,
                         robust_accuracy=robust, seconds=seconds)
        log.append(entry)
        score = clean if robust is None else robust  # keep: best: held-out PGD accuracy, else clean accuracy
        if spec.keep == "best" and ("best" not in captured or score >= captured["best"][0]):
            captured["best"] = (score, entry.epoch, copy.deepcopy(end.module.state_dict()))
        if on_epoch is not None:
            on_epoch(entry)
        if progress is not None and end.epoch + 1 < procedure.epochs and "stopped" not in end.state:
            _open(bars, progress, f"epoch {end.epoch + 2}/{procedure.epochs}", len(train.y))
        clock["start"] = time.perf_counter()
        return False

    request = TrainRequest(train.x, train.y, seed=loaded.policy.seed, x_val=holdout.x, y_val=holdout.y,
                           device=spec.device, input_spec=target.input_spec, classes=list(target.classes))
    procedure = procedure.with_hooks(epoch=[record])
    if progress is not None:
        _open(bars, progress, f"epoch 1/{procedure.epochs}", len(train.y))
    try:
        with loaded.blame("harden"):
            trained = procedure.fit(request, module, progress=lambda n: bars["advance"](n) if bars else None,
                                    state=state)
    finally:
        _close(bars)
    stopped = captured.get("state", {}).get("stopped")
    kept = log[-1].epoch if log else 0
    if "best" in captured:
        _, kept, weights = captured["best"]
        trained.load_state_dict(weights)
    return trained, log, stopped if isinstance(stopped, str) else None, kept


def _open(bars: dict[str, Any], progress: ProgressFactory, description: str, total: int) -> None:
    cm = progress(description, total)
    bars.update(cm=cm, advance=cm.__enter__())


def _close(bars: dict[str, Any]) -> None:
    cm = bars.pop("cm", None)
    bars.pop("advance", None)
    if cm is not None:
        cm.__exit__(None, None, None)


def save_weights(module: Any, path: Path) -> Path:
    """The module's state dict as safetensors, written atomically (a reader sees the old file or
    the new one, never half of it)."""
    from safetensors.torch import save

    from bastion.core.io import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return atomic_write_bytes(path, save(tensors, metadata={"format": "pt", "producer": f"bastion {__version__}"}))


# --- evaluation and the report ---------------------------------------------------------------------
def _evaluate(ctx: CheckContext, name: str, plan: _Plan) -> CheckResult | None:
    """Run ``plan.auto`` on ``ctx``'s target (None without an evasion ε: not measured)."""
    return None if plan.eps is None else _run(ctx, plan.auto(name), name)


def _membership(ctx: CheckContext, plan: _Plan, name: str, members: str) -> CheckResult | None:
    """The membership check on ``ctx``'s target, for a privacy defense when the policy names
    non-members (None otherwise)."""
    if not plan.privacy or "non_members" not in ctx.datasets:
        return None
    return _run(ctx, plan.membership(name, members), name)


def _run(ctx: CheckContext, check: Any, name: str) -> CheckResult:
    """Run ``check`` on ``ctx``; an error of the model or an attack is an ``error`` result."""
    t0 = time.perf_counter()
    try:
        res = check.run(ctx)
    except Interrupted:
        raise KeyboardInterrupt from None
    except CheckFailed as exc:
        res = exc.partial
    except BastionError as exc:
        if isinstance(exc, UsageError):
            raise
        res = CheckResult(name=name, kind=check.kind, status="error", reason=str(exc))
    res.seconds = res.seconds or time.perf_counter() - t0
    return res


def _raw(ds: Dataset, target: Target) -> Dataset:
    """``ds`` with its class indices back as the target's labels (as a dataset role holds them)."""
    return Dataset(ds.x, np.asarray(list(target.classes), dtype=object)[ds.y], ds.name)


def _figures(res: CheckResult | None, target: Target, data: Dataset, y: np.ndarray) -> ModelFigures:
    """Clean and robust accuracy from the ``auto`` check; without one, the clean accuracy on the
    eval data and robust accuracy 'not measured'."""
    if res is None:
        t0 = time.perf_counter()
        clean = float(np.mean(target.predict_proba(data.x).argmax(1) == y))
        return ModelFigures(clean_accuracy=clean, robust_accuracy=None, seconds=time.perf_counter() - t0,
                            status="not measured")
    clean = res.values("clean_accuracy", attack="auto")
    robust = [m.value for m in res.measurements if m.name == "robust_accuracy" and "stage" not in m.where]
    return ModelFigures(clean_accuracy=clean[0] if clean else None, robust_accuracy=robust[0] if robust else None,
                        seconds=res.seconds, status=res.status)


def _membership_figures(before: CheckResult | None, after: CheckResult | None) -> list[MembershipFigures]:
    """AUC and TPR at 1 % FPR of each membership attack, before and after."""
    if before is None or after is None:
        return []

    def at(res: CheckResult, attack: str) -> tuple[float | None, float | None]:
        auc = res.values("membership_auc", attack=attack)
        tpr = res.values("tpr_at_fpr", attack=attack, fpr=0.01)
        return (auc[0] if auc else None), (tpr[0] if tpr else None)

    count = lambda res, name: int(res.values(name)[0]) if res.values(name) else 0  # noqa: E731
    attacks = dict.fromkeys([*before.metrics.get("attacks", {}), *after.metrics.get("attacks", {})])
    out = []
    for attack in attacks:
        (auc_b, tpr_b), (auc_a, tpr_a) = at(before, attack), at(after, attack)
        out.append(MembershipFigures(attack=attack, auc_before=auc_b, auc_after=auc_a, tpr_at_1pct_fpr_before=tpr_b,
                                     tpr_at_1pct_fpr_after=tpr_a, members_before=count(before, "members"),
                                     members_after=count(after, "members"), non_members=count(after, "non_members")))
    return out


def _privacy(state: dict[str, Any]) -> dict[str, Any] | None:
    """What a DP training defense recorded in the run's state: the ε spent (at δ) and its settings."""
    privacy = state.get("privacy")
    return {k: v for k, v in privacy.items() if k != "notes"} if isinstance(privacy, dict) else None


def _training_check(plan: _Plan, log: list[EpochLog], stopped: str | None, kept: int, seconds: float,
                    weights: Path, n_train: int, n_holdout: int, privacy: dict[str, Any] | None = None,
                    notes: list[str] | None = None) -> CheckResult:
    res = CheckResult(name="harden", kind="harden", seconds=seconds,
                      metrics={"method": plan.method, "defenses": plan.described, "weights": str(weights),
                               "train_samples": n_train, "holdout_samples": n_holdout,
                               "epochs": [e.model_dump() for e in log], "stopped": stopped,
                               "kept_epoch": kept, "keep": plan.spec.keep, "privacy": privacy,
                               "notes": list(notes or [])})
    res.measure("train_seconds", seconds, "seconds", method=plan.method)
    res.measure("epochs", float(len(log)), "count", method=plan.method)
    res.measure("kept_epoch", float(kept), "count", method=plan.method)
    for e in log:
        res.measure("holdout_clean_accuracy", e.clean_accuracy, "ratio", method=plan.method, epoch=e.epoch)
        if e.robust_accuracy is not None:
            res.measure("holdout_robust_accuracy", e.robust_accuracy, "ratio", method=plan.method, epoch=e.epoch,
                        attack="pgd", eps=plan.eps, norm=plan.norm)
    if privacy is not None:
        res.measure("dp_epsilon", privacy["epsilon"], "score", method=plan.method, delta=privacy["delta"],
                    accountant=privacy["accountant"])
    if stopped:
        res.reason = stopped
    return res


def _report(loaded: LoadedPolicy, target: Target, data: Dataset, checks: list[CheckResult]) -> ScanResult:
    import datetime as _dt

    from bastion.core.redact import redact
    from bastion.outputs.report.summary import plain_verdict

    pol = loaded.policy
    bad = [c for c in checks if c.status != "complete"]
    result = ScanResult(tool={"name": "bastion", "version": __version__, "command": "harden"},
                        target={**target.describe(), "spec": redact(pol.target.model), "policy": pol.name},  # type: ignore[union-attr]
                        data=data.describe(), checks=checks, policy_file=str(loaded.path) if loaded.path else None,
                        verdict="fail" if bad else "pass", status="incomplete" if bad else "complete",
                        status_reason="; ".join(f"check '{c.name}' {c.status}: {c.reason}" for c in bad) or None,
                        finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat())
    result.summary = plain_verdict(result)
    return result
