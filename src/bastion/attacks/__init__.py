"""Attacks, reachable as classes (``bastion.attacks.PGD``) or by name (``get_attack("pgd")``).

Importing this package imports no attack: each class is imported when first used, so listing the
names (``available_attacks()``) needs neither torch nor any other optional library. Third-party
attacks join through the ``bastion.attacks`` entry points (see :mod:`bastion.core.registry`).
"""

from __future__ import annotations

from typing import Any

from bastion.attacks.base import ATTACKS, Attack, AttackResult, available_attacks, get_attack, register_attack
from bastion.attacks.curve import robustness_curve

# public class name -> registered attack name
_CLASSES = {"FGSM": "fgsm", "PGD": "pgd", "APGD": "apgd", "APGDCE": "apgd-ce", "APGDDLR": "apgd-dlr",
            "APGDT": "apgd-t", "AutoAttack": "auto", "CarliniWagnerL2": "cw", "DeepFool": "deepfool",
            "FAB": "fab", "MinimalEps": "min-eps", "HopSkipJump": "hopskipjump", "Square": "square", "Transfer": "transfer"}

__all__ = ["ATTACKS", "Attack", "AttackResult", "available_attacks", "get_attack", "register_attack",
           "robustness_curve", *_CLASSES]


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        cls = ATTACKS.get_object(_CLASSES[name])
        globals()[name] = cls
        return cls
    raise AttributeError(f"module 'bastion.attacks' has no attribute {name!r}")
