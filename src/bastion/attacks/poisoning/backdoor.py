"""Backdoors: a trigger pattern written into a fraction of the training records, relabelled to the
attacker's class, so that the trained model answers that class whenever the trigger is present
and behaves normally otherwise.

- :class:`BadNets` (Gu, Dolan-Gavitt & Garg 2017, "BadNets", arXiv:1708.06733): a small
  checkerboard patch in a corner of an image;
- :class:`Blended` (Chen, Liu, Li, Lu & Song 2017, "Targeted backdoor attacks on deep learning
  systems using data poisoning", arXiv:1712.05526): a fixed random pattern blended into the whole
  image, ``(1 - alpha) x + alpha pattern``;
- :class:`TableTrigger`: chosen values of a few features of a table, each checked against the
  input spec (bounds, integer and one-hot features, features the attacker may not change).

The poisoned records are drawn from those not already of the target class and changed in place;
a trigger's values come from the spec's bounds where they are finite, else from the extremes of
the training data.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import numpy as np
from pydantic import Field

from bastion.attacks.poisoning.base import PoisoningAttack, Trigger
from bastion.core.params import Number, Params
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.errors import UsageError


class BackdoorParams(Params):
    target_class: int = Field(0, ge=0, description="Class index the trigger makes the model answer.")


class Backdoor(PoisoningAttack):
    """Base of dirty-label backdoors: ``_trigger`` gives the mask and pattern."""

    backdoor = True
    Params = BackdoorParams

    def _poison(self, x: np.ndarray, y: np.ndarray, n_poison: int, threat: ThreatModel, spec: InputSpec,
                ctx: RunContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, Trigger | None]:
        target = self.params.target_class  # type: ignore[attr-defined]
        if target not in np.unique(y):
            raise UsageError(f"{self.label}: target_class {target} is not a label of the training data "
                             f"(labels: {', '.join(map(str, np.unique(y)))})")
        mask, pattern = self._trigger(x, spec, ctx)
        trigger = Trigger(mask=mask.astype(np.float32), pattern=pattern.astype(np.float32), target_class=target)
        pool = np.flatnonzero(y != target)
        idx = np.sort(ctx.rng("records").choice(pool, min(n_poison, len(pool)), replace=False))
        x[idx] = trigger.apply(x[idx])
        y[idx] = target
        return x, y, idx, trigger

    @abstractmethod
    def _trigger(self, x: np.ndarray, spec: InputSpec, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        """The trigger's mask and pattern, each of the per-sample shape."""


