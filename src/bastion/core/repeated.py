"""Randomised answers averaged over repeated queries: EOT for attacks that read scores.

A model that draws fresh randomness at every query (``output-noise``, a target declared
``randomized``) hides its scores only from an attacker who asks once: one who sends each input
``k`` times and averages the ``k`` probability rows divides the noise's variance by ``k`` — the
expectation over the randomness (EOT) of Athalye, Engstrom, Ilyas & Kwok (2018, arXiv:1707.07397),
taken over answers instead of gradients. Membership inference, attribute inference and model
extraction ask through a :class:`RepeatedQueries` view whenever :func:`query_repeats` says the
target is randomised, so a randomised defense is credited with what it hides from that attacker
(a figure must hold against the strongest attack known; randomised models in expectation).

How many repeats is decided where the evasion attacks decide their EOT draws: a randomised
defense declares them (``TargetDefense.randomized`` and ``AdaptivePath.eot_samples``); another
target declared randomised (``target.randomized``), or a local one found randomised by two
identical calls, gets :data:`REPEATS_DEFAULT`; a deterministic target is asked once (no query
wasted). Every repeat is a query of the target: counted, within its budget and, for an HTTP
target, its batching and rate limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import numpy as np
from pydantic import Field

from bastion.core.defense import DefendedTarget
from bastion.core.targets.base import Target
from bastion.errors import UsageError

#: Repeats per input on a randomised target that declares no EOT draws of its own.
REPEATS_DEFAULT = 16
PROBE_INPUTS = 16
Repeats = Annotated[int | None, Field(ge=1, le=1024, description=(
    "Queries per input averaged on a randomised target (EOT over its answers, each repeat counted); None: the "
    "draws its randomised defense declares (eot_samples), 16 on another randomised target, 1 on a deterministic "
    "one."))]
"""The ``repeats`` parameter of every attack that reads a model's scores."""
_ROWS = 1024  # rows of one call to the target (inputs times repeats)


def probe_randomized(target: Target, x: np.ndarray, *, atol: float = 1e-6) -> bool:
    """Whether two identical calls on (up to 16 of) the inputs give different probabilities: a
    cheap probe, uncounted (bastion's own measurement)."""
    xs = x[:PROBE_INPUTS]
    with target.uncounted():
        a, b = target.predict_proba(xs), target.predict_proba(xs)
    return bool(np.abs(a - b).max() > atol) if len(xs) else False


def declared_draws(target: Target) -> int:
    """The most EOT draws declared by a randomised defense on ``target`` (any layer); 1 if none."""
    draws = 1
    while isinstance(target, DefendedTarget):
        if target.defense.randomized:
            draws = max(draws, target.path.eot_samples)
        target = target.inner
    return draws


def query_repeats(target: Target, chosen: int | None, x: np.ndarray | None = None) -> int:
    """Queries per input an attack averages on ``target``: ``chosen`` when given; else the draws its
    randomised defenses declare; else :data:`REPEATS_DEFAULT` on a target declared randomised, or
    on a local one of undeclared randomness whose answers to ``x`` change between two calls; else 1."""
    if chosen is not None:
        if int(chosen) < 1:
            raise UsageError(f"repeats must be >= 1, got {chosen}")
        return int(chosen)
    if (draws := declared_draws(target)) > 1:
        return draws
    randomized = target.randomized
    if randomized is None:
        randomized = x is not None and not target.remote and probe_randomized(target, x)
    return REPEATS_DEFAULT if randomized else 1


class RepeatedQueries(Target):
    """``base`` as an attacker who repeats every query sees it: each input sent ``repeats`` times
    (copies in the same batches) and the answers averaged (probabilities; log-probabilities by
    log-mean-exp, so saturated answers keep their margins). Queries, budget and uncounted blocks
    are the base's: one input costs ``repeats`` queries."""

    kind = "repeated"

    def __init__(self, base: Target, repeats: int) -> None:
        if int(repeats) < 1:
            raise UsageError(f"repeats must be >= 1, got {repeats}")
        super().__init__(base.classes, base.input_spec, name=f"mean of {repeats} queries ({base.name})")
        self.base, self.repeats = base, int(repeats)
        self.label_only, self.remote, self.randomized = base.label_only, base.remote, base.randomized

    def _asked(self, x: np.ndarray, log: bool) -> np.ndarray:
        x = self.input_spec.validate(x)
        k, per = self.repeats, max(1, _ROWS // self.repeats)
        out = []
        for s in range(0, len(x), per):
            xb = x[s:s + per]
            rep = np.concatenate([xb] * k)
            if log:
                lp = np.asarray(self.base.predict_log_proba(rep), np.float64).reshape(k, len(xb), -1)
                top = lp.max(0)
                out.append(top + np.log(np.exp(lp - top).mean(0)))
            else:
                out.append(np.asarray(self.base.predict_proba(rep), np.float64).reshape(k, len(xb), -1).mean(0))
        return np.concatenate(out) if out else np.zeros((0, self.n_classes))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self._asked(x, log=False)

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        return self._asked(x, log=True)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - predict_proba asks the base
        return self.predict_proba(x)

    # --- queries are the base's -------------------------------------------------------------------
    def count_queries(self, n: int) -> None:
        self.base.count_queries(n)

    @property  # type: ignore[override]
    def queries(self) -> int:
        return self.base.queries

    @queries.setter
    def queries(self, value: int) -> None:  # Target.__init__ sets it; the base target owns it
        pass

    @property  # type: ignore[override]
    def query_budget(self) -> int | None:
        return self.base.query_budget

    @query_budget.setter
    def query_budget(self, value: int | None) -> None:  # Target.__init__ sets it; the base target owns it
        pass

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        with self.base.uncounted():
            yield

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "repeats": self.repeats, "base": self.base.describe()}


def asked(target: Target, repeats: int) -> Target:
    """``target`` as an attacker who repeats each query ``repeats`` times sees it (itself for 1)."""
    return RepeatedQueries(target, repeats) if repeats > 1 else target


def query_cost(target: Target) -> int:
    """Queries one input costs through ``target``: its repeats for a :class:`RepeatedQueries`, else 1."""
    return target.repeats if isinstance(target, RepeatedQueries) else 1
