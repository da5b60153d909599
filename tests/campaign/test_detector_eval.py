"""The ``detector-eval`` check: false alarms on clean inputs, detection rate per attack, and the
adaptive attack on the classifier and the detector together (Carlini & Wagner 2017)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.campaign.checks.detector_eval import DetectorEvalCheck, DetectorEvalParams
from bastion.campaign.policy import load_policy
from bastion.campaign.rules import DETECTOR_RULE
from bastion.campaign.runner import scan
from bastion.errors import PolicyError, UsageError


def policy(tmp_path: Path, **check: object) -> dict:
    return {
        "version": 2, "name": "detector", "seed": 0,
        "target": {"model": "demo:digits-cnn"},
        "datasets": {"eval": {"source": "demo:digits", "limit": 120}},
        "threat": {"norm": "linf", "eps": 0.1},
        "checks": [{"name": "fs", "kind": "detector-eval", **check}],
        "gates": ["evasion_rate[fs, attack=adaptive] <= 0.05", "false_alarm_rate[fs] <= 0.2"],
        "output": {"dir": str(tmp_path / "out"), "formats": ["json", "html"]},
    }


def test_a_policy_measures_detection_and_the_adaptive_attack(tmp_path: Path, digits_target) -> None:  # noqa: ANN001
    result = scan(policy(tmp_path, detector_params={"squeezers": [{"kind": "bit-depth", "bits": 2}]},
                         attacks=["fgsm", "pgd"], attack_params={"pgd": {"steps": 10}}, adaptive_steps=20))
    (check,) = result.checks
    assert check.status == "complete", check.reason
    m = check.metrics
    assert m["clean_inputs"] == 60 and [r["attack"] for r in m["table"]] == ["fgsm", "pgd", "adaptive"]
    by = {r["attack"]: r for r in m["table"]}
    assert by["pgd"]["detection_rate"] > 0.5  # a non-adaptive attack is mostly caught
    assert by["adaptive"]["evasion_rate"] > by["pgd"]["evasion_rate"]  # the adaptive one gets more past it
    names = {(x.name, x.where.get("attack")) for x in check.measurements}
    assert {("false_alarm_rate", None), ("detection_rate", "pgd"), ("evasion_rate", "adaptive")} <= names
    (finding,) = check.findings
    assert finding.rule_id == DETECTOR_RULE and "bypassed" in finding.title
    assert [g.passed for g in result.gates] == [False, True]
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.parametrize("check, words", [
    ({"detector": "lid"}, "unknown detector of adversarial inputs 'lid'; available: feature-squeezing, mahalanobis"),
    ({"detector": "strip"}, "unknown detector of adversarial inputs 'strip'"),
    ({"attacks": ["pgd"], "attack_params": {"fgsm": {}}}, "attack_params names attacks not in 'attacks': fgsm"),
    ({"attacks": ["deepfool"]}, "minimal-perturbation"),
    ({"fit_fraction": 1.0}, "fit_fraction"),
])
def test_bad_parameters_are_refused_when_the_policy_loads(tmp_path: Path, check: dict, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        load_policy(policy(tmp_path, **check))


def test_too_little_data_to_split_is_refused(digits_target, digits_data) -> None:  # noqa: ANN001
    from bastion.campaign.checks.base import CheckContext
    from bastion.core.data import Dataset

    tiny = Dataset(digits_data.x[:3], digits_data.y[:3], "tiny")
    with pytest.raises(UsageError, match="both need at least 2"):
        DetectorEvalCheck("d", DetectorEvalParams()).run(CheckContext(target=digits_target, data=tiny, y=tiny.y))
