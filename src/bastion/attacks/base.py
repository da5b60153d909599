"""The evasion contract: ``EvasionAttack.run(target, x, y, threat, ctx) -> AttackResult``, and the
name registry.

An attack is a small object holding its parameters (Foolbox style), validated by one pydantic model
(``Params``) that the constructor, the policy and the docs share; the target, data, threat model
and run context are arguments, and everything a run owns lives in an :class:`AttackRun` (never on
the attack, so one instance is safe to reuse and to share). Inputs are processed in batches: an
interrupt (Ctrl-C, a cancelled run) or an exhausted query budget keeps every finished batch and
marks the result incomplete. Random numbers come from per-sample streams of the run context, so a
fixed seed gives the same result whatever the batch size.

Randomised targets (outputs that change between identical calls: detected by a cheap probe, or
declared) are evaluated in expectation, once for every attack, here: the model's own randomness is
seeded from the run (``bastion.core.run.model_draws``), white-box attacks take gradients of the
expected prediction over ``eot_iter`` draws (EOT, Athalye et al. 2018, arXiv:1707.07397; 20 unless
set), never stop on one lucky draw, and success and robust accuracy are the expected accuracy over
``draws`` fresh draws with a 95% confidence interval (:mod:`bastion.attacks.evasion.expectation`).
"""

from __future__ import annotations

import inspect
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from bastion.attacks.evasion.expectation import (
    CI_LEVEL,
    DRAWS_DEFAULT,
    EOT_DEFAULT,
    Expectation,
    bootstrap_ci,
    draw_counts,
    shares,
)
from bastion.core.data import check_label_indices
from bastion.core.defense import ExpectationView
from bastion.core.metrics import attack_metrics, perturbation_norms
from bastion.core.params import Eps, Norm, Params
from bastion.core.registry import Registry
from bastion.core.repeated import probe_randomized
from bastion.core.run import QueryLedger, RunContext, SampleStreams, metered, model_draws
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, QueryBudgetExceeded, TargetError, UsageError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
MAX_BATCH = 1_000_000
MAX_STEPS = 100_000  # caps that keep a typo (restarts=1000000000) from running for ever
MAX_RESTARTS = 1_000
MAX_QUERIES = 10_000_000
EVAL_BATCH = 256  # rows per call of the fresh draws that measure a randomised target (fixed: results
# do not depend on the attack's batch_size there)


@dataclass
class AttackResult:
    """Outcome of one attack at one ε: adversarial inputs and what they achieved."""

    attack: str
    x_adv: np.ndarray
    success: np.ndarray
    norms: dict[str, np.ndarray]
    queries: int
    seconds: float
    y: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    adv_confidence: np.ndarray
    eps: float | None = None
    norm: str | None = None
    targeted: bool = False
    complete: bool = True
    reason: str | None = None
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    expectation: Expectation | None = None  # set on a randomised target: accuracies are expectations

    @property
    def robust_accuracy(self) -> float:
        """Share of inputs still classified correctly; on a randomised target, the expected share
        over ``expectation.draws`` fresh draws."""
        if self.expectation is not None:
            return self.expectation.robust_accuracy
        return float(np.mean(self.adv_pred == self.y))

    @property
    def clean_accuracy(self) -> float:
        if self.expectation is not None:
            return self.expectation.clean_accuracy
        return float(np.mean(self.clean_pred == self.y))

    def metrics(self) -> dict[str, Any]:
        m = attack_metrics(y=self.y, clean_pred=self.clean_pred, adv_pred=self.adv_pred, success=self.success,
                           norms=self.norms, adv_confidence=self.adv_confidence, queries=self.queries,
                           seconds=self.seconds)
        m.update({"attack": self.attack, "eps": self.eps, "norm": self.norm, "complete": self.complete})
        if self.expectation is not None:
            e = self.expectation
            m.update({"clean_accuracy": e.clean_accuracy, "robust_accuracy": e.robust_accuracy, "draws": e.draws,
                      "robust_accuracy_ci_low": e.ci[0], "robust_accuracy_ci_high": e.ci[1]})
        if self.reason:
            m["reason"] = self.reason
        return m


