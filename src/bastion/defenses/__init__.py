"""Defenses that wrap a target (input transformations) and detectors of adversarial inputs; each
registered by name in :data:`bastion.core.defense.DEFENSES` (or the detector registry)."""
