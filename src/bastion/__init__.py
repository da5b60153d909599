"""bastion: stress-test machine-learning models against every credible attack."""

from __future__ import annotations

__version__ = "0.1.0"
