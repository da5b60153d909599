"""Per-sample binary search over ε with any fixed-budget attack: the smallest ε at which the attack
succeeds on each input, i.e. the empirical robustness of the model under that attack.

A first run at ``eps_max`` finds the inputs the attack can fool at all; then every such input
bisects its own bracket ``[lo, hi]`` (fails at ``lo``, succeeds at ``hi``) for ``search_steps``
rounds. Midpoints are dyadic fractions of ``eps_max``, so inputs sharing a midpoint are attacked
together in one batch: each round costs at most one attack call per distinct midpoint and
attacks every input once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from bastion.attacks.base import AttackParams, AttackResult, AttackRun, EvasionAttack, get_attack, register_attack
from bastion.attacks.evasion.expectation import EOT_DEFAULT, draw_counts, shares
from bastion.core.params import Eps, ParamError
from bastion.core.targets.base import Target


class MinimalEpsParams(AttackParams):
    attack: str = Field("pgd", description="The fixed-budget attack searched over ε (by name).")
    attack_params: dict[str, Any] = Field(default_factory=dict, description="Its parameters (not eps, norm, targeted).")
    eps_max: float = Field(1.0, gt=0, description="Largest ε tried.")
    search_steps: int = Field(8, ge=1, le=60, description="Bisection steps (resolution eps_max / 2^steps).")
    eps: Eps = Field(0.0, description="Ignored: a minimal-perturbation attack.")

    @field_validator("attack_params")
    @classmethod
    def _no_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("eps", "norm", "targeted"):
            if key in v:
                raise ValueError(f"must not set '{key}'; min-eps sets it")
        return v


@register_attack
class MinimalEps(EvasionAttack):
    """Smallest successful ε per input for a fixed-budget attack (``attack`` by name, with ``attack_params``).

    The result's ``extra["min_eps"]`` holds each input's bracket upper bound (``inf`` where the
    attack fails even at ``eps_max``, ``0`` for inputs already misclassified) and
    ``extra["min_eps_lower"]`` the lower bound; ``x_adv`` is the adversarial input found at the
    upper bound, so ``norms`` measure the perturbation actually used.

    >>> import bastion
    >>> attack = bastion.attacks.MinimalEps(attack="pgd", norm="linf", eps_max=0.5, search_steps=7)
    """

    name = "min-eps"
    minimal = True

    Params = MinimalEpsParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._inner = get_attack(self.attack, **{"seed": self.seed, **self.attack_params, "eps": self.eps_max,
                                                 "norm": self.norm, "targeted": self.targeted})
        if self._inner.minimal:
            raise ParamError(f"min-eps needs a fixed-budget attack; '{self.attack}' is already a minimal attack",
                             field="attack")
        self.needs_gradients = self._inner.needs_gradients  # type: ignore[misc]
        self.family = self._inner.family  # type: ignore[misc]

    def _eot(self, target: Target, randomized: bool) -> int:
        """The inner attack's EOT draws (its own ``eot_iter``, or the default)."""
        return self._inner._eot(target, randomized)

    def _begin(self, run: AttackRun, target: Target) -> None:
        run.state = _Search(run.derive(self._inner.name))
        self._inner._begin(run.state.inner, target)

    def _try(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray, eps: float, run: AttackRun
             ) -> tuple[np.ndarray, np.ndarray]:
        """Run the inner attack at ``eps`` on these inputs; return (x_adv, success)."""
        inner = self._inner.clone(eps=eps)
        x_adv = target.input_spec.enforce(x, inner._attack_batch(target, x, goal, rows, run.state.inner))
        if run.expectation:  # randomised: succeeds at eps when fooled on most of EOT_DEFAULT draws
            counts = draw_counts(target, x_adv, EOT_DEFAULT, self.batch_size, counted=True)
            return x_adv, shares(counts, goal, goal, self.targeted)[1] > 0.5
        pred = target.predict_proba(x_adv).argmax(1)
        return x_adv, (pred == goal) if self.targeted else (pred != goal)

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        best = x.copy()
        lo = np.zeros(len(x))
        hi = np.full(len(x), np.inf)
        adv, ok = self._try(target, x, goal, rows, self.eps_max, run)
        best[ok], hi[ok] = adv[ok], self.eps_max
        lo[~ok] = self.eps_max
        active = np.flatnonzero(ok)
        for _ in range(self.search_steps):
            if len(active) == 0:
                break
            mid = (lo[active] + hi[active]) / 2
            for m in np.unique(mid):
                sel = active[mid == m]
                adv, ok = self._try(target, x[sel], goal[sel], rows[sel], float(m), run)
                best[sel[ok]], hi[sel[ok]] = adv[ok], m
                lo[sel[~ok]] = m
        for r, a, b in zip(rows, lo, hi, strict=True):
            run.state.bounds[int(r)] = (float(a), float(b))
        run.stop = run.stop or run.state.inner.stop  # e.g. a black-box inner attack out of budget
        return best

    def _end(self, run: AttackRun, res: AttackResult) -> None:
        bounds = run.state.bounds
        upper = np.zeros(len(res.y))
        lower = np.zeros(len(res.y))
        for r, (a, b) in bounds.items():
            lower[r], upper[r] = a, b
        attacked = np.zeros(len(res.y), bool)
        attacked[list(bounds)] = True
        upper[~attacked & ~res.success] = np.inf  # never attacked (interrupted) and not fooled
        res.extra["min_eps"] = upper.tolist()
        res.extra["min_eps_lower"] = lower.tolist()
        resolution = self.eps_max / 2 ** self.search_steps
        res.extra["notes"] = [(f"per-sample binary search over eps in [0, {self.eps_max}] with '{self.attack}', "
                               f"{self.search_steps} bisection steps (resolution {resolution:.3g})")]


@dataclass
class _Search:
    inner: AttackRun
    bounds: dict[int, tuple[float, float]] = field(default_factory=dict)
