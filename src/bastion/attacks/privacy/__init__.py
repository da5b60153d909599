"""Privacy attacks: membership inference, attribute inference and model inversion."""

from bastion.attacks.privacy.inference import (
    AttributeData, AttributeInference, AttributeResult, InversionResult, ModelInversion)
from bastion.attacks.privacy.membership import (
    MEMBERSHIP_ATTACKS, MembershipInference, MembershipResult, MembershipSplits, OperatingPoint, Roc, clopper_pearson,
    get_membership_attack, roc_curve, tpr_at_fpr)

__all__ = ["AttributeData", "AttributeInference", "AttributeResult", "InversionResult", "ModelInversion",
           "MEMBERSHIP_ATTACKS", "MembershipInference", "MembershipResult", "MembershipSplits", "OperatingPoint",
           "Roc", "clopper_pearson", "get_membership_attack", "roc_curve", "tpr_at_fpr"]
