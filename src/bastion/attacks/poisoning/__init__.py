"""Training-time attacks: data poisoning, label flipping, backdoor triggers."""

from bastion.attacks.poisoning.base import PoisonResult, PoisoningAttack, Trigger

__all__ = ["PoisonResult", "PoisoningAttack", "Trigger"]
