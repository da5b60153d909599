"""Attacks, reachable as classes (``bastion.attacks.PGD``) or by name (``get_attack("pgd")``)."""

from bastion.attacks.base import Attack, AttackResult, available_attacks, get_attack, register_attack
from bastion.attacks.curve import robustness_curve
from bastion.attacks.evasion import FGSM, PGD
from bastion.attacks.evasion import APGD, APGDCE, APGDDLR, APGDT, AutoAttack, CarliniWagnerL2, DeepFool, MinimalEps
from bastion.attacks.evasion import HopSkipJump, Square, Transfer

__all__ = ["FGSM", "PGD", "Attack", "AttackResult", "available_attacks", "get_attack", "register_attack",
           "robustness_curve"]
__all__ += ["APGD", "APGDCE", "APGDDLR", "APGDT", "AutoAttack", "CarliniWagnerL2", "DeepFool", "MinimalEps"]
__all__ += ["HopSkipJump", "Square", "Transfer"]
