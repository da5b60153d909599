"""The rule catalogue, the typed results contract, and reading schema 1.x reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from bastion.core.results import Artifact, CheckResult, ScanResult
from bastion.core.rules import RULE_MODULES, UnknownRule, all_rules, find_rule, get_rule
from bastion.core.threatmap import THREATS
from bastion.outputs.report import read_report, write_reports

DATA = Path(__file__).with_name("data")

#: Scanner rule ids are a public contract (allow-lists and SARIF baselines refer to them).
SCANNER_IDS = {"BASTION-SC-001", "BASTION-SC-002", "BASTION-SC-003", "BASTION-SC-004", "BASTION-SC-005",
               "BASTION-SC-006", "BASTION-SC-007", "BASTION-SC-008", "BASTION-SC-010", "BASTION-SC-011",
               "BASTION-SC-020", "BASTION-SC-030", "BASTION-SC-031", "BASTION-SC-040", "BASTION-SC-050",
               "BASTION-SC-060", "BASTION-SC-070"}


def test_every_rule_is_complete_and_unique() -> None:
    rules = all_rules()
    ids = [r.id for r in rules]
    assert len(ids) == len(set(ids))
    assert SCANNER_IDS <= set(ids)
    assert {"BASTION-EV-001", "BASTION-EV-002", "BASTION-EV-003", "BASTION-EV-010",
            "BASTION-EV-101", "BASTION-EV-102", "BASTION-EV-103", "BASTION-EV-104", "BASTION-EV-105",
            "BASTION-EV-106"} <= set(ids)
    for r in rules:
        assert r.title and r.remediation and r.threat in THREATS and r.nist in ("Map", "Measure", "Manage")
        assert r.atlas and r.owasp, r.id
        assert any(r.id.startswith(p) for p in RULE_MODULES)


def test_lookup_of_an_unknown_rule() -> None:
    with pytest.raises(UnknownRule, match="BASTION-EV-999"):
        get_rule("BASTION-EV-999")
    assert find_rule("THIRDPARTY-1") is None


def test_rule_finding_carries_the_catalogue() -> None:
    rule = get_rule("BASTION-SC-001")
    f = rule.finding(title="os.system in data.pkl", check="inspect", location="m.pt")
    assert (f.rule_id, f.nist, f.remediation, f.severity) == (rule.id, "Manage", rule.remediation,
                                                               rule.default_severity)
    assert f.atlas == list(THREATS["supply-chain"].atlas) and f.owasp == ["ML06"]


def test_core_imports_no_capability() -> None:
    """Importing the catalogue (and looking up a scanner rule) loads no evasion code, torch or campaign."""
    code = ("import sys; import bastion.core.rules as r; r.get_rule('BASTION-SC-001'); "
            "bad = [m for m in sys.modules if m.startswith(('bastion.attacks', 'bastion.campaign', 'torch'))]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_artifacts_are_discriminated_on_type() -> None:
    adapter = TypeAdapter(Artifact)
    roc = adapter.validate_python({"type": "roc_curve", "fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1], "auc": 0.8})
    assert type(roc).__name__ == "RocCurve"
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "pie_chart", "values": [1]})
    with pytest.raises(ValidationError):  # a known type must have its fields
        adapter.validate_python({"type": "robustness_curve", "eps": [0.1]})


def test_measure_records_not_measured_as_none() -> None:
    check = CheckResult(name="c", kind="k")
    check.measure("robust_accuracy", float("nan"), "ratio", attack="pgd", eps=0.1, stage=None)
    check.measure("robust_accuracy", 0.5, "ratio", attack="pgd", eps=0.2)
    assert check.measurements[0].value is None and check.measurements[0].where == {"attack": "pgd", "eps": 0.1}
    assert check.values("robust_accuracy") == [0.5] and check.values("robust_accuracy", eps=0.1) == []


def test_end_never_before_start() -> None:
    """The inspect report was stamped finished before it started (regression)."""
    res = ScanResult(finished_at="2025-01-01T10:00:00+00:00", started_at="2025-01-01T10:00:05+00:00",
                     checks=[CheckResult(name="inspect", kind="supply-chain", seconds=2.0)])
    assert res.started_at == "2025-01-01T09:59:58+00:00"


def test_reads_a_committed_1x_report(tmp_path: Path) -> None:
    """A report.json written by bastion 0.1 (schema 1.0) is read as 2.x: numbers become
    measurements, pictures typed artifacts, and what 2.0 has no type for stays in the details."""
    doc = json.loads((DATA / "report-1.0.json").read_text())
    assert doc["schema_version"] == "1.0"
    res = read_report(DATA / "report-1.0.json")
    assert res.schema_version == "2.1" and res.verdict == doc["verdict"]
    pgd = res.checks[0]
    assert [a.type for a in pgd.artifacts] == ["robustness_curve"] * 3 + ["example_grid", "histogram", "stage_chart"]
    assert pgd.values("clean_accuracy") == [0.975]
    assert "findings_high" not in pgd.metrics  # derived counters are recomputed, not kept
    assert pgd.metrics["artifacts (schema 1.x)"] == {"unknown_future_artifact": {"anything": 1}}
    square = res.checks[2]
    assert [a.type for a in square.artifacts] == ["query_curve", "query_log"]
    assert [f.rule_id for f in res.findings] == [f["rule_id"] for f in doc["findings"]]
    paths = write_reports(res, tmp_path)   # and renders in every format
    assert read_report(paths["json"]) == res


def test_gates_read_an_upgraded_1x_scan_as_1x_did() -> None:
    """A real 1.x scan report (bastion 0.1, demo breast-cancer, pgd and deepfool): its gates,
    re-evaluated on the upgraded measurements, measure what 1.x measured."""
    from bastion.campaign.gates import parse_gate

    doc = json.loads((DATA / "report-1.0-scan.json").read_text())
    res = read_report(DATA / "report-1.0-scan.json")
    for old in doc["gates"]:
        new = parse_gate(old["expression"]).evaluate(res.checks)
        assert (new.value, new.passed) == (old["value"], old["passed"]), old["expression"]
    pgd = res.checks[0]
    assert {a.type for a in pgd.artifacts} == {"robustness_curve", "tabular_examples"}
    assert sorted(pgd.values("robust_accuracy", eps=0.1)) == [r["robust_accuracy"] for r in
                                                              doc["checks"][0]["metrics"]["results"] if r["eps"] == 0.1]
    assert [a.type for a in res.checks[1].artifacts] == ["histogram"]
