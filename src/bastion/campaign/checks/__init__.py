"""Built-in checks; importing this package registers them."""

from bastion.campaign.checks import evasion, gradient_masking, model_file  # noqa: F401
