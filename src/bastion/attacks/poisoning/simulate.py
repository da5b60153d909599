"""Poisoning simulations: how much damage a poisoning attack does at each poison fraction, whether
detectors find the poison, and what retraining on the sanitised data gives back.

For each fraction, one unit of work (on the run's executor: worker processes in a scan) poisons
the training set, trains the run's TrainFn on it (cached by content hash, :mod:`bastion.core.trained`)
and measures on clean test records:

- ``clean_accuracy``: accuracy on the clean test records;
- ``source_accuracy`` (targeted label flip): accuracy on the test records of the source class;
- ``attack_success``: for a targeted flip, the share of source-class test records answered as
  the target class; for a backdoor, the share of test records not of the target class that the
  trigger turns into the target class; for an attack aimed at chosen inputs (``attack.goal()``,
  clean-label feature collision), the share of them answered as the attacker's class;

then, for each detector, its precision and recall on the poisoned records and the same figures for
a model retrained on the training set without the flagged records. Fraction 0 is the clean model.
Every model of a simulation trains with the same seed, so that only the poison differs between
fractions (and between attacks: the clean model is trained once and cached). A trainer that fails
on some poisoned set is recorded for that fraction (``error``), a detector that cannot run on the
model (activations of a model that is not a neural network) for that detector; the others go on.
A ``probe`` (a picklable function of the poisoned model, the trigger, the test records and a run
context, returning named figures) looks at each poisoned model where it was trained: how the
campaign measures inference-time detectors such as STRIP without this module importing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from bastion.attacks.poisoning.base import PoisoningAttack, PoisonResult, Trigger
from bastion.attacks.poisoning.detectors import PoisonDetector
from bastion.core.data import Dataset
from bastion.core.results import CheckResult
from bastion.core.run import RunContext, Unit
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.core.trained import run_units, trained_answers
from bastion.core.training import TrainRequest
from bastion.errors import BastionError, BastionRuntimeError, UsageError


Probe = Callable[[Any, Trigger | None, np.ndarray, np.ndarray, RunContext], dict[str, float | None]]


class Outcome(BaseModel):
    """A model's figures on the clean test records (None: not measured for this attack)."""

    clean_accuracy: float
    source_accuracy: float | None = None
    attack_success: float | None = None


class DetectorOutcome(BaseModel):
    """One detector on one poisoned training set: precision and recall on the poisoned records,
    and the model retrained without the flagged records (``retrained``; None when it failed)."""

    detector: str
    poison_rate: float
    flagged: int
    precision: float | None
    recall: float | None
    retrained: Outcome | None = None
    error: str | None = None


class FractionOutcome(BaseModel):
    """One poison fraction: the model trained on the poisoned set and each detector's outcome."""

    fraction: float
    poisoned: int
    model: Outcome | None = None
    detectors: list[DetectorOutcome] = Field(default_factory=list)
    probe: dict[str, float | None] = Field(default_factory=dict)
    error: str | None = None


class Simulation(BaseModel):
    """Every fraction of one attack, fraction 0 (the clean model) first."""

    attack: str
    kind: str  # label-flip, targeted-flip, backdoor
    source: int | None = None
    target: int | None = None
    outcomes: list[FractionOutcome]
    seconds: float

    def record(self, check: CheckResult) -> None:
        """Measurements for gates: per fraction the clean accuracy, source accuracy, attack success
        and, per detector, precision, recall and the retrained model's figures."""
        for o in self.outcomes:
            at = {"attack": self.attack, "fraction": f"{o.fraction:g}"}
            if o.model is not None:
                _outcome(check, o.model, **at)
            for name, value in o.probe.items():
                check.measure(name, value, "ratio", **at)
            for d in o.detectors:
                check.measure("detector_precision", d.precision, "ratio", detector=d.detector, **at)
                check.measure("detector_recall", d.recall, "ratio", detector=d.detector, **at)
                if d.retrained is not None:
                    _outcome(check, d.retrained, prefix="sanitised_", detector=d.detector, **at)


def _outcome(check: CheckResult, o: Outcome, prefix: str = "", **where: Any) -> None:
    check.measure(f"{prefix}clean_accuracy", o.clean_accuracy, "ratio", **where)
    if o.source_accuracy is not None:
        check.measure(f"{prefix}source_accuracy", o.source_accuracy, "ratio", **where)
    if o.attack_success is not None:
        check.measure(f"{prefix}attack_success", o.attack_success, "ratio", **where)