class AttackParams(Params):
    """Parameters every evasion attack has."""

    eps: Eps = Field(0.1, description="Perturbation budget ε, in each feature's scale.")
    norm: Norm = Field("linf", description="Norm of the perturbation: linf or l2.")
    targeted: bool = Field(False, description="Aim at a chosen class (random other class unless given).")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH, description="Inputs attacked together (no effect on results).")
    seed: int = Field(0, ge=0, lt=2 ** 63, description="Extra key for the attack's random numbers.")
    randomized: bool | None = Field(None, description="Whether the target is randomised (None: declared by the "
                                                      "target, else probed with two identical calls).")
    draws: int = Field(DRAWS_DEFAULT, ge=1, le=100_000, description="Fresh draws of a randomised target over which "
                                                                    "success and robust accuracy are averaged.")


class GradientParams(AttackParams):
    """Parameters of every white-box attack."""

    eot_iter: int | None = Field(None, ge=1, le=10_000, description=(
        f"Draws of a randomised target averaged per gradient (EOT); None: {EOT_DEFAULT} on a randomised "
        "target, 1 otherwise."))


@dataclass
class AttackRun:
    """Everything one run of an attack owns: its context (random streams, ledger, cancellation), the
    full inputs and goals, a stop reason for later batches, notes, extras and the attack's own state."""

    ctx: RunContext
    ledger: QueryLedger
    x: np.ndarray
    goal: np.ndarray
    stop: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    expectation: bool = False  # randomised target: optimise the expected loss, never stop on one draw

    def streams(self, rows: np.ndarray, *names: str) -> SampleStreams:
        """Per-sample random streams of the inputs ``rows`` (independent of the batch they are in)."""
        return self.ctx.streams(rows, *names)

    def derive(self, name: str) -> AttackRun:
        """A run for a sub-attack (an ensemble stage, an inner attack): own random numbers and state,
        same ledger, inputs and cancellation."""
        return AttackRun(self.ctx.spawn(name, ledger=self.ledger), self.ledger, self.x, self.goal,
                         expectation=self.expectation)


