"""Untrusted figures: a sign of gradient masking puts in doubt the evasion results of the same scan.

The ``gradient-masking`` check and the evasion checks are separate checks; once every check ran,
:func:`mark_untrusted` applies each masking finding to the results it concerns (its
``metrics["concerns"]``: the figures of gradient-based attacks, or of every attack for a
randomised model). Robust accuracy, success rate and perturbation sizes of those attacks, their
check and their evasion findings get ``untrusted`` (why), which the reports show and gates read
(see :mod:`bastion.campaign.gates`). Clean accuracy, query counts and times stay trusted: masking
does not change them. A figure already evaluated in expectation over fresh draws (a ``draws``
measurement above 1, as the evasion check records for a randomised model) is what the
randomised-outputs sign asks for, so that sign does not put it in doubt. After Athalye et al. 2018 (arXiv:1802.00420): a white-box figure on a
masked model is not evidence of robustness.
"""

from __future__ import annotations

from bastion.attacks.base import available_attacks
from bastion.campaign.rules import EVASION_RULE, MASKING_RULE, MINIMAL_RULE
from bastion.core.results import CheckResult, Finding, Measurement

#: The ``attack`` of a worst case over a check's attacks (e.g. the ``variants`` check's): it is in
#: doubt only when every attack it is taken over is (the minimum of figures is at most each of them).
WORST_CASE = "all"
#: Measurements masking cannot distort: they stay trusted.
UNAFFECTED = frozenset({"n", "clean_accuracy", "n_attacked", "queries", "queries_per_sample", "seconds", "draws"})
_MASKING_IDS = frozenset(MASKING_RULE.values())
_EVASION_IDS = frozenset({*EVASION_RULE.values(), MINIMAL_RULE})


def masking_findings(checks: list[CheckResult]) -> list[Finding]:
    """The gradient-masking findings of a scan."""
    return [f for c in checks for f in c.findings if f.rule_id in _MASKING_IDS]


def _concerned(attack: str, doubts: list[Finding], in_expectation: set[str]) -> list[Finding]:
    spec = available_attacks().get(attack)
    if spec is None:  # not an evasion attack: masking says nothing about it
        return []
    return [f for f in doubts if spec.needs_gradients and f.metrics.get("concerns", "gradient") == "gradient"
            or f.metrics.get("concerns") == "all" and attack not in in_expectation]


def _figure(m: Measurement) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A measurement's name and place, its attack left out."""
    return m.name, tuple(sorted((k, str(v)) for k, v in m.where.items() if k != "attack"))


def _worst_case_parts(check: CheckResult) -> dict[tuple[str, tuple[tuple[str, str], ...]], set[str]]:
    """For each figure of the check, the attacks it was measured for (a worst case is taken over them)."""
    parts: dict[tuple[str, tuple[tuple[str, str], ...]], set[str]] = {}
    for m in check.measurements:
        attack = m.where.get("attack")
        if isinstance(attack, str) and attack != WORST_CASE:
            parts.setdefault(_figure(m), set()).add(attack)
    return parts


def _worst_case_concerned(attacks: set[str], doubts: list[Finding], in_expectation: set[str]) -> list[Finding]:
    """A worst case is in doubt when each attack it is taken over is; when those attacks are not
    known, whenever there is any doubt (never trusted by default)."""
    if not attacks:
        return list(doubts)
    each = [_concerned(a, doubts, in_expectation) for a in sorted(attacks)]
    if not all(each):
        return []
    out: list[Finding] = []
    for f in (f for c in each for f in c):
        if all(f is not g for g in out):
            out.append(f)
    return out


def _reason(attack: str, doubts: list[Finding]) -> str:
    signs = ", ".join(dict.fromkeys(f"{f.rule_id} ({f.metrics.get('sanity', f.title)})" for f in doubts))
    checks = ", ".join(dict.fromkeys(f"'{f.check}'" for f in doubts))
    return (f"gradient masking: check {checks} raised {signs}; this {attack} figure may overstate robustness "
            "until an adaptive evaluation (BPDA, EOT) confirms it")


def mark_untrusted(checks: list[CheckResult]) -> list[str]:
    """Mark, in place, every figure a masking finding of ``checks`` concerns; return the names of
    the checks marked. Idempotent: a figure already marked keeps its first reason."""
    doubts = masking_findings(checks)
    marked: list[str] = []
    if not doubts:
        return marked
    for check in checks:
        if any(f.rule_id in _MASKING_IDS for f in check.findings):
            continue  # the masking check's own numbers are the evidence, not the suspect
        reasons: dict[str, str] = {}
        in_expectation = {str(m.where.get("attack")) for m in check.measurements
                          if m.name == "draws" and m.value is not None and m.value > 1}
        parts = _worst_case_parts(check)
        for m in check.measurements:
            attack = m.where.get("attack")
            if m.name in UNAFFECTED or not isinstance(attack, str):
                continue
            if attack == WORST_CASE:
                concerned = _worst_case_concerned(parts.get(_figure(m), set()), doubts, in_expectation)
            else:
                concerned = _concerned(attack, doubts, in_expectation)
            if concerned:
                reasons.setdefault(attack, _reason(attack, concerned))
                m.untrusted = m.untrusted or reasons[attack]
        for f in check.findings:
            attack = f.metrics.get("attack")
            concerned = _concerned(attack, doubts, in_expectation) if isinstance(attack, str) else []
            if f.rule_id in _EVASION_IDS and concerned:
                f.untrusted = f.untrusted or reasons.get(attack) or _reason(str(attack), concerned)
        if reasons:
            check.untrusted = check.untrusted or "; ".join(reasons.values())
            marked.append(check.name)
    return marked