def simulate(attack: PoisoningAttack, train: Dataset, test: Dataset, fractions: list[float], trainer: Any, *,
             detectors: Sequence[PoisonDetector] = (), spec: InputSpec | None = None,
             classes: list[Any] | None = None, ctx: RunContext | None = None, cache: bool = True,
             probe: Probe | None = None) -> Simulation:
    """Run ``attack`` at each of ``fractions`` (0 adds the clean model) through ``trainer``; labels
    of ``train`` and ``test`` are class indices. Each detector whose ``poison_rate`` is not set
    by the caller is told the share actually poisoned (the defender who knows the rate: its best case)."""
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise UsageError(f"poison fractions must lie in [0, 1), got {fractions}")
    t0 = time.perf_counter()
    run = ctx or RunContext()
    # one seed for every model of the run (keyed by its seed alone): only the poison differs between models
    train_seed = int(RunContext(seed=run.seed).key("poisoning-train") % 2**31)
    ctx = run.spawn(f"simulate-{attack.label}")
    x, y = np.asarray(train.x, np.float32), np.asarray(train.y).astype(np.int64)
    xt, yt = np.asarray(test.x, np.float32), np.asarray(test.y).astype(np.int64)
    spec = spec or InputSpec(shape=x.shape[1:], lower=-np.inf, upper=np.inf)
    classes = list(classes) if classes is not None else list(range(int(max(y.max(), yt.max())) + 1))
    poison_seed = int(ctx.key("poison") % 2**63)  # one trigger for every fraction
    units = [Unit(fraction_unit, f"fraction-{f:g}", {
        "attack": attack, "x": x, "y": y, "xt": xt, "yt": yt, "fraction": float(f), "top": float(max(fractions)),
        "poison_seed": poison_seed, "train_seed": train_seed, "trainer": trainer, "detectors": list(detectors),
        "spec": spec, "classes": classes, "cache": cache, "probe": probe})
        for f in sorted({0.0, *map(float, fractions)})]
    outcomes = run_units(trainer, units, ctx, what=f"poisoned models ({attack.label})")
    p = attack.params
    source = getattr(p, "source", None)
    target = getattr(p, "target", getattr(p, "target_class", getattr(p, "base_class", None)))
    kind = ("backdoor" if attack.backdoor else "targeted-flip" if source is not None else
            "clean-label" if attack.goal() is not None else attack.label)
    return Simulation(attack=attack.label, kind=kind, source=source, target=target, outcomes=outcomes,
                      seconds=time.perf_counter() - t0)


def fraction_unit(ctx: RunContext, attack: PoisoningAttack, x: np.ndarray, y: np.ndarray, xt: np.ndarray,
                  yt: np.ndarray, fraction: float, top: float, poison_seed: int, train_seed: int, trainer: Any,
                  detectors: list[PoisonDetector], spec: InputSpec, classes: list[Any], cache: bool,
                  probe: Probe | None = None) -> FractionOutcome:
    """One fraction: poison, train, measure, detect, retrain on what each detector left. Fraction 0
    trains on the clean set (and measures a backdoor's trigger, taken from the top fraction, on it)."""
    ctx.check_cancelled()
    poison_ctx = RunContext(seed=poison_seed)
    if fraction == 0:
        poisoned = PoisonResult(attack=attack.label, x=x, y=y, poison_indices=np.zeros(0, np.int64), fraction=0.0,
                                seconds=0.0)
        trigger = (attack.poison(Dataset(x, y), ThreatModel(poisoning_fraction=top), poison_ctx, spec=spec).trigger
                   if attack.backdoor and top > 0 else None)
    else:
        poisoned = attack.poison(Dataset(x, y), ThreatModel(poisoning_fraction=fraction), poison_ctx, spec=spec)
        trigger = poisoned.trigger
    out = FractionOutcome(fraction=fraction, poisoned=len(poisoned.poison_indices))
    need_model = (probe is not None or any(d.needs_model for d in detectors)) and fraction > 0
    try:
        out.model, model = _train_and_measure(attack, trainer, poisoned.x, poisoned.y, train_seed, xt, yt, trigger,
                                              spec, classes, cache, f"the model poisoned at {fraction:g}", need_model)
    except BastionRuntimeError as exc:
        out.error = exc.message
        return out
    if fraction == 0:
        return out
    if probe is not None:
        out.probe = probe(model, trigger, xt, yt, ctx.spawn("probe"))
    truth = np.zeros(len(poisoned.x), bool)
    truth[poisoned.poison_indices] = True
    for det in detectors:
        out.detectors.append(_detect(det, attack, poisoned, truth, fraction, model, trainer, train_seed, xt, yt,
                                     trigger, spec, classes, cache, ctx))
    return out


