"""The ``poisoning`` check: how much damage would poisoned training records do, and would you notice?

Runs poisoning simulations (:func:`bastion.attacks.poisoning.simulate.simulate`) through the
policy's trainer on the ``train`` dataset (a seeded sample of at most ``max_records``), each
attack over a sweep of poison fractions, every training in a worker process and cached by content
hash, and measures on the eval data: clean accuracy, accuracy on the targeted class, attack
success, each detector's precision and recall on the poisoned records with the figures of a model
retrained without what it flagged, and, for backdoors, STRIP (:mod:`bastion.monitor.strip`) on
the poisoned model: the share of triggered test inputs it flags and of clean ones it wrongly flags.
With ``online_batch_size``, it also feeds the training records batch by batch to the trainer's
incremental learner (:mod:`bastion.attacks.poisoning.online`), ``online_fraction`` of each batch
poisoned, and measures the learner after every round beside one fed the clean batches.

Findings: ``BASTION-PO-001`` (label flips) and ``BASTION-PO-002`` (backdoors) at the smallest
fraction where the attack succeeds on at least half of its test records (severity from that
fraction), ``BASTION-PO-003`` where even the best detector leaves the attack working, and
``BASTION-PO-004`` for each fraction the trainer failed on (the other fractions still run). An
attack that cannot run at all is an error of the check, never a pass.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from bastion.attacks.poisoning.base import POISONING_ATTACKS, PoisoningAttack, Trigger, get_poisoning_attack
from bastion.attacks.poisoning.detectors import POISON_DETECTORS, PoisonDetector, get_poison_detector
from bastion.attacks.poisoning.online import OnlineSimulation, simulate_online
from bastion.attacks.poisoning.simulate import Outcome, Simulation, simulate
from bastion.campaign.checks.base import (AttackChoice, AttackList, Check, CheckContext, CheckFailed, CheckParams,
                                          Interrupted, register_check)
from bastion.campaign.gates import GateView
from bastion.campaign.poisoning_rules import BACKDOOR_RULE, FLIP_RULE, SANITISE_RULE, TRAIN_FAILED_RULE
from bastion.core.data import Dataset, align_labels
from bastion.core.results import CheckResult, Finding, PoisoningCurve, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.errors import BastionError, UsageError

MEASURED = frozenset({"clean_accuracy", "source_accuracy", "attack_success", "detector_precision", "detector_recall",
                      "sanitised_clean_accuracy", "sanitised_source_accuracy", "sanitised_attack_success",
                      "strip_detection_rate", "strip_false_alarm_rate", "train_records",
                      *(f"online_{r}{m}" for r in ("", "reference_")
                        for m in ("clean_accuracy", "source_accuracy", "attack_success"))})
MODEL_ATTACKS = frozenset({"feature-collision"})  # built from a model and inputs, not from parameters alone
SUCCESS = 0.5  # an attack "works" once it gets the attacker's answer on half of its test records


class AttackSpec(AttackChoice):
    registry = POISONING_ATTACKS
    what = "poisoning attack"

    @field_validator("attack")
    @classmethod
    def _from_a_policy(cls, v: str) -> str:
        if v in MODEL_ATTACKS:
            raise ValueError(f"'{v}' crafts its poisons on the attacker's model and chosen target inputs: run it from "
                             "Python (docs/poisoning.md, clean-label attacks)")
        return v


class DetectorSpec(CheckParams):
    detector: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("detector")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in POISON_DETECTORS:
            raise ValueError(f"unknown poison detector '{v}'; available: {', '.join(POISON_DETECTORS)}")
        return v


class PoisoningParams(CheckParams):
    attacks: AttackList[AttackSpec] = Field(default_factory=lambda: [AttackSpec(attack="label-flip")],
                                      description="Poisoning attacks: a name or {attack: NAME, params: {...}}.")
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2],
                                   description="Shares of the training records the attacker controls (0 is added: "
                                               "the clean model).")
    detectors: list[DetectorSpec] = Field(default_factory=lambda: [DetectorSpec(detector="knn")],
                                          description="Detectors of poisoned records: a name or {detector: NAME, "
                                                      "params: {...}}; poison_rate defaults to the fraction simulated.")
    strip: bool = Field(True, description="Measure STRIP on each backdoored model.")
    online_batch_size: int | None = Field(None, ge=2, description="Also simulate online learning: the trainer's "
                                          "learner updated batch by batch from the training records (None: not).")
    online_fraction: float = Field(0.1, gt=0, lt=1, description="Share of each online batch that is poisoned.")
    max_records: int | None = Field(None, gt=0, description="At most this many training records (a seeded sample).")

    @field_validator("detectors", mode="before")
    @classmethod
    def _detector_names(cls, v: Any) -> Any:
        return [{"detector": d} if isinstance(d, str) else d for d in v] if isinstance(v, list) else v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f < 1 for f in v):
            raise ValueError("fractions must be one or more numbers in (0, 1)")
        return sorted(set(v))


@register_check
class PoisoningCheck(Check):
    """Poisoning and backdoor simulation with detection and sanitisation."""

    kind = "poisoning"
    Params = PoisoningParams
    metric_names = MEASURED

    def __init__(self, name: str, params: PoisoningParams) -> None:
        super().__init__(name, params)
        self.params: PoisoningParams = params
        self.attacks: list[PoisoningAttack] = [get_poisoning_attack(a.attack, **a.params) for a in params.attacks]
        self.detectors: list[PoisonDetector] = [get_poison_detector(d.detector, **d.params) for d in params.detectors]

    def requirements(self) -> frozenset[str]:
        return frozenset({"trainer", "train"})

    def gate_view(self) -> GateView:
        return GateView(self.name, frozenset({self.name, self.kind, *(a.label for a in self.attacks)}), MEASURED,
                        {"attack": frozenset(a.label for a in self.attacks),
                         "fraction": frozenset(f"{f:g}" for f in [0.0, *self.params.fractions]),
                         "detector": frozenset(d.label for d in self.detectors), "round": None})

    def run(self, ctx: CheckContext) -> CheckResult:
        from bastion.campaign.executors import make_executor

        target, data, y = ctx.require_model(self.name)
        if "train" not in ctx.datasets:
            raise UsageError(f"check '{self.name}' poisons the 'train' dataset, which the policy does not give",
                             hint="add 'datasets: {train: ...}' to the policy")
        t0 = time.perf_counter()
        train = ctx.datasets["train"]
        spec = target.input_spec
        xtr = spec.validate(train.x, what="training data ('train')")
        ytr = np.asarray(align_labels(train, target))
        if self.params.max_records is not None and len(xtr) > self.params.max_records:
            keep = np.sort(np.random.default_rng(ctx.seed).permutation(len(xtr))[:self.params.max_records])
            xtr, ytr = xtr[keep], ytr[keep]
        res = CheckResult(name=self.name, kind=self.kind, metrics={"attacks": {}})
        res.measure("train_records", len(xtr), "count")
        run = RunContext(seed=ctx.seed, executor=make_executor(ctx.options.get("workers"))).spawn(self.name)

        errors: list[str] = []
        sims: list[Simulation] = []
        eval_x, classes = spec.validate(data.x, what="eval data"), list(range(target.n_classes))
        for attack in self.attacks:
            n = len(self.params.fractions) + 1
            try:
                with ctx.bar(f"{self.name}: {attack.label}: fractions", n) as advance:
                    sims.append(simulate(
                        attack, Dataset(xtr, ytr), Dataset(eval_x, y), self.params.fractions, ctx.trainer,
                        detectors=self.detectors, spec=spec, classes=classes,
                        ctx=run.spawn(attack.label, progress=advance),
                        probe=strip_probe if attack.backdoor and self.params.strip else None))
                if self.params.online_batch_size is not None:
                    online = simulate_online(
                        attack, Dataset(xtr, ytr), Dataset(eval_x, y), ctx.trainer,
                        fraction=self.params.online_fraction, batch_size=self.params.online_batch_size, spec=spec,
                        classes=classes, ctx=run.spawn(attack.label))
                    online.record(res)
                    res.artifacts.append(_online_curve(online))
                    res.findings += _online_findings(online, attack, self.name)
                    res.metrics.setdefault("online", {})[online.attack] = online.model_dump(mode="json")
            except KeyboardInterrupt:
                raise Interrupted(self._finish(res, sims, errors + [f"{attack.label}: interrupted"], t0)) from None
            except BastionError as exc:
                errors.append(f"{attack.label}: {exc.message}")
            except Exception as exc:  # one attack's crash must not lose the others
                errors.append(f"{attack.label}: {type(exc).__name__}: {exc}")
        final = self._finish(res, sims, errors, t0)
        if errors:
            raise CheckFailed(final)
        return final

    def _finish(self, res: CheckResult, sims: list[Simulation], errors: list[str], t0: float) -> CheckResult:
        for sim in sims:
            sim.record(res)
            res.metrics["attacks"][sim.attack] = sim.model_dump(mode="json")
            res.artifacts.append(_curve(sim))
            res.findings += _findings(sim, self.name)
        if errors:
            res.status, res.reason = "error", "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res


def strip_probe(model: Any, trigger: Trigger | None, xt: np.ndarray, yt: np.ndarray,
                ctx: RunContext) -> dict[str, float | None]:
    """STRIP fitted on half of the clean test records; the share of the other half's triggered
    inputs (not of the target class) it flags, and of their clean versions it flags."""
    from bastion.monitor.strip import STRIP

    if trigger is None:
        return {}
    order = ctx.rng("strip").permutation(len(xt))
    ref, held = order[:len(order) // 2], order[len(order) // 2:]
    held = held[yt[held] != trigger.target_class]
    if len(ref) < 2 or len(held) == 0:
        return {}
    det = STRIP(model, seed=int(ctx.key("overlays") % 2**31)).fit(xt[ref])
    flagged_triggered = {r for a in det.scan([trigger.apply(xt[held])]) for r in a.records}
    flagged_clean = {r for a in det.scan([xt[held]]) for r in a.records}
    return {"strip_detection_rate": len(flagged_triggered) / len(held),
            "strip_false_alarm_rate": len(flagged_clean) / len(held)}


def _curve(sim: Simulation) -> PoisoningCurve:
    fractions = [o.fraction for o in sim.outcomes]
    series: dict[str, list[float | None]] = {
        "clean_accuracy": [o.model.clean_accuracy if o.model else None for o in sim.outcomes]}
    if sim.kind == "targeted-flip":
        series[f"accuracy on class {sim.source}"] = [o.model.source_accuracy if o.model else None
                                                     for o in sim.outcomes]
    if sim.kind in ("targeted-flip", "backdoor"):
        series["attack_success"] = [o.model.attack_success if o.model else None for o in sim.outcomes]
    return PoisoningCurve(attack=sim.attack, x=fractions, series=series,
                          title=f"Poisoning: {sim.attack}" + (f" (class {sim.source} to {sim.target})"
                                                              if sim.kind == "targeted-flip" else ""))


def _online_curve(sim: OnlineSimulation) -> PoisoningCurve:
    rounds = [float(r.round) for r in sim.rounds]
    series: dict[str, list[float | None]] = {
        "clean_accuracy": [r.attacked.clean_accuracy for r in sim.rounds],
        "clean_accuracy without poison": [r.clean.clean_accuracy for r in sim.rounds]}
    if any(r.attacked.attack_success is not None for r in sim.rounds):
        series["attack_success"] = [r.attacked.attack_success for r in sim.rounds]
        series["attack_success without poison"] = [r.clean.attack_success for r in sim.rounds]
    return PoisoningCurve(attack=sim.attack, x=rounds, xlabel=f"round ({sim.batch_size} records each)", series=series,
                          title=f"Online learning: {sim.attack}, {sim.fraction:.0%} of each batch poisoned")


def _online_findings(sim: OnlineSimulation, attack: PoisoningAttack, check: str) -> list[Finding]:
    """A finding when, after the last round, the poisoned learner gives the attacker what they want
    (the thresholds of :func:`_works`, against the learner fed the clean stream)."""
    last = sim.rounds[-1] if sim.rounds else None
    if last is None:
        return []
    a, c = last.attacked, last.clean
    if a.attack_success is not None:
        works = a.attack_success >= SUCCESS and a.attack_success - (c.attack_success or 0.0) >= 0.25
        what = f"attack success {a.attack_success:.1%} (without poison: {(c.attack_success or 0.0):.1%})"
    else:
        works = c.clean_accuracy - a.clean_accuracy >= 0.05
        what = f"accuracy {a.clean_accuracy:.1%} (without poison: {c.clean_accuracy:.1%})"
    if not works:
        return []
    return [get_rule(BACKDOOR_RULE if attack.backdoor else FLIP_RULE).finding(
        title=f"{sim.attack}: online learning with {sim.fraction:.0%} of each batch poisoned", check=check,
        severity=_severity(sim.fraction),
        description=f"A learner updated in {len(sim.rounds)} rounds of {sim.batch_size} records, {sim.fraction:.0%} of "
                    f"each poisoned, ends at {what}.",
        metrics={"attack": sim.attack, "online_fraction": sim.fraction, "rounds": len(sim.rounds),
                 **a.model_dump()})]


def _severity(fraction: float) -> Severity:
    return Severity.high if fraction <= 0.01 else Severity.medium if fraction <= 0.05 else Severity.low


def _works(sim: Simulation, model: Outcome | None) -> bool:
    """Whether a model trained on poisoned data gives the attacker what they want: attack success
    of at least 50 % and 25 points above the clean model's (targeted attacks), or clean accuracy
    5 points below the clean model's (random flips)."""
    clean = sim.outcomes[0].model
    if model is None or clean is None:
        return False
    if model.attack_success is not None:
        base = clean.attack_success or 0.0
        return model.attack_success >= SUCCESS and model.attack_success - base >= 0.25
    return clean.clean_accuracy - model.clean_accuracy >= 0.05


