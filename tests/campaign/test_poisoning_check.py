"""The ``poisoning`` check on demo digits: a targeted label flip and a table trigger, trained
through a policy's trainer, measured per fraction with a detector and sanitised retraining, drawn
as curves, mapped to ATLAS/OWASP; a trainer that fails on poisoned data is a finding while the
other fractions and attacks go on; bad parameters are refused when the policy loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bastion.campaign.runner import scan
from bastion.core.results import ScanResult
from bastion.errors import PolicyError


def _policy(**check: object) -> dict:
    return {"version": 2, "name": "poisoning", "seed": 0, "target": {"model": "demo:digits-mlp"},
            "datasets": {"eval": {"source": "demo:digits-non-members"}, "train": {"source": "demo:digits-reference"}},
            "trainer": {"spec": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 200}},
            "checks": [{"name": "poisoning", "kind": "poisoning", **check}]}


def _scan(tmp_path: Path, doc: dict) -> ScanResult:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return scan(path, write=False, workers=1)


def test_flips_and_triggers_are_measured_drawn_and_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    res = _scan(tmp_path, _policy(
        attacks=[{"attack": "label-flip", "params": {"mode": "targeted", "source": 1, "target": 7}},
                 {"attack": "table-trigger", "params": {"target_class": 0}}],
        fractions=[0.05, 0.2], detectors=["knn"]))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    # a whole class relabelled: the model never saw class 1, and still answers over all 10 classes
    assert check.values("attack_success", attack="label-flip", fraction="0.2")[0] > 0.9
    assert check.values("source_accuracy", attack="label-flip", fraction="0") > [0.8]
    assert check.values("attack_success", attack="table-trigger", fraction="0.2")[0] > 0.9
    assert check.values("attack_success", attack="table-trigger", fraction="0")[0] < 0.1
    assert len(check.values("detector_recall", detector="knn")) == 4
    assert len(check.values("sanitised_clean_accuracy", detector="knn")) == 4
    assert check.values("strip_false_alarm_rate", attack="table-trigger")  # STRIP measured on backdoors only
    assert not check.values("strip_detection_rate", attack="label-flip")
    curves = [a for a in check.artifacts if a.type == "poisoning_curve"]
    assert [c.x for c in curves] == [[0.0, 0.05, 0.2]] * 2 and "attack_success" in curves[1].series
    rules = {f.rule_id: f for f in check.findings}
    assert rules["BASTION-PO-001"].atlas == ["AML.T0020"] and rules["BASTION-PO-001"].owasp == ["ML02"]
    assert rules["BASTION-PO-002"].atlas == ["AML.T0018.000", "AML.T0043.004"]
    assert rules["BASTION-PO-002"].owasp == ["ML10"]
    from bastion.outputs.report import write_reports

    paths = write_reports(res, tmp_path / "out")
    assert "Poisoning: table-trigger" in Path(paths["html"]).read_text()


def test_a_trainer_failing_on_poisoned_data_is_a_finding(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(
        "import numpy as np\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "from bastion.core.training import sklearn_train_fn\n"
        "def fit(request):\n"
        "    if np.sum(np.asarray(request.y) == 7) > 40:\n"
        "        raise ValueError('class 7 is too large')\n"
        "    return sklearn_train_fn(LogisticRegression(max_iter=200))(request)\n")
    doc = _policy(attacks=[{"attack": "label-flip", "params": {"mode": "targeted", "source": 1, "target": 7}}],
                  fractions=[0.02, 0.2], detectors=[])
    doc["trainer"] = "python:train.py:fit"
    check = _scan(tmp_path, doc).checks[0]
    assert check.status == "complete"
    failed = [f for f in check.findings if f.rule_id == "BASTION-PO-004"]
    assert len(failed) == 1 and failed[0].metrics["fraction"] == 0.2
    assert "class 7 is too large" in failed[0].description
    assert check.values("clean_accuracy", fraction="0.02")  # the other fractions were measured


@pytest.mark.parametrize("check, msg", [({"attacks": ["nope"]}, "unknown poisoning attack 'nope'"),
                                        ({"fractions": [0.0]}, "fractions must be one or more numbers in"),
                                        ({"detectors": ["nope"]}, "unknown poison detector 'nope'"),
                                        ({"attacks": ["feature-collision"]}, "run it from Python"),
                                        ({"attacks": [{"attack": "label-flip", "params": {"mode": "x"}}]},
                                         "mode")])
def test_bad_parameters_are_refused_when_the_policy_loads(tmp_path: Path, check: dict, msg: str) -> None:
    from bastion.campaign.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(_policy(**check)))
    with pytest.raises(PolicyError, match=msg):
        load_policy(path)


def test_online_learning_is_measured_per_round(tmp_path: Path) -> None:
    doc = _policy(attacks=[{"attack": "table-trigger", "params": {"target_class": 0}}], fractions=[0.1],
                  detectors=[], strip=False, online_batch_size=50, online_fraction=0.2)
    doc["trainer"] = {"spec": "sklearn:sklearn.linear_model:SGDClassifier", "params": {"random_state": 0, "loss": "log_loss"}}
    check = _scan(tmp_path, doc).checks[0]
    assert check.status == "complete", check.reason
    rounds = check.values("online_attack_success", attack="table-trigger")
    assert len(rounds) == 6 and rounds[-1] > 0.8  # 300 records in batches of 50
    assert check.values("online_reference_attack_success", attack="table-trigger", round=6)[0] < 0.2
    curve = [a for a in check.artifacts if a.type == "poisoning_curve" and a.xlabel.startswith("round")]
    assert curve and curve[0].x == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert any(f.rule_id == "BASTION-PO-002" and "online" in f.title for f in check.findings)
    doc["trainer"] = {"spec": "sklearn:sklearn.linear_model:LogisticRegression"}  # no partial_fit
    failed = _scan(tmp_path, doc).checks[0]
    assert failed.status == "error" and "LogisticRegression has no partial_fit" in failed.reason
    assert failed.values("clean_accuracy", fraction="0.1")  # the batch simulation was kept
