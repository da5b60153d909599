"""ThreatModel: what the attacker knows and may do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bastion.errors import UsageError

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")


@dataclass(frozen=True)
class ThreatModel:
    """Knowledge (white/grey/black box), norm and ε (in each feature's own scale), query budget,
    targeted or not, and the poisoning fraction for training-time threats."""

    knowledge: Literal["white", "grey", "black"] = "white"
    norm: Norm = "linf"
    eps: float = 0.1
    query_budget: int | None = None
    targeted: bool = False
    poisoning_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_norm(self.norm)
        check_eps(self.eps)
        if self.query_budget is not None and self.query_budget <= 0:
            raise UsageError(f"query_budget must be positive, got {self.query_budget}")
        if not 0.0 <= self.poisoning_fraction < 1.0:
            raise UsageError(f"poisoning_fraction must be in [0, 1), got {self.poisoning_fraction}")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UsageError(f"norm must be one of {', '.join(NORMS)}, got '{norm}'")
    return norm


def check_eps(eps: float) -> float:
    try:
        eps = float(eps)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"eps must be a number, got {eps!r}") from exc
    if not eps >= 0 or eps == float("inf"):
        raise UsageError(f"eps must be a finite number >= 0, got {eps}")
    return eps