class EvasionAttack(ABC):
    """Base class of evasion attacks. Subclasses set ``name``, ``family``, ``Params`` and implement
    ``_attack_batch``; ``_begin`` and ``_end`` set up per-run state and add to the result."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "evasion-whitebox"
    _init_params: ClassVar[tuple[str, ...]] = ()
    _legacy_batch: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = True
    minimal: ClassVar[bool] = False  # True for attacks that search for the smallest perturbation
    Params: ClassVar[type[AttackParams]] = AttackParams

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # v1 subclasses (third-party plug-ins) may take parameters in their own __init__ and
        # implement _attack_batch(target, x, goal, rows) without the run: both keep working
        cls._init_params = tuple(_own_init_params(cls))
        cls._legacy_batch = "run" not in inspect.signature(cls._attack_batch).parameters
        if not cls._init_params:
            cls.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                 for n, f in cls.Params.model_fields.items()])

    def __init__(self, **params: Any) -> None:
        self.params = self.Params.build(f"attack '{self.name or type(self).__name__}'", params)
        for key, value in self.params:
            setattr(self, key, value)

    # --- parameters (scikit-learn style) ------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        own = {n: getattr(self, n) for n in self._init_params if hasattr(self, n)}
        return {**dict(self.params), **own}

    def clone(self, **changes: Any) -> EvasionAttack:
        return type(self)(**{**self.get_params(), **changes})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- running --------------------------------------------------------------------------------
    def run(self, target: Target, x: np.ndarray, y: np.ndarray, threat: ThreatModel | None = None,
            ctx: RunContext | None = None, *, y_target: np.ndarray | None = None,
            progress: ProgressFn | None = None) -> AttackResult:
        """Attack ``x`` (labels ``y`` as class indices). A ``threat`` overrides ε, norm and targeting and
        adds its query budget; ``ctx`` is the run (seed, ledger, progress, cancellation), a fresh one
        with seed 0 by default."""
        attack = self
        if threat is not None:
            if self.needs_gradients and not threat.allows_gradients:
                raise UsageError(f"attack '{self.name}' needs gradients, but the threat model's knowledge is "
                                 f"'{threat.knowledge}' (only 'white' gives gradients)",
                                 hint="use a black-box attack (square, hopskipjump) or a transfer attack")
            attack = self.clone(eps=threat.eps, norm=threat.norm, targeted=threat.targeted)
        ctx = ctx if ctx is not None else RunContext()
        budget = threat.query_budget if threat is not None else None
        return attack._execute(target, x, y, ctx, ctx.ledger.limit(budget, "threat model's"), y_target,
                               progress or ctx.progress)

    def gradient_target(self, target: Target, eot: int = 1) -> Target:
        """The model a white-box attack takes its gradients through — the one place where it is
        chosen: the target's adaptive view (a defended target's BPDA/EOT path, a declared BPDA; the
        target itself otherwise), averaged over ``eot`` draws when ``eot`` > 1 (EOT). Predictions
        and success are always measured on the target."""
        view = target.adaptive_view()
        if not view.white_box:
            raise TargetError(f"attack '{self.name}' needs gradients but target '{target.name}' is a black box",
                              hint="use a black-box attack (e.g. square, hopskipjump) or a transfer attack")
        if eot > 1:
            assert isinstance(view, DifferentiableTarget)
            return ExpectationView(view, eot)
        return view

    def _eot(self, target: Target, randomized: bool) -> int:
        """Draws per gradient: the user's ``eot_iter``; else EOT_DEFAULT on a randomised target,
        unless a defense's adaptive path already averages its own draws; 1 otherwise."""
        if not self.needs_gradients:
            return 1
        chosen = getattr(self.params, "eot_iter", None)
        if chosen is not None:
            return int(chosen)
        if not randomized or getattr(target.adaptive_view(), "draws_per_call", 1) > 1:
            return 1
        return EOT_DEFAULT

    def _randomized(self, target: Target, x: np.ndarray) -> bool:
        """Declared by the attack's ``randomized``, else by the target; else probed (local targets)."""
        if self.randomized is not None:
            return bool(self.randomized)
        declared = getattr(target, "randomized", None)
        if declared is not None:
            return bool(declared)
        return not target.remote and probe_randomized(target, x)

    def _execute(self, target: Target, x: np.ndarray, y: np.ndarray, ctx: RunContext, ledger: QueryLedger,
                 y_target: np.ndarray | None, progress: ProgressFn | None) -> AttackResult:
        x = target.input_spec.validate(x)
        y = _check_labels(y, len(x), target.n_classes)
        rctx = ctx.spawn(f"{self.name}#{self.seed}", ledger=ledger)
        with model_draws(rctx.key("model")):  # the target's own randomness, seeded from the run
            randomized = self._randomized(target, x)
            eot = self._eot(target, randomized)
            work = self.gradient_target(target, eot) if self.needs_gradients else target
            if self.targeted and y_target is None:
                y_target = (y + rctx.rng("targets").integers(1, target.n_classes, size=len(y))) % target.n_classes
            goal = np.asarray(y_target, np.int64) if self.targeted else y
            run = AttackRun(rctx, ledger, x, goal, expectation=randomized)
            if randomized:
                how = (f"gradients of the expected prediction over {eot} draws per step (EOT)" if eot > 1 else
                       "gradients through the target's own adaptive view" if self.needs_gradients else
                       "candidates scored on single draws (black-box)")
                run.notes.append(f"randomised target: {how}, no input counted as fooled on one draw, and accuracies "
                                 f"are expectations over {self.draws} fresh draws with a {CI_LEVEL:.0%} bootstrap CI")
            self._begin(run, target)
            return self._attack(target, work, x, y, goal, run, rctx, ctx, ledger, progress, eot)

    def _attack(self, target: Target, work: Target, x: np.ndarray, y: np.ndarray, goal: np.ndarray, run: AttackRun,
                rctx: RunContext, ctx: RunContext, ledger: QueryLedger, progress: ProgressFn | None,
                eot: int) -> AttackResult:
        t0 = time.perf_counter()
        x_adv, complete, reason, interrupted = x.copy(), True, None, False
        clean_pred: np.ndarray | None = None
        clean_counts: np.ndarray | None = None
        with metered(target, work, ledger=ledger, log=ctx.query_log):
            try:
                if run.expectation:  # attack every input not yet fooled on every draw
                    clean_counts = self._draws(target, x, rctx, "clean")
                    open_ = shares(clean_counts, y, goal, self.targeted)[1] < 1.0
                else:
                    clean_pred = _predict(target, x, self.batch_size)
                    open_ = (clean_pred == y) if not self.targeted else (clean_pred != goal)
                for s in range(0, len(x), self.batch_size):
                    rctx.check_cancelled()
                    sl = slice(s, s + self.batch_size)
                    todo = np.flatnonzero(open_[sl])
                    if len(todo):
                        rows = s + todo
                        batch = ((work, x[rows], goal[rows], rows) if self._legacy_batch else
                                 (work, x[rows], goal[rows], rows, run))
                        try:
                            x_adv[rows] = target.input_spec.enforce(x[rows], self._attack_batch(*batch))
                        except RuntimeError as exc:
                            raise _no_gradient_path(self.name, exc) from exc
                    if progress:
                        progress(min(self.batch_size, len(x) - s))
            except QueryBudgetExceeded as exc:
                complete, reason = False, f"query budget exhausted: {exc}"
                log.warning("%s: %s", self.name, reason)
            except KeyboardInterrupt:
                complete, reason, interrupted = False, "interrupted", True
                log.warning("%s interrupted; keeping the batches finished so far", self.name)
            except BastionRuntimeError as exc:  # e.g. an endpoint that failed mid-attack
                complete, reason = False, f"stopped early: {exc}"
                log.warning("%s: %s; keeping the batches finished so far", self.name, reason)
            if run.stop and complete:
                complete, reason = False, run.stop
            seconds = time.perf_counter() - t0
            expectation: Expectation | None = None
            if run.expectation:  # fresh draws, uncounted (bastion's own measurement)
                if clean_counts is None:
                    clean_counts = self._draws(target, x, rctx, "clean")
                adv_counts = self._draws(target, x_adv, rctx, "adv")
                clean_pred = clean_counts.argmax(1)
                adv_correct, adv_success = shares(adv_counts, y, goal, self.targeted)
                expectation = Expectation(self.draws, eot, shares(clean_counts, y, goal, self.targeted)[0],
                                          adv_correct, adv_success, bootstrap_ci(adv_correct, rctx.rng("ci")))
                probs = adv_counts / adv_counts.sum(axis=1, keepdims=True)
            else:
                with target.uncounted():
                    probs = target.predict_proba(x_adv)
                    if clean_pred is None:
                        clean_pred = _predict(target, x, self.batch_size)
        adv_pred = probs.argmax(axis=1)
        if expectation is not None:  # fooled on most draws
            success = expectation.adv_success > 0.5
        else:
            success = (adv_pred == goal) if self.targeted else (adv_pred != y)
        norms = perturbation_norms(x, x_adv, target.input_spec.scale_array())
        res = AttackResult(attack=self.name, x_adv=x_adv, success=success, norms=norms, queries=ledger.spent,
                           seconds=seconds, y=y, clean_pred=clean_pred, adv_pred=adv_pred,
                           adv_confidence=probs.max(axis=1), eps=None if self.minimal else self.eps,
                           norm=self.norm, targeted=self.targeted, complete=complete, reason=reason,
                           interrupted=interrupted, extra=run.extra, expectation=expectation)
        res.extra["query_log"] = {**ctx.query_log.summary(), "budget": ledger.budget}
        self._end(run, res)
        if run.notes:
            res.extra.setdefault("notes", []).extend(dict.fromkeys(run.notes))
        return res

    def _draws(self, target: Target, x: np.ndarray, rctx: RunContext, what: str) -> np.ndarray:
        """Class counts over ``draws`` fresh, seeded draws of every input (uncounted)."""
        with model_draws(rctx.key("eval", what)):
            return draw_counts(target, x, self.draws, EVAL_BATCH)

    def _begin(self, run: AttackRun, target: Target) -> None:
        """Set up the run's own state (``run.state``) before the first batch."""

    def _end(self, run: AttackRun, res: AttackResult) -> None:
        """Add what the run measured to the result (``res.extra``)."""

    @abstractmethod
    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        """Adversarial versions of ``x`` (float32, inside bounds). ``goal`` holds the true labels
        (untargeted) or the target labels (targeted); ``rows`` are the indices in the full input
        (key of each sample's random stream: ``run.streams(rows)``)."""


