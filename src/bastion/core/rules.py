"""The one catalogue of rules every finding points to.

A :class:`Rule` says what a finding means whatever was measured: a stable id, a title, the
threat family (:data:`bastion.core.threatmap.THREATS`) with its MITRE ATLAS and OWASP ML Top 10
ids, the NIST AI RMF function that acts on it (Map, Measure, Manage), a remediation in plain
words and a longer help text. SARIF rule descriptions and the HTML's "what to fix" list come
from here, never from a finding's measured title.

Rules live beside the capability that raises them (``bastion.supply.rules`` for the model-file
scanner, ``bastion.campaign.rules`` for evasion and gradient masking,
``bastion.campaign.privacy_rules`` for membership inference and extraction). Core imports none of
them: :data:`RULE_MODULES`, a lazy :class:`~bastion.core.registry.Registry`, maps an id prefix to
the ``"module:attr"`` of a list of rules, imported the first time one of its ids is looked up.
Third-party packages add rule modules through the ``bastion.rules`` entry-point group
(name = id prefix, value = ``"module:attr"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.core.registry import Registry
from bastion.core.results import Finding, Severity
from bastion.core.threatmap import THREATS

NistFunction = Literal["Map", "Measure", "Manage"]

#: Id prefix -> "module:attr" of an iterable of :class:`Rule`s (imported on first use);
#: entry-point group ``bastion.rules``.
RULE_MODULES: Registry[Iterable[Rule]] = Registry("rule module", {
    "BASTION-EV-": "bastion.campaign.rules:CATALOGUE",
    "BASTION-SC-": "bastion.supply.rules:CATALOGUE",
    "BASTION-DA-": "bastion.audit.rules:CATALOGUE",
    "BASTION-MI-": "bastion.campaign.privacy_rules:CATALOGUE",
    "BASTION-PO-": "bastion.campaign.poisoning_rules:CATALOGUE",
    "BASTION-EX-": "bastion.campaign.privacy_rules:EXTRACTION_CATALOGUE",
    "BASTION-VA-": "bastion.campaign.variant_rules:CATALOGUE",
}, group="bastion.rules")


class Rule(BaseModel):
    """One rule of the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    threat: str = Field(description="Threat family, a key of bastion.core.threatmap.THREATS.")
    nist: NistFunction = "Measure"
    remediation: str
    help: str = ""
    default_severity: Severity = Severity.high

    @property
    def atlas(self) -> list[str]:
        return list(THREATS[self.threat].atlas)

    @property
    def owasp(self) -> list[str]:
        return list(THREATS[self.threat].owasp)

    @property
    def name(self) -> str:
        """PascalCase name of the title (SARIF ``reportingDescriptor.name``)."""
        return "".join(w[:1].upper() + w[1:] for w in "".join(
            ch if ch.isalnum() else " " for ch in self.title).split())

    def finding(self, *, title: str, check: str, severity: Severity | None = None, description: str = "",
                remediation: str | None = None, metrics: dict[str, Any] | None = None,
                location: str | None = None, offset: int | None = None) -> Finding:
        """A Finding of this rule, with its threat ids, NIST function and remediation filled in."""
        return Finding(rule_id=self.id, title=title, severity=severity or self.default_severity, check=check,
                       atlas=self.atlas, owasp=self.owasp, nist=self.nist,
                       description=description or THREATS[self.threat].description,
                       remediation=self.remediation if remediation is None else remediation,
                       metrics=dict(metrics or {}), location=location, offset=offset)


class UnknownRule(LookupError):
    """A rule id that no rule module defines."""


_LOADED: dict[str, dict[str, Rule]] = {}   # id prefix -> {id: rule}, filled lazily


def _load(prefix: str) -> dict[str, Rule]:
    if prefix not in _LOADED:
        table: dict[str, Rule] = {}
        for r in RULE_MODULES.get_object(prefix):
            where = RULE_MODULES.ref(prefix)
            if not r.id.startswith(prefix):
                raise ValueError(f"rule {r.id} from {where} does not start with its prefix '{prefix}'")
            if r.id in table:
                raise ValueError(f"rule {r.id} is defined twice in {where}")
            if r.threat not in THREATS:
                raise ValueError(f"rule {r.id}: unknown threat '{r.threat}'; known: {', '.join(THREATS)}")
            table[r.id] = r
        _LOADED[prefix] = table
    return _LOADED[prefix]


def get_rule(rule_id: str) -> Rule:
    """The rule ``rule_id``; :class:`UnknownRule` when no rule module defines it."""
    for prefix in RULE_MODULES.names():
        if rule_id.startswith(prefix):
            rules = _load(prefix)
            if rule_id in rules:
                return rules[rule_id]
    raise UnknownRule(f"no rule '{rule_id}' in the catalogue")


def find_rule(rule_id: str) -> Rule | None:
    """The rule ``rule_id``, or None (a report from another version or a third party)."""
    try:
        return get_rule(rule_id)
    except UnknownRule:
        return None


def all_rules() -> list[Rule]:
    """Every rule of every rule module (imports them all; they are small)."""
    return [r for prefix in RULE_MODULES.names() for r in _load(prefix).values()]
