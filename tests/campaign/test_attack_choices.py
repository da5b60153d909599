"""The {attack, params} choices shared by the privacy, extraction and poisoning checks: a bare name
is accepted, an unknown name is refused naming the family, an empty list is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bastion.campaign.checks.attribute import AttributeParams
from bastion.campaign.checks.extraction import ExtractionCheckParams
from bastion.campaign.checks.inversion import InversionParams
from bastion.campaign.checks.membership import MembershipParams
from bastion.campaign.checks.poisoning import PoisoningParams

FAMILIES = [
    (MembershipParams, {}, "loss-threshold", "membership attack"),
    (AttributeParams, {"attribute": 0}, "fredrikson", "attribute attack"),
    (InversionParams, {}, "mi-face", "inversion attack"),
    (ExtractionCheckParams, {}, "knockoff", "extraction attack"),
    (PoisoningParams, {}, "label-flip", "poisoning attack"),
]


@pytest.mark.parametrize(("params", "base", "name", "what"), FAMILIES)
def test_bare_name_equals_full_spec(params, base, name, what):
    bare = params(**base, attacks=[name])
    full = params(**base, attacks=[{"attack": name, "params": {}}])
    assert bare.attacks == full.attacks
    assert bare.attacks[0].attack == name


@pytest.mark.parametrize(("params", "base", "name", "what"), FAMILIES)
def test_unknown_name_names_the_family(params, base, name, what):
    with pytest.raises(ValidationError, match=f"unknown {what} 'nope'"):
        params(**base, attacks=["nope"])


@pytest.mark.parametrize(("params", "base", "name", "what"), FAMILIES)
def test_empty_list_refused(params, base, name, what):
    with pytest.raises(ValidationError, match="give at least one attack"):
        params(**base, attacks=[])
