"""Check kinds, by name in :data:`bastion.campaign.checks.base.CHECKS`; each is imported when a
policy uses it, so a policy without white-box checks never imports torch. Third-party checks
join through the ``bastion.checks`` entry points (see :mod:`bastion.core.registry`)."""

from bastion.campaign.checks.base import CHECKS, Check, CheckContext, CheckParams, check_kinds, register_check

__all__ = ["CHECKS", "Check", "CheckContext", "CheckParams", "check_kinds", "register_check"]
