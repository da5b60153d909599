"""Evasion attacks. Importing this package registers them by name."""

from bastion.attacks.evasion.fgsm import FGSM
from bastion.attacks.evasion.pgd import PGD

__all__ = ["FGSM", "PGD"]
