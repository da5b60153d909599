"""Attacks, reachable as classes (``bastion.attacks.PGD``) or by name (``get_attack("pgd")``)."""

from bastion.attacks.base import Attack, AttackResult, available_attacks, get_attack, register_attack
from bastion.attacks.curve import robustness_curve
from bastion.attacks.evasion import FGSM, PGD

__all__ = ["FGSM", "PGD", "Attack", "AttackResult", "available_attacks", "get_attack", "register_attack",
           "robustness_curve"]