Attack = EvasionAttack  # the v1 name


def _param_names(cls: type[EvasionAttack]) -> list[str]:
    """The attack's parameter names (its ``Params`` model, and those of a v1 ``__init__``)."""
    return list(dict.fromkeys([*cls.Params.model_fields, *cls._init_params]))


def _own_init_params(cls: type) -> list[str]:
    """Named keyword parameters of the ``__init__`` methods subclasses define themselves."""
    return [name for c in cls.__mro__ if "__init__" in c.__dict__ and c is not EvasionAttack and c is not object
            for name, p in inspect.signature(c.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


_GRAPH_ERRORS = ("appears to not have been used in the graph", "does not require grad and does not have a grad_fn")


def _no_gradient_path(attack: str, exc: RuntimeError) -> Exception:
    """torch's autograd error when the model's output does not depend differentiably on its input
    (a dynamically quantised module, a ``.detach()`` or a NumPy round trip inside ``forward``) as a
    clear error saying what to do; any other RuntimeError unchanged."""
    if not any(m in str(exc) for m in _GRAPH_ERRORS):
        return exc
    return TargetError(f"{attack}: the model passes no gradient to its input (its output is not a differentiable "
                       "function of it, as in a quantised module or a detach/NumPy step inside forward), so a "
                       "gradient-based attack cannot run on it",
                       hint="use a black-box attack (square) or a transfer attack, or declare a differentiable "
                            "stand-in for the model (target.bpda)")


def _predict(target: Target, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([target.predict_proba(x[s:s + batch_size]).argmax(1)
                           for s in range(0, len(x), batch_size)])


def _check_labels(y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    return check_label_indices(y, n, n_classes)


# --- registry -------------------------------------------------------------------------------------
_EVASION = "bastion.attacks.evasion"
ATTACKS: Registry[type[Attack]] = Registry("attack", {
    "fgsm": f"{_EVASION}.fgsm:FGSM",
    "pgd": f"{_EVASION}.pgd:PGD",
    "apgd": f"{_EVASION}.apgd:APGD",
    "apgd-ce": f"{_EVASION}.apgd:APGDCE",
    "apgd-dlr": f"{_EVASION}.apgd:APGDDLR",
    "apgd-t": f"{_EVASION}.apgd:APGDT",
    "auto": f"{_EVASION}.auto:AutoAttack",
    "cw": f"{_EVASION}.cw:CarliniWagnerL2",
    "deepfool": f"{_EVASION}.deepfool:DeepFool",
    "fab": f"{_EVASION}.fab:FAB",
    "min-eps": f"{_EVASION}.min_eps:MinimalEps",
    "square": f"{_EVASION}.square:Square",
    "hopskipjump": f"{_EVASION}.hopskipjump:HopSkipJump",
    "transfer": f"{_EVASION}.transfer:Transfer",
})
"""Every attack by name: bastion's own and those of the ``bastion.attacks`` entry points."""


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack reachable by name from policies, the CLI and the API."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute name = '...'")
    ATTACKS.add(cls.name, cls)
    return cls


def available_attacks() -> Registry[type[Attack]]:
    """The attack registry: ``name in available_attacks()`` and iterating names import nothing;
    ``available_attacks()[name]`` imports that attack (a missing extra is a one-line error)."""
    return ATTACKS


def get_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name, validating its parameters."""
    cls = ATTACKS.get_object(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise UsageError(f"bad parameters for attack '{name}': {exc}; allowed: {', '.join(_param_names(cls))}") \
            from exc
