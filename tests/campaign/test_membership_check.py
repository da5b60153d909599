"""The ``membership`` check on the privacy demo (an MLP overfit on 150 digits): a real leak found
and mapped to ATLAS/OWASP; TPR only where the non-members make the FPR measurable; bad input
(overlapping sets, a failing trainer, too few non-members) reported with what and why while the
other checks still run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bastion.campaign import packaged_policy
from bastion.campaign.policy import load_policy
from bastion.campaign.runner import scan
from bastion.core.results import ScanResult
from bastion.errors import PolicyError


def _demo_policy() -> dict:
    return yaml.safe_load(Path(packaged_policy("demo-privacy")).read_text())


def _scan(tmp_path: Path, doc: dict) -> ScanResult:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return scan(path, write=False, workers=1)


def test_the_privacy_demo_shows_a_real_leak(tmp_path: Path) -> None:
    res = _scan(tmp_path, _demo_policy())
    check = res.checks[0]
    assert check.status == "complete", check.reason
    assert check.values("accuracy_gap")[0] > 0.02
    aucs = check.values("membership_auc")
    assert len(aucs) == 3 and max(aucs) > 0.6
    mi = [f for f in check.findings if f.rule_id == "BASTION-MI-001"]
    assert mi and mi[0].atlas == ["AML.T0024.000"] and mi[0].owasp == ["ML04"]
    assert mi[0].severity.value in ("medium", "high")
    assert all(isinstance(i, int) for i in mi[0].metrics["most_exposed_members"])
    # 400 non-members: 1 % is measurable (with an interval), 0.1 % is not, and is not made up
    unmeasured = [m for m in check.measurements if m.name == "tpr_at_fpr" and m.where["fpr"] == 0.001]
    assert len(unmeasured) == 3 and all(m.value is None for m in unmeasured)
    assert any("not measurable with 400 non-members" in n for n in check.metrics["notes"])
    assert len(check.values("tpr_at_fpr_ci_low", fpr=0.01)) == 3
    assert {a.type for a in check.artifacts} == {"roc_curve"}
    assert check.values("membership_auc_by_class", attack="rmia")


def test_bad_input_is_reported_and_the_other_checks_still_run(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("def fit(request):\n    raise ValueError('no GPU here')\n")
    doc = _demo_policy()
    doc["trainer"] = "python:train.py:fit"
    doc["checks"] = [
        {"name": "overlap", "kind": "membership",
         "members": {"role": "members", "indices": "0:100"}, "non_members": {"role": "members", "indices": "50:150"}},
        {"name": "failing-trainer", "kind": "membership",
         "attacks": ["loss-threshold", {"attack": "lira", "params": {"mode": "offline", "shadow_models": 2}}]},
        {"name": "few", "kind": "membership", "non_members": {"role": "non_members", "indices": "0:50"}},
    ]
    doc["gates"] = ["tpr_at_fpr[few, attack=loss-threshold, fpr=0.01] <= 0.5"]
    res = _scan(tmp_path, doc)
    by = {c.name: c for c in res.checks}
    assert by["overlap"].status == "error" and "share 50 record(s)" in by["overlap"].reason
    failing = by["failing-trainer"]
    assert failing.status == "error"
    assert "lira: the trainer failed on shadow model 0: ValueError: no GPU here" in failing.reason
    assert failing.values("membership_auc", attack="loss-threshold")  # the other attack's figures are kept
    few = by["few"]
    assert few.status == "complete"
    assert [m.value for m in few.measurements if m.name == "tpr_at_fpr" and m.where["fpr"] == 0.01] == [None, None]
    assert "not measurable with 50 non-members" in " ".join(few.metrics["notes"])
    assert res.verdict == "fail" and not res.gates[0].passed  # a gate never reads a number that was not measured


def test_policy_requirements_are_checked_when_it_loads(tmp_path: Path) -> None:
    doc = _demo_policy()
    del doc["datasets"]["reference"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(PolicyError, match="needs the dataset\\(s\\) reference"):
        load_policy(path)
    doc = _demo_policy()
    doc["checks"][0]["attacks"] = ["lira-x"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(PolicyError, match="unknown membership attack 'lira-x'; available: .*rmia"):
        load_policy(path)
