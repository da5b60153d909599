"""Label flipping: the attacker controls the labels of a fraction of the training records
(Biggio, Nelson & Laskov 2012, "Poisoning attacks against support vector machines",
arXiv:1206.6389, take the random flip as their baseline; Xiao et al. 2015 study targeted flips).

- ``random``: records drawn uniformly, each given a uniformly drawn other class;
- ``targeted``: records of class ``source`` drawn uniformly, each relabelled ``target``, so the
  model learns to answer ``target`` for ``source`` inputs (at most every ``source`` record).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from bastion.attacks.poisoning.base import PoisoningAttack, Trigger
from bastion.core.params import Params
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.errors import UsageError


class LabelFlipParams(Params):
    mode: Literal["random", "targeted"] = Field("random", description="random: any record to any other class; "
                                                "targeted: records of class `source` to class `target`.")
    source: int | None = Field(None, ge=0, description="Class index whose records are flipped (targeted).")
    target: int | None = Field(None, ge=0, description="Class index they are flipped to (targeted).")

    @model_validator(mode="after")
    def _classes(self) -> LabelFlipParams:
        if self.mode == "targeted" and (self.source is None or self.target is None or self.source == self.target):
            raise ValueError("mode 'targeted' needs two different class indices, source and target")
        if self.mode == "random" and (self.source is not None or self.target is not None):
            raise ValueError("source and target are for mode 'targeted'")
        return self


class LabelFlip(PoisoningAttack):
    """Flip the labels of ``n_poison`` training records, at random or from one class to another."""

    name = "label-flip"
    Params = LabelFlipParams

    def _poison(self, x: np.ndarray, y: np.ndarray, n_poison: int, threat: ThreatModel, spec: InputSpec,
                ctx: RunContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, Trigger | None]:
        p: LabelFlipParams = self.params  # type: ignore[assignment]
        rng = ctx.rng("records")
        classes = np.unique(y)
        if p.mode == "targeted":
            missing = [c for c in (p.source, p.target) if c not in classes]
            if missing:
                raise UsageError(f"label-flip: class {missing[0]} is not a label of the training data "
                                 f"(labels: {', '.join(map(str, classes))})")
            pool = np.flatnonzero(y == p.source)
            idx = rng.choice(pool, min(n_poison, len(pool)), replace=False)
            y[idx] = p.target
            return x, y, idx, None
        if len(classes) < 2:
            raise UsageError("label-flip: the training data has a single class; there is nothing to flip to")
        idx = rng.choice(len(y), n_poison, replace=False)
        # a uniformly drawn other class: shift the label's position by 1..k-1
        pos = np.searchsorted(classes, y[idx]) + rng.integers(1, len(classes), len(idx))
        y[idx] = classes[pos % len(classes)]
        return x, y, idx, None
