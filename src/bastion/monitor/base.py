"""Detectors: ``update(window) -> alerts`` and ``reset()``, the same object offline and online.

A detector watches windows of production traffic (a batch of inputs, or of inputs and outputs)
for drift, query abuse or adversarial inputs. It is fitted once on reference data (``fit``), then
fed windows one after another; the state carried between windows lives in one object made by
``_initial_state`` and cleared by ``reset``, so ``scan(windows)`` over a recorded stream (offline)
gives exactly the alerts that feeding the same windows to ``update`` one by one gives (online, in
the guard). The base numbers the windows, validates each one and enforces that every alert's
score is finite and at or above its threshold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from bastion.core.capability import Configurable
from bastion.core.registry import Registry
from bastion.errors import BastionRuntimeError, DataError, UsageError


class Alert(BaseModel):
    """A detector's alert: which window, how strong (``score`` >= ``threshold``), which records of
    the window (empty: the window as a whole), and a message in plain words."""

    detector: str
    window: int = -1
    score: float
    threshold: float
    records: list[int] = Field(default_factory=list)
    message: str = ""


class Detector(Configurable, ABC):
    """Base of detectors. Subclasses implement ``_fit``, ``_initial_state`` and ``_update``."""

    family: ClassVar[str] = "detector"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.reference_: Any = None
        self._state: Any = None
        self._windows = 0

    def fit(self, reference: np.ndarray) -> Detector:
        """Learn what normal traffic looks like; clears the window state."""
        self.reference_ = self._fit(self._window(reference, "reference"))
        return self.reset()

    def reset(self) -> Detector:
        """Forget every window seen (the fit is kept)."""
        self._state, self._windows = self._initial_state(), 0
        return self

    def update(self, window: np.ndarray) -> list[Alert]:
        """Feed the next window; the alerts it raises (numbered by window, from 0 after a reset)."""
        if self.reference_ is None:
            raise UsageError(f"detector '{self.label}' is not fitted", hint="call fit(reference) first")
        w = self._window(window, f"window {self._windows}")
        alerts = self._update(w, self._state)
        for a in alerts:
            if not (np.isfinite(a.score) and a.score >= a.threshold):
                raise BastionRuntimeError(f"detector '{self.label}' raised an alert with score {a.score} below its "
                                          f"threshold {a.threshold}")
            if any(r < 0 or r >= len(w) for r in a.records):
                raise BastionRuntimeError(f"detector '{self.label}' named records outside its window of {len(w)}")
        out = [a.model_copy(update={"detector": self.label, "window": self._windows}) for a in alerts]
        self._windows += 1
        return out

    def scan(self, windows: Iterable[np.ndarray]) -> list[Alert]:
        """Offline: reset, then feed every window of a recorded stream; all the alerts in order."""
        self.reset()
        return [a for w in windows for a in self.update(w)]

    @staticmethod
    def _window(x: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype == object or not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{what}: numeric arrays are required, got dtype {a.dtype}")
        if a.ndim == 0 or len(a) == 0:
            raise DataError(f"{what} is empty")
        if not np.all(np.isfinite(a)):
            raise DataError(f"{what} contains NaN or infinite values")
        return a.reshape(len(a), -1).astype(np.float64)

    @abstractmethod
    def _fit(self, reference: np.ndarray) -> Any:
        """A summary of the reference data (n, features) that ``_update`` compares windows with."""

    @abstractmethod
    def _initial_state(self) -> Any:
        """The state carried from window to window, as it is before any window."""

    @abstractmethod
    def _update(self, window: np.ndarray, state: Any) -> list[Alert]:
        """Alerts for ``window`` (n, features), updating ``state`` in place; ``self.reference_`` is
        the fit. Leave ``detector`` and ``window`` of the alerts to the base."""


DETECTORS: Registry[type[Detector]] = Registry("detector", {
    "prada": "bastion.monitor.extraction:Prada",
    "query-distribution": "bastion.monitor.extraction:QueryDistribution",
    "query-coverage": "bastion.monitor.extraction:QueryCoverage",
    "strip": "bastion.monitor.strip:STRIP",
    "feature-squeezing": "bastion.monitor.adversarial:FeatureSqueezing",
    "mahalanobis": "bastion.monitor.adversarial:Mahalanobis",
})
"""Detectors by name: bastion's own (the extraction detectors of :mod:`bastion.monitor.extraction`,
STRIP, the adversarial-input detectors of :mod:`bastion.monitor.adversarial`) and those of the
``bastion.detectors`` entry points."""
