"""Any Python callable that maps a batch of inputs to class probabilities (or logits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target, as_score_rows, check_width, resolve_output
from bastion.errors import TargetError


class CallableTarget(Target):
    """Wrap ``fn(x: np.ndarray) -> np.ndarray``. With ``output='logits'`` softmax is applied;
    with ``output='probabilities'`` (default) anything that is not a probability row is refused;
    ``'auto'`` decides. ``fn`` is not called when the target is built (it may be a remote service or
    close over the target itself); the declared kind is checked on the first batch it answers:
    logits declared as probabilities (or the reverse) are refused, never silently softmaxed twice.
    Outputs of shape (batch, 1, k) are accepted as (batch, k)."""

    kind = "callable"

    def __init__(self, fn: Callable[[np.ndarray], Any], classes: list[Any], input_spec: InputSpec, *,
                 output: str = "probabilities", name: str = "", query_budget: int | None = None) -> None:
        if not callable(fn):
            raise TargetError(f"expected a callable, got {type(fn).__name__}")
        if output not in ("probabilities", "logits", "auto"):
            raise TargetError(f"output must be 'probabilities', 'logits' or 'auto', not {output!r}")
        super().__init__(classes, input_spec, name=name or getattr(fn, "__name__", "callable"),
                         query_budget=query_budget)
        self.fn, self.output = fn, output
        self._checked = False

    def _scores(self, x: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(self.fn(x), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TargetError(f"{self.name} did not return a numeric array: {exc}") from exc
        out = as_score_rows(out, source=self.name)
        if not self._checked:  # the first answer is the probe
            check_width(out, self.n_classes, source=self.name)
            self.output = resolve_output(self.output, out)
            self._checked = True
        return out

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self._scores(x)
        if self.output == "logits":
            out = out - out.max(axis=1, keepdims=True)
            out = np.exp(out)
            out /= out.sum(axis=1, keepdims=True)
        return out
