"""Adversarial training: training defenses built from the evasion attacks' own torch primitives
(``bastion.attacks.evasion._torch``), so a capability never imports another. Registered in
``bastion.core.defense.DEFENSES``: ``pgd-at`` (Madry et al. 2018), ``trades`` (Zhang et al. 2019),
``fast-fgsm`` (Wong, Rice & Kolter 2020)."""
