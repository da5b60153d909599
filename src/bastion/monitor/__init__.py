"""Production monitoring: detectors over windows of traffic (drift, query abuse, adversarial inputs)."""

from bastion.monitor.base import Alert, Detector

__all__ = ["Alert", "Detector"]