def value_range(x: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature low and high values a trigger may use: the spec's bounds where finite, else the
    training data's minimum and maximum."""
    lo, hi = spec.bounds_arrays()
    return np.where(np.isfinite(lo), lo, x.min(axis=0)), np.where(np.isfinite(hi), hi, x.max(axis=0))


def _image_axes(x: np.ndarray, attack: str) -> tuple[int, int]:
    if x.ndim < 3:
        raise UsageError(f"{attack} writes a trigger into images of shape (H, W) or (C, H, W); these records have "
                         f"shape {x.shape[1:]}", hint="reshape the images, or use table-trigger for tables")
    return x.shape[-2], x.shape[-1]


class BadNetsParams(BackdoorParams):
    size: int = Field(3, ge=1, description="Side of the square patch, in pixels.")
    corner: Literal["bottom-right", "bottom-left", "top-right", "top-left"] = Field(
        "bottom-right", description="Where the patch sits.")


class BadNets(Backdoor):
    """A checkerboard patch of the highest and lowest pixel values in a corner of the image."""

    name = "badnets"
    Params = BadNetsParams

    def _trigger(self, x: np.ndarray, spec: InputSpec, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        p: BadNetsParams = self.params  # type: ignore[assignment]
        h, w = _image_axes(x, self.label)
        if p.size > min(h, w):
            raise UsageError(f"badnets: size={p.size} is larger than the {h}x{w} images")
        lo, hi = value_range(x, spec)
        rows = slice(h - p.size, h) if p.corner.startswith("bottom") else slice(0, p.size)
        cols = slice(w - p.size, w) if p.corner.endswith("right") else slice(0, p.size)
        mask = np.zeros(x.shape[1:], np.float32)
        mask[..., rows, cols] = 1.0
        checker = (np.add.outer(np.arange(h), np.arange(w)) % 2 == 0)
        pattern = np.where(np.broadcast_to(checker, x.shape[1:]), hi, lo) * mask
        return mask, pattern


class BlendedParams(BackdoorParams):
    alpha: Number = Field(0.2, gt=0, le=1, description="Blend ratio of the pattern.")


class Blended(Backdoor):
    """A fixed uniformly random pattern (drawn from the run's seed) blended into the whole image."""

    name = "blended"
    Params = BlendedParams

    def _trigger(self, x: np.ndarray, spec: InputSpec, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        _image_axes(x, self.label)
        lo, hi = value_range(x, spec)
        pattern = lo + ctx.rng("pattern").random(x.shape[1:]) * (hi - lo)
        return np.full(x.shape[1:], self.params.alpha, np.float32), pattern  # type: ignore[attr-defined]


class TableTriggerParams(BackdoorParams):
    features: dict[str, float] | None = Field(
        None, description="Feature name (or column index) -> the value the trigger sets; a one-hot column set to 1 "
                          "selects its category. Default: `n_features` features drawn at random, each set to its "
                          "highest value.")
    n_features: int = Field(3, ge=1, description="Features of the default trigger.")


class TableTrigger(Backdoor):
    """Chosen values of a few features: every value checked against the input spec."""

    name = "table-trigger"
    Params = TableTriggerParams

    def _trigger(self, x: np.ndarray, spec: InputSpec, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        p: TableTriggerParams = self.params  # type: ignore[assignment]
        if x.ndim != 2:
            raise UsageError(f"table-trigger sets features of table rows; these records have shape {x.shape[1:]}",
                             hint="use badnets or blended for images")
        d = x.shape[1]
        names = [f.name for f in spec.features] if spec.features else [str(j) for j in range(d)]
        feats = spec.features
        lo, hi = value_range(x, spec)
        mutable = spec.mutable_mask().astype(bool)
        mask, pattern = np.zeros(d, np.float32), np.zeros(d, np.float32)
        chosen = dict(p.features) if p.features is not None else None
        if chosen is None:
            free = [j for j in range(d) if mutable[j] and (feats is None or feats[j].kind != "categorical")]
            if len(free) < p.n_features:
                raise UsageError(f"table-trigger: {len(free)} features the attacker may change (numeric, mutable), "
                                 f"fewer than n_features={p.n_features}")
            picks = np.sort(ctx.rng("features").choice(free, p.n_features, replace=False))
            chosen = {names[j]: float(hi[j]) for j in picks}
        for name, value in chosen.items():
            if name not in names:
                raise UsageError(f"table-trigger: unknown feature '{name}'", hint=f"features: {', '.join(names[:20])}")
            j = names.index(name)
            if not mutable[j]:
                raise UsageError(f"table-trigger: feature '{name}' is immutable in the input spec; a trigger may "
                                 "only set features the attacker can change")
            if not lo[j] - 1e-6 <= value <= hi[j] + 1e-6:
                raise UsageError(f"table-trigger: {name}={value:g} is outside the feature's range "
                                 f"[{lo[j]:g}, {hi[j]:g}]")
            f = feats[j] if feats else None
            if f is not None and f.kind != "continuous" and value != round(value):
                raise UsageError(f"table-trigger: feature '{name}' is {f.kind}; {value:g} is not a whole number")
            if f is not None and f.group:
                if value != 1:
                    raise UsageError(f"table-trigger: '{name}' is a one-hot column of '{f.group}'; set it to 1 to "
                                     "select its category")
                group = [k for k, g in enumerate(feats or []) if g.group == f.group]
                if pattern[group].any():
                    raise UsageError(f"table-trigger: two columns of the one-hot group '{f.group}' set to 1")
                mask[group] = 1.0  # the other columns of the group become 0
            mask[j], pattern[j] = 1.0, value
        return mask, pattern
