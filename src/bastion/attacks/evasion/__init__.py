"""Evasion attacks, one module per algorithm. Importing this package imports none of them (the
white-box ones need torch); reach them through :mod:`bastion.attacks` or their own modules."""
