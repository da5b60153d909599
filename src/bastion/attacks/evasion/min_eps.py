"""Per-sample binary search over ε with any fixed-budget attack: the smallest ε at which the attack
succeeds on each input, i.e. the empirical robustness of the model under that attack.

A first run at ``eps_max`` finds the inputs the attack can fool at all; then every such input
bisects its own bracket ``[lo, hi]`` (fails at ``lo``, succeeds at ``hi``) for ``search_steps``
rounds. Midpoints are dyadic fractions of ``eps_max``, so inputs sharing a midpoint are attacked
together in one batch: each round costs at most one attack call per distinct midpoint and
attacks every input once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.attacks.base import Attack, get_attack, register_attack
from bastion.core.targets.base import Target
from bastion.errors import UsageError


@register_attack
class MinimalEps(Attack):
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

    def __init__(self, *, attack: str = "pgd", attack_params: dict[str, Any] | None = None, eps_max: float = 1.0,
                 search_steps: int = 8, eps: float = 0.0, norm: str = "linf", targeted: bool = False,
                 batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, targeted=targeted, batch_size=batch_size, seed=seed)
        if eps_max <= 0 or search_steps < 1:
            raise UsageError(f"eps_max must be > 0 and search_steps >= 1, got {eps_max}, {search_steps}")
        self.attack, self.attack_params = attack, dict(attack_params or {})
        for key in ("eps", "norm", "targeted"):
            if key in self.attack_params:
                raise UsageError(f"attack_params must not set '{key}'; min-eps sets it")
        self.eps_max, self.search_steps = float(eps_max), int(search_steps)
        self._inner = get_attack(attack, **{"seed": self.seed, **self.attack_params, "eps": self.eps_max,
                                            "norm": self.norm, "targeted": self.targeted})
        if self._inner.minimal:
            raise UsageError(f"min-eps needs a fixed-budget attack; '{attack}' is already a minimal attack")
        self.needs_gradients = self._inner.needs_gradients  # type: ignore[misc]
        self.family = self._inner.family  # type: ignore[misc]
        self._bounds: dict[int, tuple[float, float]] = {}

    def _try(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray, eps: float
             ) -> tuple[np.ndarray, np.ndarray]:
        """Run the inner attack at ``eps`` on these inputs; return (x_adv, success)."""
        x_adv = target.input_spec.enforce(x, self._inner.clone(eps=eps)._attack_batch(target, x, goal, rows))
        pred = target.predict_proba(x_adv).argmax(1)
        return x_adv, (pred == goal) if self.targeted else (pred != goal)

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        best = x.copy()
        lo = np.zeros(len(x))
        hi = np.full(len(x), np.inf)
        adv, ok = self._try(target, x, goal, rows, self.eps_max)
        best[ok], hi[ok] = adv[ok], self.eps_max
        lo[~ok] = self.eps_max
        active = np.flatnonzero(ok)
        for _ in range(self.search_steps):
            if len(active) == 0:
                break
            mid = (lo[active] + hi[active]) / 2
            for m in np.unique(mid):
                sel = active[mid == m]
                adv, ok = self._try(target, x[sel], goal[sel], rows[sel], float(m))
                best[sel[ok]], hi[sel[ok]] = adv[ok], m
                lo[sel[~ok]] = m
        for r, a, b in zip(rows, lo, hi, strict=True):
            self._bounds[int(r)] = (float(a), float(b))
        return best

    def _run(self, target: Target, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
        self._bounds = {}
        res = super()._run(target, x, y, **kwargs)
        upper = np.zeros(len(res.y))
        lower = np.zeros(len(res.y))
        for r, (a, b) in self._bounds.items():
            lower[r], upper[r] = a, b
        attacked = np.zeros(len(res.y), bool)
        attacked[list(self._bounds)] = True
        upper[~attacked & ~res.success] = np.inf  # never attacked (interrupted) and not fooled
        res.extra["min_eps"] = upper.tolist()
        res.extra["min_eps_lower"] = lower.tolist()
        resolution = self.eps_max / 2 ** self.search_steps
        res.extra["notes"] = [(f"per-sample binary search over eps in [0, {self.eps_max}] with '{self.attack}', "
                               f"{self.search_steps} bisection steps (resolution {resolution:.3g})")]
        return res
