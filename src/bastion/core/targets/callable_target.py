"""Any Python callable that maps a batch of inputs to class probabilities (or logits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target, as_score_rows, check_width, probe_batch, resolve_output
from bastion.errors import TargetError


class CallableTarget(Target):
    """Wrap ``fn(x: np.ndarray) -> np.ndarray``. With ``output='logits'`` softmax is applied;
    with ``output='probabilities'`` (default) anything that is not a probability row is refused;
    ``'auto'`` decides. The declared kind is checked on a probe batch when the target is built:
    logits declared as probabilities (or the reverse) are refused, never silently softmaxed twice.
    Outputs of shape (batch, 1, k) are accepted as (batch, k)."""

    kind = "callable"

    def __init__(self, fn: Callable[[np.ndarray], Any], classes: list[Any], input_spec: InputSpec, *,
                 output: str = "probabilities", name: str = "", query_budget: int | None = None) -> None:
        if not callable(fn):
            raise TargetError(f"expected a callable, got {type(fn).__name__}")
        super().__init__(classes, input_spec, name=name or getattr(fn, "__name__", "callable"),
                         query_budget=query_budget)
        self.fn = fn
        probe = self._scores(probe_batch(input_spec))
        check_width(probe, self.n_classes, source=self.name)
        self.output = resolve_output(output, probe)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(self.fn(x), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TargetError(f"{self.name} did not return a numeric array: {exc}") from exc
        return as_score_rows(out, source=self.name)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self._scores(x)
        if self.output == "logits":
            out = out - out.max(axis=1, keepdims=True)
            out = np.exp(out)
            out /= out.sum(axis=1, keepdims=True)
        return out
