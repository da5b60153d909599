"""Training-time attacks: data poisoning, label flipping, backdoor triggers, and the detectors of
poisoned training records (docs/poisoning.md)."""

from bastion.attacks.poisoning.base import (
    POISONING_ATTACKS,
    PoisoningAttack,
    PoisonResult,
    Trigger,
    get_poisoning_attack,
)

__all__ = ["POISONING_ATTACKS", "PoisonResult", "PoisoningAttack", "Trigger", "get_poisoning_attack"]