def _findings(sim: Simulation, check: str) -> list[Finding]:
    out = []
    for o in sim.outcomes:
        if o.error is not None:
            out.append(get_rule(TRAIN_FAILED_RULE).finding(
                title=f"{sim.attack}: the trainer failed at poison fraction {o.fraction:g}", check=check,
                description=o.error, metrics={"attack": sim.attack, "fraction": o.fraction}))
    working = [o for o in sim.outcomes[1:] if _works(sim, o.model)]
    if not working:
        return out
    first, clean = working[0], sim.outcomes[0].model
    model = first.model
    assert model is not None and clean is not None
    if sim.kind == "backdoor":
        what = f"the trigger turns {model.attack_success:.1%} of test inputs into class {sim.target}"
    elif model.attack_success is not None:
        what = f"{model.attack_success:.1%} of class {sim.source} test records are answered as class {sim.target}"
    else:
        what = f"accuracy falls from {clean.clean_accuracy:.1%} to {model.clean_accuracy:.1%}"
    out.append(get_rule(BACKDOOR_RULE if sim.kind == "backdoor" else FLIP_RULE).finding(
        title=f"{sim.attack}: {first.fraction:.1%} poisoned training records suffice", check=check,
        severity=_severity(first.fraction),
        description=f"With {first.poisoned} poisoned training records ({first.fraction:.1%}), {what}; clean accuracy "
                    f"is {model.clean_accuracy:.1%} (clean model: {clean.clean_accuracy:.1%}).",
        metrics={"attack": sim.attack, "fraction": first.fraction, **model.model_dump()}))
    top = next((o for o in reversed(working) if o.detectors), None)
    if top is None:
        return out
    best = max(top.detectors, key=lambda d: (d.retrained is not None and not _works(sim, d.retrained), d.recall or 0))
    if best.retrained is None or _works(sim, best.retrained) or (best.recall or 0) < 0.5:
        r = best.retrained
        after = "could not be retrained" if r is None else (
            "retrained without them still " + ("gives the attacker what they want" if _works(sim, r) else
                                               "resists the attack")
            + f" (clean accuracy {r.clean_accuracy:.1%}"
            + (f", attack success {r.attack_success:.1%})" if r.attack_success is not None else ")"))
        out.append(get_rule(SANITISE_RULE).finding(
            title=f"{sim.attack} at {top.fraction:.1%}: the best detector ({best.detector}) finds "
                  f"{(best.recall or 0):.1%} of the poison", check=check,
            description=f"{best.detector} flagged {best.flagged} records (1.5x the expected rate "
                        f"{best.poison_rate:.1%}) with precision {best.precision or 0:.1%} and recall "
                        f"{best.recall or 0:.1%}; the model {after}.",
            metrics={"attack": sim.attack, "fraction": top.fraction, **best.model_dump(mode="json")}))
    return out
