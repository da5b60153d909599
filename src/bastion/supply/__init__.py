"""Supply chain: model-file inspection (``bastion inspect``), safe loading, signing and registry."""

from __future__ import annotations

from bastion.supply.config import InspectConfig
from bastion.supply.inspect import InspectResult, ScanError, inspect_check, scan_paths

__all__ = ["InspectConfig", "InspectResult", "ScanError", "inspect_check", "scan_paths"]
