"""The ``attribute-inference`` and ``model-inversion`` checks: a leak found and mapped to ATLAS
AML.T0024.001 / OWASP ML03 where the model memorised (or can be inverted), none where it cannot;
bad input reported with what and why while the other checks still run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bastion.campaign.policy import load_policy
from bastion.campaign.runner import scan
from bastion.core.results import ScanResult
from bastion.errors import PolicyError


def _table_policy(tmp_path: Path, checks: list[dict], gates: list[str] | None = None, *,
                  blind: bool = False) -> Path:
    """A random forest memorising 200 records whose label is noise; column 'group' (0, 1, 2) is
    sensitive. ``blind``: the forest is trained with 'group' shuffled, so it cannot have memorised it."""
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = np.c_[rng.integers(0, 3, 400), rng.random((400, 3))].astype(np.float32)
    y = rng.integers(0, 2, 400)
    fit_x = x[:200].copy()
    if blind:
        fit_x[:, 0] = rng.permutation(fit_x[:, 0])
    skops.io.dump(RandomForestClassifier(n_estimators=50, random_state=0).fit(fit_x, y[:200]), tmp_path / "rf.skops")
    np.savez(tmp_path / "train.npz", x=x[:200], y=y[:200])
    np.savez(tmp_path / "other.npz", x=x[200:], y=y[200:])
    doc = {"version": 2, "name": "attributes", "seed": 0,
           "target": {"model": "sklearn:rf.skops", "bounds": [0.0, 3.0]},
           "datasets": {"eval": {"source": "npz:other.npz"}, "train": {"source": "npz:train.npz"}},
           "checks": checks, "gates": gates or [], "output": {"dir": str(tmp_path / "out")}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _scan(path: Path) -> ScanResult:
    return scan(path, write=False, workers=1)


def _attribute_check(**extra: object) -> dict:
    # the attacker knows the attribute of 100 training records and infers it for the other 100
    return {"name": "group", "kind": "attribute-inference", "attribute": 0,
            "records": {"role": "train", "indices": "0:100"}, "known": {"role": "train", "indices": "100:200"},
            **extra}


def test_attribute_inference_finds_what_a_memorising_model_leaks(tmp_path: Path) -> None:
    res = _scan(_table_policy(tmp_path, [_attribute_check()],
                              ["attribute_advantage_ci_low[group, attack=learned] <= 0"]))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    assert check.values("records") == [100.0] and check.values("known_records") == [100.0]
    for attack in ("fredrikson", "learned"):  # both run by default when known records are given
        (gain,) = check.values("attribute_advantage", attack=attack, attribute=0)
        (lo,) = check.values("attribute_advantage_ci_low", attack=attack)
        (acc,) = check.values("attribute_accuracy", attack=attack)
        (base,) = check.values("baseline_accuracy", attack=attack)
        assert gain == pytest.approx(acc - base) and lo > 0
    (finding,) = check.findings
    assert finding.rule_id == "BASTION-MI-003" and finding.atlas == ["AML.T0024.001"] and finding.owasp == ["ML03"]
    assert finding.metrics["baseline_kind"] == "imputation" and finding.metrics["p_value"] < 0.05
    assert res.verdict == "fail" and not res.gates[0].passed


def test_no_finding_where_the_model_never_learned_the_attribute(tmp_path: Path) -> None:
    res = _scan(_table_policy(tmp_path, [_attribute_check()], blind=True))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    for attack in ("fredrikson", "learned"):
        (lo,) = check.values("attribute_advantage_ci_low", attack=attack)
        (hi,) = check.values("attribute_advantage_ci_high", attack=attack)
        assert lo <= 0 <= hi
    assert not check.findings


def test_bad_attribute_input_is_reported_and_the_other_checks_still_run(tmp_path: Path) -> None:
    res = _scan(_table_policy(tmp_path, [
        {"name": "by-name", "kind": "attribute-inference", "attribute": "age"},
        {"name": "not-categorical", "kind": "attribute-inference", "attribute": 1, "attacks": ["fredrikson"]},
        {"name": "beyond", "kind": "attribute-inference", "attribute": 4},
        _attribute_check(attacks=["fredrikson"])]))
    by = {c.name: c for c in res.checks}
    assert by["by-name"].status == "error"
    assert "attribute 'age' is not a column name; the data have no column names" in by["by-name"].reason
    reason = by["not-categorical"].reason
    assert by["not-categorical"].status == "error" and "takes 200 distinct values" in reason and "bins" in reason
    assert "column index in [0, 3], got 4" in by["beyond"].reason
    assert by["group"].status == "complete" and by["group"].findings


def test_a_numeric_attribute_is_binned(tmp_path: Path) -> None:
    res = _scan(_table_policy(tmp_path, [_attribute_check(attribute=1, attribute_kind="numeric", bins=4,
                                                          attacks=["fredrikson"])]))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    assert len(check.metrics["attacks"]["fredrikson"]["candidates"]) == 4
    assert check.values("attribute_advantage", attack="fredrikson", attribute=1)


def test_attribute_policy_requirements_are_checked_when_it_loads(tmp_path: Path) -> None:
    path = _table_policy(tmp_path, [{"name": "a", "kind": "attribute-inference", "attribute": 0,
                                     "attacks": ["learned"]}])
    with pytest.raises(PolicyError, match="reference"):
        load_policy(path)
    path = _table_policy(tmp_path, [{"name": "a", "kind": "attribute-inference", "attribute": 0,
                                     "attacks": ["nope"]}])
    with pytest.raises(PolicyError, match="unknown attribute attack 'nope'; available: fredrikson, learned"):
        load_policy(path)
    path = _table_policy(tmp_path, [{"name": "a", "kind": "attribute-inference", "attribute": 0, "bins": 3}])
    with pytest.raises(PolicyError, match="bins apply to a numeric attribute"):
        load_policy(path)


def _digits_policy(tmp_path: Path, checks: list[dict], model: str = "demo:digits-cnn") -> Path:
    doc = {"version": 2, "name": "inversion", "seed": 0, "target": {"model": model},
           "datasets": {"eval": {"source": "demo:digits"}, "train": {"source": "demo:digits-train"}},
           "checks": checks, "gates": ["inversion_identified[inv] <= 0.3"], "output": {"dir": str(tmp_path / "out")}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_model_inversion_of_the_demo_cnn(tmp_path: Path, digits_target) -> None:
    res = _scan(_digits_policy(tmp_path, [{"name": "inv", "kind": "model-inversion",
                                           "attacks": [{"attack": "mi-face", "params": {"steps": 30}},
                                                       {"attack": "mi-face-scores",
                                                        "params": {"steps": 30, "samples": 10}}]}]))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    assert check.metrics["records"] == "train" and check.values("records") == [1437.0]
    assert check.values("inversion_identified", attack="mi-face")[0] >= 0.8
    assert check.values("inversion_identified", attack="mi-face-scores")[0] > 0.3
    grids = [a for a in check.artifacts if a.type == "inversion_grid"]
    assert len(grids) == 2 and grids[0].shape == [1, 8, 8] and len(grids[0].class_means) == 10
    assert grids[0].labels == [str(c) for c in range(10)]
    (finding,) = check.findings
    assert finding.rule_id == "BASTION-MI-004" and finding.atlas == ["AML.T0024.001"] and finding.owasp == ["ML03"]
    assert finding.severity.value == "high" and finding.metrics["attack"] == "mi-face"
    assert res.verdict == "fail"
    from bastion.outputs.report.html import render_html

    html = render_html(res)
    assert "Model inversion (mi-face)" in html and "not drawn" not in html


def test_model_inversion_needs_gradients_for_mi_face_and_budget_errors_are_reported(tmp_path: Path) -> None:
    path = _table_policy(tmp_path, [{"name": "inv", "kind": "model-inversion", "attacks": ["mi-face"]}])
    with pytest.raises(PolicyError, match="check 'inv' needs gradients but the target .* is a black box"):
        _scan(path)  # refused once the target is loaded, before anything runs
    res = _scan(_digits_policy(tmp_path, [
        {"name": "inv", "kind": "model-inversion", "query_budget": 50,
         "attacks": [{"attack": "mi-face-scores", "params": {"steps": 5}}]},
        {"name": "after", "kind": "model-inversion", "attacks": [{"attack": "mi-face", "params": {"steps": 5}}]}]))
    inv, after = res.checks
    assert inv.status == "error" and "budget of 50 queries is spent" in inv.reason
    assert after.status == "complete"
