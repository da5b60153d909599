"""Production monitoring: detectors over windows of traffic (drift, query abuse, adversarial inputs)."""

from bastion.monitor.base import DETECTORS, Alert, Detector

__all__ = ["DETECTORS", "Alert", "Detector"]
