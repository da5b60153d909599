"""Certification: ``certify(target, x, y, ctx) -> CertificationResult``.

A certifier returns, per input, a prediction and a radius within which that prediction provably
holds (in ε units of the certifier's norm), or abstains. The base enforces once for every
certifier: radii are finite and >= 0, an abstention has radius 0 and prediction -1, predictions
are class indices; and it computes the certified accuracy at any radius — the share of inputs
predicted correctly with a radius at least that large (Cohen et al., 2019, "Certified Adversarial
Robustness via Randomized Smoothing", arXiv:1902.02918).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from bastion.core.arrays import Array
from bastion.core.capability import Configurable, metering
from bastion.core.data import check_label_indices
from bastion.core.registry import Registry
from bastion.core.results import CheckResult
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import Norm
from bastion.errors import BastionRuntimeError

ABSTAIN = -1


class CertificationResult(BaseModel):
    """Per input: the certified prediction (-1 = abstain) and radius (ε units of ``norm``)."""

    certifier: str
    norm: Norm
    y: Array
    prediction: Array
    radius: Array
    queries: int
    seconds: float

    @property
    def abstained(self) -> np.ndarray:
        return self.prediction == ABSTAIN

    def certified_accuracy(self, radius: float = 0.0) -> float:
        """Share of inputs predicted correctly with a certified radius >= ``radius``."""
        return float(np.mean((self.prediction == self.y) & (self.radius >= radius)))

    def curve(self, radii: list[float]) -> list[float]:
        return [self.certified_accuracy(r) for r in radii]

    def record(self, check: CheckResult, radii: list[float]) -> None:
        """Add the certified accuracy at each of ``radii`` and the abstention rate to ``check``."""
        for r, acc in zip(radii, self.curve(radii)):
            check.measure("certified_accuracy", acc, "ratio", certifier=self.certifier, norm=self.norm, radius=r)
        check.measure("abstain_rate", float(np.mean(self.abstained)), "ratio", certifier=self.certifier)


class Certifier(Configurable, ABC):
    """Base of certifiers. Subclasses set ``norm`` and implement ``_certify``."""

    family: ClassVar[str] = "certification"
    norm: ClassVar[Norm] = "l2"
    radii_param: ClassVar[str | None] = None
    """The parameter that lists the radii certified at (IBP's ``eps``), or None: the certify check
    fills it from its radii when it is not given, and its radii from it."""

    def certify(self, target: Target, x: np.ndarray, y: np.ndarray, ctx: RunContext | None = None
                ) -> CertificationResult:
        x = target.input_spec.validate(x)
        y = check_label_indices(y, len(x), target.n_classes)
        rctx = self.run_context(ctx)
        with metering(rctx, target) as meter:
            pred, radius = self._certify(target, x, rctx)
        pred, radius = np.asarray(pred).reshape(-1), np.asarray(radius, np.float64).reshape(-1)
        name = self.label
        if pred.shape != (len(x),) or radius.shape != (len(x),):
            raise BastionRuntimeError(f"certifier '{name}' returned {pred.shape} predictions and {radius.shape} radii "
                                      f"for {len(x)} inputs")
        if not (np.all(np.isfinite(radius)) and np.all(radius >= 0)):
            raise BastionRuntimeError(f"certifier '{name}' returned a negative, NaN or infinite radius")
        if not np.all((pred == ABSTAIN) | ((pred >= 0) & (pred < target.n_classes))):
            raise BastionRuntimeError(f"certifier '{name}' returned predictions that are not class indices or -1")
        if np.any(radius[pred == ABSTAIN] != 0):
            raise BastionRuntimeError(f"certifier '{name}' abstained with a non-zero radius")
        return CertificationResult(certifier=name, norm=self.norm, y=y, prediction=pred.astype(np.int64),
                                   radius=radius, queries=meter.queries, seconds=meter.seconds)

    @abstractmethod
    def _certify(self, target: Target, x: np.ndarray, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        """Per input: a class index or ``ABSTAIN`` (-1), and a certified radius (0 when abstaining)."""


CERTIFIERS: Registry[type[Certifier]] = Registry("certifier", {
    "smoothing": "bastion.certify.smoothing:RandomizedSmoothing",
    "ibp": "bastion.certify.ibp:IntervalBoundPropagation",
})
"""Certifiers by name: bastion's own and those of the ``bastion.certifiers`` entry points."""