def _detect(det: PoisonDetector, attack: PoisoningAttack, poisoned: PoisonResult, truth: np.ndarray, fraction: float,
            model: Any, trainer: Any, seed: int, xt: np.ndarray, yt: np.ndarray, trigger: Trigger | None,
            spec: InputSpec, classes: list[Any], cache: bool, ctx: RunContext) -> DetectorOutcome:
    if "poison_rate" not in det.params.model_fields_set:  # the share actually poisoned (a targeted flip may fall short)
        det = type(det)(**{**det.params.model_dump(exclude_unset=True), "poison_rate": poisoned.fraction})
    rate = float(det.params.poison_rate)  # type: ignore[attr-defined]
    try:
        found = det.detect(poisoned.x, poisoned.y, ctx, model=model, trainer=trainer, spec=spec, classes=classes)
    except BastionError as exc:  # e.g. a detector that needs a neural network, on another model
        return DetectorOutcome(detector=det.label, poison_rate=rate, flagged=0, precision=None, recall=None,
                               error=exc.message)
    flagged = np.zeros(len(truth), bool)
    flagged[found.flagged] = True
    hits = int((flagged & truth).sum())
    res = DetectorOutcome(detector=det.label, poison_rate=rate, flagged=int(flagged.sum()),
                          precision=hits / flagged.sum() if flagged.any() else None,
                          recall=hits / truth.sum() if truth.any() else None)
    keep = ~flagged
    try:
        res.retrained, _ = _train_and_measure(attack, trainer, poisoned.x[keep], poisoned.y[keep], seed, xt, yt,
                                              trigger, spec, classes, cache,
                                              f"the model retrained after {det.label} at {fraction:g}", False)
    except BastionRuntimeError as exc:
        res.error = exc.message
    return res


def _train_and_measure(attack: PoisoningAttack, trainer: Any, x: np.ndarray, y: np.ndarray, seed: int,
                       xt: np.ndarray, yt: np.ndarray, trigger: Trigger | None, spec: InputSpec, classes: list[Any],
                       cache: bool, what: str, keep_model: bool) -> tuple[Outcome, Any]:
    goal = attack.goal()
    queries = [xt if goal is None else np.concatenate([xt, goal[0]])]
    if trigger is not None:
        queries.append(trigger.apply(queries[0]))
    request = TrainRequest(x, y, seed=seed, input_spec=spec, classes=classes)
    logp, model = trained_answers(trainer, request, queries, what=what, kind="poisoning", cache=cache,
                                  keep_model=keep_model)
    pred = logp.argmax(-1)[:, :len(xt)]
    outcome = measure(attack, pred[0], pred[1] if trigger is not None else None, yt, trigger)
    if goal is not None:  # the share of the attacker's chosen inputs answered as the class they want
        outcome.attack_success = float(np.mean(logp.argmax(-1)[0, len(xt):] == goal[1]))
    return outcome, model


def measure(attack: PoisoningAttack, pred: np.ndarray, pred_triggered: np.ndarray | None, yt: np.ndarray,
            trigger: Trigger | None) -> Outcome:
    """A model's figures from its answers on the clean test records (``pred``) and on the same
    records with the trigger (``pred_triggered``, backdoors)."""
    outcome = Outcome(clean_accuracy=float(np.mean(pred == yt)))
    p = attack.params
    source, target = getattr(p, "source", None), getattr(p, "target", None)
    if source is not None and target is not None:
        mask = yt == source
        if mask.any():
            outcome.source_accuracy = float(np.mean(pred[mask] == source))
            outcome.attack_success = float(np.mean(pred[mask] == target))
    if trigger is not None and pred_triggered is not None:
        mask = yt != trigger.target_class
        outcome.attack_success = float(np.mean(pred_triggered[mask] == trigger.target_class)) if mask.any() else None
    return outcome
