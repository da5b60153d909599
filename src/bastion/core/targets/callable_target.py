"""Any Python callable that maps a batch of inputs to class probabilities (or logits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target
from bastion.errors import TargetError


class CallableTarget(Target):
    """Wrap ``fn(x: np.ndarray) -> np.ndarray``. With ``output='logits'`` softmax is applied;
    with ``output='probabilities'`` (default) anything that is not a probability row is refused."""

    kind = "callable"

    def __init__(self, fn: Callable[[np.ndarray], Any], classes: list[Any], input_spec: InputSpec, *,
                 output: str = "probabilities", name: str = "", query_budget: int | None = None) -> None:
        if not callable(fn):
            raise TargetError(f"expected a callable, got {type(fn).__name__}")
        if output not in ("probabilities", "logits"):
            raise TargetError(f"output must be 'probabilities' or 'logits', not {output!r}")
        super().__init__(classes, input_spec, name=name or getattr(fn, "__name__", "callable"),
                         query_budget=query_budget)
        self.fn, self.output = fn, output

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(x), dtype=np.float64)
        if self.output == "logits":
            out = out - out.max(axis=1, keepdims=True)
            out = np.exp(out)
            out /= out.sum(axis=1, keepdims=True)
        return out
