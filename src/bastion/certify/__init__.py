"""Certification: a certified radius (or an abstention) per input."""

from bastion.certify.base import CertificationResult, Certifier

__all__ = ["CertificationResult", "Certifier"]
