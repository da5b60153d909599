"""Campaigns: policy files, checks, gates and the scan runner."""

from importlib import resources
from pathlib import Path

DEMO_POLICIES = ("demo-digits-cnn", "demo-breast-cancer", "demo-privacy")


def packaged_policy(name: str) -> Path:
    """Path of a policy shipped with bastion (e.g. ``demo-digits-cnn``)."""
    return Path(str(resources.files("bastion.campaign") / "policies" / f"{name}.yaml"))
