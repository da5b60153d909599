"""Privacy attacks: membership inference, attribute inference and model inversion."""

from bastion.attacks.privacy.inference import (
    AttributeData, AttributeInference, AttributeResult, InversionResult, ModelInversion)
from bastion.attacks.privacy.membership import (
    MembershipInference, MembershipResult, MembershipSplits, OperatingPoint, Roc, roc_curve, tpr_at_fpr)

__all__ = ["AttributeData", "AttributeInference", "AttributeResult", "InversionResult", "ModelInversion",
           "MembershipInference", "MembershipResult", "MembershipSplits", "OperatingPoint", "Roc",
           "roc_curve", "tpr_at_fpr"]
