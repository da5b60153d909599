"""Data poisoning and backdoors: ``poison(train, threat, ctx) -> PoisonResult``.

An algorithm returns the poisoned training set, the indices of the poisoned records and, for a
backdoor, the trigger that activates it (Gu et al., 2017, "BadNets", arXiv:1708.06733). The base
enforces once for every algorithm what the threat model allows: at most ``poisoning_fraction`` of
the returned set is poison; every record not listed as poison is the original record, unchanged
and in place (injected records come after the originals); every record lies within the input spec
(the attacker writes valid records); clean-label attacks keep the labels of the records they
change; a backdoor declares its trigger. Labels are class indices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from bastion.core.arrays import Array
from bastion.core.capability import Configurable, metering
from bastion.core.data import Dataset
from bastion.core.registry import Registry
from bastion.core.results import CheckResult
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.errors import BastionError, BastionRuntimeError, UsageError


class Trigger(BaseModel):
    """A backdoor trigger: ``apply(x) = x * (1 - mask) + pattern * mask`` makes the poisoned
    model predict ``target_class``."""

    mask: Array
    pattern: Array
    target_class: Any

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return (x * (1 - self.mask) + self.pattern * self.mask).astype(np.float32)


class PoisonResult(BaseModel):
    """The poisoned training set (originals first, injected records after them), which of its
    records are poison, and the trigger of a backdoor."""

    attack: str
    x: Array
    y: Array
    poison_indices: Array
    fraction: float
    trigger: Trigger | None = None
    seconds: float

    def dataset(self, name: str = "poisoned") -> Dataset:
        return Dataset(self.x, self.y, name=name)

    def record(self, check: CheckResult) -> None:
        check.measure("poison_fraction", self.fraction, "ratio", attack=self.attack)
        check.measure("poisoned_records", len(self.poison_indices), "count", attack=self.attack)


class PoisoningAttack(Configurable, ABC):
    """Base of poisoning attacks. Subclasses implement ``_poison``; ``clean_label`` attacks may not
    change labels, ``backdoor`` attacks must return a trigger."""

    family: ClassVar[str] = "poisoning"
    clean_label: ClassVar[bool] = False
    backdoor: ClassVar[bool] = False

    def poison(self, train: Dataset, threat: ThreatModel | None = None, ctx: RunContext | None = None, *,
               spec: InputSpec | None = None) -> PoisonResult:
        """Poison ``train`` (labels as class indices) within ``threat.poisoning_fraction``; ``spec``
        (default: the shape of the data, unbounded) is what a valid record is: a trigger stays
        within its bounds and constraints."""
        threat = threat or ThreatModel()
        if threat.poisoning_fraction <= 0:
            raise UsageError(f"poisoning attack '{self.label}' needs a threat with poisoning_fraction > 0",
                             hint="set threat.poisoning_fraction, e.g. 0.05")
        x0, y0 = np.asarray(train.x), np.asarray(train.y)
        spec = spec or InputSpec(shape=x0.shape[1:], lower=-np.inf, upper=np.inf)
        x0 = spec.validate(x0, what=f"training data of poisoning attack '{self.label}'")
        rctx = self.run_context(ctx)
        with metering(rctx) as meter:
            x, y, idx, trigger = self._poison(x0.copy(), y0.copy(), int(threat.poisoning_fraction * len(x0)), threat,
                                              spec, rctx)
        x, y, idx = np.asarray(x), np.asarray(y).reshape(-1), np.unique(np.asarray(idx, np.int64))
        self._check(x0, y0, x, y, idx, threat.poisoning_fraction, trigger)
        try:
            spec.validate(x, what="poisoned records")
        except BastionError as exc:
            raise BastionRuntimeError(f"poisoning attack '{self.label}' wrote records outside the input spec: "
                                      f"{exc.message}") from exc
        return PoisonResult(attack=self.label, x=x, y=y, poison_indices=idx, fraction=len(idx) / len(x),
                            trigger=trigger, seconds=meter.seconds)

    def goal(self) -> tuple[np.ndarray, int] | None:
        """For an attack aimed at chosen inputs (clean-label feature collision): those inputs and
        the class the attacker wants them answered as; None for the others."""
        return None

    def _check(self, x0: np.ndarray, y0: np.ndarray, x: np.ndarray, y: np.ndarray, idx: np.ndarray,
               fraction: float, trigger: Trigger | None) -> None:
        def fail(what: str) -> BastionRuntimeError:
            return BastionRuntimeError(f"poisoning attack '{self.label}' {what}")

        n0, n = len(x0), len(x)
        if x.shape[1:] != x0.shape[1:] or len(y) != n or n < n0:
            raise fail(f"returned {x.shape} inputs and {len(y)} labels for a training set of {x0.shape}")
        if len(idx) and (idx[0] < 0 or idx[-1] >= n):
            raise fail(f"listed poison indices outside [0, {n - 1}]")
        if len(idx) > fraction * n + 1e-9:
            raise fail(f"poisoned {len(idx)} of {n} records, over the threat's poisoning_fraction of {fraction}")
        clean = np.setdiff1d(np.arange(n0), idx)
        if not (np.array_equal(x[clean], x0[clean]) and np.array_equal(y[clean], y0[clean])):
            raise fail("changed records it did not list as poison")
        if n > n0 and not np.isin(np.arange(n0, n), idx).all():
            raise fail("injected records it did not list as poison")
        if self.clean_label and not np.array_equal(y[idx[idx < n0]], y0[idx[idx < n0]]):
            raise fail("is a clean-label attack but changed labels")
        if self.backdoor and trigger is None:
            raise fail("is a backdoor attack but returned no trigger")

    @abstractmethod
    def _poison(self, x: np.ndarray, y: np.ndarray, n_poison: int, threat: ThreatModel, spec: InputSpec,
                ctx: RunContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, Trigger | None]:
        """The poisoned inputs and labels (copies, safe to change), the poison indices (at most
        ``n_poison`` records changed in place, or injected after the originals within the same
        fraction) and the trigger of a backdoor (None otherwise)."""


_HERE = "bastion.attacks.poisoning"
POISONING_ATTACKS: Registry[type[PoisoningAttack]] = Registry("poisoning attack", {
    "label-flip": f"{_HERE}.label_flip:LabelFlip",
    "badnets": f"{_HERE}.backdoor:BadNets",
    "blended": f"{_HERE}.backdoor:Blended",
    "table-trigger": f"{_HERE}.backdoor:TableTrigger",
    "feature-collision": f"{_HERE}.feature_collision:FeatureCollision",
}, group="bastion.poisoning_attacks")
"""Poisoning attacks by name: bastion's own and those of the ``bastion.poisoning_attacks`` entry points."""


def get_poisoning_attack(name: str, **params: Any) -> PoisoningAttack:
    """Build a registered poisoning attack by name, validating its parameters."""
    return POISONING_ATTACKS.get_object(name)(**params)
