"""Evasion attacks. Importing this package registers them by name."""

from bastion.attacks.evasion.fgsm import FGSM
from bastion.attacks.evasion.pgd import PGD
from bastion.attacks.evasion.apgd import APGD, APGDCE, APGDDLR, APGDT
from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.min_eps import MinimalEps
from bastion.attacks.evasion.square import Square
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.transfer import Transfer

__all__ = ["FGSM", "PGD"]
__all__ += ["APGD", "APGDCE", "APGDDLR", "APGDT", "AutoAttack", "CarliniWagnerL2", "DeepFool", "MinimalEps"]
__all__ += ["HopSkipJump", "Square"]
__all__ += ["Transfer"]
