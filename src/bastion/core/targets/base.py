"""The Target contract: the model under test, whatever framework or transport it lives behind.

Every target answers ``predict_proba(x)`` on numpy arrays, declares its ``classes`` and
``input_spec``, and counts queries. It declares its :class:`Capabilities`, which attacks read
instead of testing adapter classes:

- ``white_box``: ``logits(x)`` on torch tensors, differentiable with respect to the input, so
  gradient attacks stay in torch for every step (:class:`DifferentiableTarget`);
- ``label_only``: the model answers a label, not scores (``predict_proba`` rows are one-hot), so
  score-based attacks cannot work and decision-based ones must be used;
- ``remote``: queries cross a network; they cost, may be rate-limited, and may fail with
  :class:`TargetUnavailable`, after which an attack stops querying and keeps what it has.

A Target never changes the caller's model in place.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bastion.core.run import charge_queries, unmetered
from bastion.core.spec import InputSpec
from bastion.errors import BastionRuntimeError, QueryBudgetExceeded, TargetError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OutputKind = Literal["logits", "probabilities", "auto"]
PROB_ATOL = 1e-3


@dataclass(frozen=True)
class Capabilities:
    """What a target offers an attacker (see the module docstring)."""

    white_box: bool = False
    label_only: bool = False
    remote: bool = False


class TargetUnavailable(BastionRuntimeError):
    """A (remote) target failed to answer a query it should have answered: an endpoint down,
    refusing, or answering garbage after retries. Attacks stop querying and keep partial results."""


class Target(ABC):
    """A classifier under test.

    Parameters
    ----------
    classes: class labels, index ``i`` of a probability row is ``classes[i]``.
    input_spec: shape, bounds and feature constraints of one input.
    name: a human-readable description for reports.
    query_budget: hard limit on the number of inputs sent; exceeding it raises QueryBudgetExceeded.
    """

    white_box: bool = False
    label_only: bool = False
    remote: bool = False
    kind: str = "target"
    randomized: bool | None = None  # declared randomness of the outputs (None: unknown; attacks probe it)

    def __init__(self, classes: list[Any], input_spec: InputSpec, *, name: str = "",
                 query_budget: int | None = None) -> None:
        if len(classes) < 2:
            raise TargetError(f"a classifier needs at least two classes, got {list(classes)}")
        self.classes = list(classes)
        self.input_spec = input_spec
        self.name = name or type(self).__name__
        self.query_budget = query_budget
        self.queries = 0

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(white_box=self.white_box, label_only=self.label_only, remote=self.remote)

    # --- queries -------------------------------------------------------------------------------
    def count_queries(self, n: int) -> None:
        """Add ``n`` inputs to the query counter, refusing to go past the budget."""
        if self.query_budget is not None and self.queries + n > self.query_budget:
            raise QueryBudgetExceeded(
                f"query budget of {self.query_budget} exhausted ({self.queries} spent, {n} more asked)")
        charge_queries(self, n)  # the active run's ledger (bastion.core.run.metered), if any
        self.queries += n

    def reset_queries(self) -> None:
        self.queries = 0

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Queries made inside this block are bastion's own measurements, not the attacker's:
        they are neither counted nor limited by the budget."""
        saved = (self.queries, self.query_budget)
        self.query_budget = None
        try:
            with unmetered(self):
                yield
        finally:
            self.queries, self.query_budget = saved

    # --- predictions ---------------------------------------------------------------------------
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of inputs, shape (n, n_classes)."""
        x = self.input_spec.validate(x)
        self.count_queries(len(x))
        p = np.asarray(self._predict_proba(x), dtype=np.float64)
        return check_probabilities(p, len(x), self.n_classes, source=self.name)

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        """Log-probabilities for a batch, shape (n, n_classes): the scores a score-based attack
        compares. Here the log of ``predict_proba``; a target whose predictions come from logits
        computes them from the logits instead, so that saturated outputs keep their margins."""
        return np.log(np.clip(self.predict_proba(x), np.finfo(np.float64).tiny, None))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class indices (into ``classes``)."""
        return self.predict_proba(x).argmax(axis=1)

    @abstractmethod
    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for validated float32 inputs; subclasses implement this."""

    def adaptive_view(self) -> Target:
        """What a white-box attack takes gradients through: the target itself, unless a defense
        declares an adaptive path (BPDA, EOT; see ``bastion.core.defense``). Predictions always
        come from the target."""
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "white_box": self.white_box,
                "label_only": self.label_only, "remote": self.remote, "classes": [str(c) for c in self.classes], "input": self.input_spec.to_dict()}


class DifferentiableTarget(Target):
    """A white-box target: ``logits`` on torch tensors, differentiable with respect to the input."""

    white_box = True
    device: str = "cpu"

    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or log-probabilities) for a batch on ``self.device``; counts queries."""

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(x), 512):
                xb = torch.from_numpy(x[start:start + 512]).to(self.device)
                out.append(torch.softmax(self._raw_logits(xb), dim=1).double().cpu().numpy())
        return np.concatenate(out)

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        """``log_softmax`` of the logits in float64 when the predictions come from the logits (a float32
        softmax rounds a ×1000-scaled model's probabilities to exactly 0 and 1, and every margin
        computed from them to the same constant); the log of ``predict_proba`` otherwise."""
        if type(self)._predict_proba is not DifferentiableTarget._predict_proba:
            return super().predict_log_proba(x)
        import torch

        x = self.input_spec.validate(x)
        self.count_queries(len(x))
        out = []
        with torch.no_grad():
            for start in range(0, len(x), 512):
                xb = torch.from_numpy(x[start:start + 512]).to(self.device)
                out.append(torch.log_softmax(self._raw_logits(xb).double(), dim=1).cpu().numpy())
        logp = np.concatenate(out)
        if logp.shape != (len(x), self.n_classes) or np.isnan(logp).any() or np.isposinf(logp).any():
            raise TargetError(f"{self.name} returned logits of shape {logp.shape} or NaN/infinite ones; "
                              f"expected ({len(x)}, {self.n_classes}) finite scores")
        return logp

    def _raw_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without counting a query (predict_proba has counted already)."""
        with self.uncounted():
            return self.logits(x)


def check_probabilities(p: np.ndarray, n: int, n_classes: int, *, source: str) -> np.ndarray:
    """Refuse outputs that are not probability rows, with a message that says what to change."""
    if p.ndim != 2 or p.shape != (n, n_classes):
        raise TargetError(f"{source} returned an array of shape {p.shape}; expected ({n}, {n_classes}) probabilities")
    if not np.all(np.isfinite(p)):
        raise TargetError(f"{source} returned NaN or infinite outputs")
    sums = p.sum(axis=1)
    if p.min() < -PROB_ATOL or p.max() > 1 + PROB_ATOL or np.abs(sums - 1).max() > PROB_ATOL:
        raise TargetError(
            f"{source} returned values that are not probabilities (row sums between {sums.min():.3g} and "
            f"{sums.max():.3g}, values in [{p.min():.3g}, {p.max():.3g}])",
            hint="if the model returns logits, declare output='logits' so bastion applies softmax")
    return np.clip(p, 0.0, 1.0)


def looks_like_probabilities(p: np.ndarray) -> bool:
    p = np.asarray(p, np.float64)
    return bool(p.ndim == 2 and p.min() >= -PROB_ATOL and p.max() <= 1 + PROB_ATOL
                and np.abs(p.sum(axis=1) - 1).max() <= PROB_ATOL)


def as_score_rows(out: np.ndarray, *, source: str) -> np.ndarray:
    """Outputs as (batch, k) rows. A model answering (batch, 1, k) (or any shape with one
    non-singleton axis after the batch) is accepted; anything else is refused naming the shape."""
    out = np.asarray(out)
    if out.ndim >= 2 and sum(d != 1 for d in out.shape[1:]) <= 1:
        return out.reshape(out.shape[0], -1)
    raise TargetError(f"{source} returned outputs of shape {tuple(out.shape)}; expected one score per class, "
                      "shape (batch, n_classes)",
                      hint="make the model return class scores of shape (batch, n_classes)")


def resolve_output(output: str | None, probe: np.ndarray) -> str:
    """The output kind of a model, checked against a probe batch of its (batch, k) outputs:
    ``auto`` decides; a declared kind the probe contradicts is refused, so that softmax is never
    applied twice or left out (robust accuracy and severities would silently change)."""
    if output not in ("logits", "probabilities", "auto"):
        raise TargetError(f"output must be 'logits', 'probabilities' or 'auto', not {output!r}")
    if not np.all(np.isfinite(probe)):
        raise TargetError("the model returned NaN or infinite outputs for valid inputs")
    probs = looks_like_probabilities(probe)
    if output == "auto":
        return "probabilities" if probs else "logits"
    if output == "logits" and probs:
        raise TargetError("the model's outputs are already probabilities (each row sums to 1) but output='logits' "
                          "was declared", hint="declare output='probabilities' (or 'auto')")
    if output == "probabilities" and not probs:
        raise TargetError("output='probabilities' was declared but the model's outputs are not probabilities "
                          "(rows do not sum to 1 or leave [0, 1])", hint="declare output='logits' (or 'auto')")
    return output


def probe_batch(spec: InputSpec, n: int = 4) -> np.ndarray:
    """``n`` seeded random inputs inside the spec's bounds (in [-1, 1] where a bound is infinite),
    to check what a model returns before anything is attacked."""
    lo, hi = spec.bounds_arrays()
    lo, hi = np.where(np.isfinite(lo), lo, -1.0), np.where(np.isfinite(hi), hi, 1.0)
    return (lo + (hi - lo) * np.random.default_rng(0).random((n, *spec.shape))).astype(np.float32)


def check_width(probe: np.ndarray, n_classes: int, *, source: str) -> None:
    """Refuse a model whose (batch, k) outputs have another width than its declared classes."""
    if probe.shape[1] != n_classes:
        raise TargetError(f"{source} returned outputs of shape {tuple(probe.shape)}; expected "
                          f"(batch, {n_classes}), one score per declared class",
                          hint="declare one class per output column")
