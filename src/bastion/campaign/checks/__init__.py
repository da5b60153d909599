"""Built-in checks; importing this package registers them."""

from bastion.campaign.checks import evasion  # noqa: F401
