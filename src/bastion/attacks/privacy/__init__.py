"""Privacy attacks: membership inference, attribute inference and model inversion."""

from bastion.attacks.privacy.inference import (
    ATTRIBUTE_ATTACKS, INVERSION_ATTACKS, AttributeData, AttributeInference, AttributeResult, AttributeTask,
    InversionResult, ModelInversion, get_attribute_attack, get_inversion_attack)
from bastion.attacks.privacy.membership import (
    MEMBERSHIP_ATTACKS, MembershipInference, MembershipResult, MembershipSplits, OperatingPoint, Roc, clopper_pearson,
    get_membership_attack, roc_curve, tpr_at_fpr)

__all__ = ["ATTRIBUTE_ATTACKS", "INVERSION_ATTACKS", "AttributeData", "AttributeInference", "AttributeResult",
           "AttributeTask", "InversionResult", "ModelInversion", "get_attribute_attack", "get_inversion_attack",
           "MEMBERSHIP_ATTACKS", "MembershipInference", "MembershipResult", "MembershipSplits", "OperatingPoint",
           "Roc", "clopper_pearson", "get_membership_attack", "roc_curve", "tpr_at_fpr"]
