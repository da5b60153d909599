"""Certification: a certified radius (or an abstention) per input."""

from bastion.certify.base import CERTIFIERS, CertificationResult, Certifier

__all__ = ["CERTIFIERS", "CertificationResult", "Certifier"]
