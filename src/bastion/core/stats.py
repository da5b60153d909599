"""Exact tests and intervals on counts (no SciPy needed): the binomial tail, the Clopper–Pearson
interval (Clopper & Pearson 1934) and the exact one-sided McNemar test on discordant pairs
(McNemar 1947). Used wherever a finding rests on "k of n inputs", so it can say how sure it is."""

from __future__ import annotations

import math
from collections.abc import Callable


def _check(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space."""
    _check(k, n)
    if k == 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    _check(k, n)
    return 1.0 if k == n else 1.0 - binom_sf(k + 1, n, p)


def _solve(f: Callable[[float], float], target: float, increasing: bool) -> float:
    """The p in [0, 1] where the monotone function ``f(p)`` crosses ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        above = f(mid) > target
        if above == increasing:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided confidence interval for a proportion observed as ``k`` of ``n``."""
    _check(k, n)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else _solve(lambda p: binom_sf(k, n, p), a, increasing=True)
    hi = 1.0 if k == n else _solve(lambda p: binom_cdf(k, n, p), a, increasing=False)
    return lo, hi


def mcnemar_greater(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that outcome B beats outcome A: ``b`` pairs where only B
    succeeded, ``c`` where only A did. Under H0 (equally strong) ``b ~ Binomial(b + c, 1/2)``."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    return binom_sf(b, b + c, 0.5)


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = 1.959964) -> tuple[float, float]:
    """An approximate 95 % interval of a ROC AUC measured on ``n_pos`` positives and ``n_neg``
    negatives, from Hanley & McNeil's (1982) standard error, clipped to [0, 1]."""
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"need positives and negatives, got {n_pos} and {n_neg}")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)
