"""End-to-end CLI runs (exit codes, json, sarif), the SARIF structure, inspect_check and load_model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.core.results import CheckResult, Finding, ScanResult, Severity
from bastion.errors import UnsafeFileError
from bastion.outputs.report.sarif import render_sarif
from bastion.supply import inspect_check, scan_paths
from bastion.supply.loader import load_model
from corpus import RCE_P0, SG, call, p2, p4

runner = CliRunner()


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"evil": tmp_path / "evil.bin", "unknown": tmp_path / "unknown.pkl", "clean": tmp_path / "clean.pkl"}
    out["evil"].write_bytes(RCE_P0)
    out["unknown"].write_bytes(p4(call(SG("acme.models", "Net"))))
    out["clean"].write_bytes(p2(b"}"))
    return out


def test_exit_codes(files, tmp_path: Path) -> None:
    assert runner.invoke(app, ["inspect", str(files["clean"])]).exit_code == 0
    r = runner.invoke(app, ["inspect", str(files["evil"])])
    assert r.exit_code == 1 and "os.system" in r.output
    assert runner.invoke(app, ["inspect", str(files["unknown"]), "--fail-on", "critical"]).exit_code == 0
    assert runner.invoke(app, ["inspect", str(files["unknown"])]).exit_code == 1
    assert runner.invoke(app, ["inspect", str(tmp_path / "nope.pt")]).exit_code == 2


def test_json_output(files) -> None:
    r = runner.invoke(app, ["inspect", str(files["evil"]), "--format", "json"])
    doc = json.loads(r.output)
    assert doc["verdict"] == "fail"
    assert doc["findings"][0]["rule_id"] == "BASTION-SC-001"
    assert ScanResult.from_json_dict(doc).findings[0].location == str(files["evil"])


def _check_sarif(doc: dict) -> None:
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "bastion" and driver["version"]
    ids = [r["id"] for r in driver["rules"]]
    assert len(ids) == len(set(ids))
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
        assert 0.0 <= float(rule["properties"]["security-severity"]) <= 10.0
    for res in run["results"]:
        assert res["ruleId"] in ids and ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in {"error", "warning", "note", "none"}
        assert res["message"]["text"]
        assert res["locations"]


def test_sarif_output(files, tmp_path: Path) -> None:
    out = tmp_path / "r.sarif"
    r = runner.invoke(app, ["inspect", str(files["evil"]), str(files["unknown"]), "--format", "sarif", "-o", str(out)])
    assert r.exit_code == 1
    doc = json.loads(out.read_text())
    _check_sarif(doc)
    results = doc["runs"][0]["results"]
    evil = next(r for r in results if r["ruleId"] == "BASTION-SC-001")
    loc = evil["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"].endswith("evil.bin") and loc["region"]["byteOffset"] == 0
    assert evil["properties"]["security-severity"] == Severity.critical.security_severity
    assert {r["level"] for r in results} == {"error"}


def test_sarif_for_findings_without_location() -> None:
    f = Finding(rule_id="BASTION-EVASION-001", title="PGD succeeds", severity=Severity.medium, check="evasion",
                remediation="train adversarially")
    doc = render_sarif(ScanResult(checks=[CheckResult(name="evasion", kind="evasion", findings=[f])]))
    _check_sarif(doc)
    res = doc["runs"][0]["results"][0]
    assert res["level"] == "warning" and "logicalLocations" in res["locations"][0]


def test_inspect_check(files) -> None:
    check = inspect_check([files["evil"], files["clean"]])
    assert check.metrics["files_scanned"] == 2 and check.metrics["failed"]
    assert check.findings[0].severity is Severity.critical


def test_load_model_refuses_and_loads(files, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(UnsafeFileError, match="os.system"):
        load_model(files["evil"])
    p = tmp_path / "w.pt"
    torch.save({"w": torch.arange(3.0)}, p)
    assert torch.equal(load_model(p)["w"], torch.arange(3.0))
    with pytest.raises(UnsafeFileError, match="allow_pickle"):
        load_model(files["clean"])
    assert load_model(files["clean"], allow_pickle=True) == {}


def test_load_model_skops_and_safetensors(tmp_path: Path) -> None:
    import numpy as np
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).normal(size=(20, 3))
    y = (X[:, 0] > 0).astype(int)
    p = tmp_path / "m.skops"
    sio.dump(LogisticRegression().fit(X, y), p)
    est = load_model(p)
    assert est.predict(X).shape == (20,)
    from corpus import _safetensors

    st = tmp_path / "w.safetensors"
    st.write_bytes(_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                np.array([1.0, 2.0], dtype="<f4").tobytes()))
    assert load_model(st)["a"].tolist() == [1.0, 2.0]


def test_output_pointing_at_a_directory_is_a_usage_error(files, tmp_path: Path) -> None:
    from bastion.errors import UsageError

    for fmt in ("text", "json", "sarif"):     # main() turns a UsageError into one line and exit 2
        r = runner.invoke(app, ["inspect", str(files["evil"]), "--format", fmt, "-o", str(tmp_path)])
        assert isinstance(r.exception, UsageError) and "is a directory" in str(r.exception)
    r = runner.invoke(app, ["inspect", str(files["evil"]), "-o", str(files["clean"] / "x.json")])
    assert isinstance(r.exception, UsageError) and "is a file" in str(r.exception)


def test_non_utf8_file_names_in_json_and_files(tmp_path: Path) -> None:
    import os

    d = tmp_path / "models"
    d.mkdir()
    name = os.fsdecode(b"evil\xff.pkl")
    (d / name).write_bytes(RCE_P0)
    r = runner.invoke(app, ["inspect", str(d), "--format", "json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["findings"][0]["location"].endswith("evil\\xff.pkl")
    for fmt, out in (("json", "r.json"), ("sarif", "r.sarif"), ("text", "r.txt")):
        r = runner.invoke(app, ["inspect", str(d), "--format", fmt, "-o", str(tmp_path / out)])
        text = (tmp_path / out).read_text("utf-8")          # valid UTF-8
        assert r.exit_code == 1
        if fmt == "json":
            assert json.loads(text)["findings"][0]["location"].endswith("evil\\xff.pkl")
        elif fmt == "sarif":
            assert json.loads(text)["runs"][0]["results"]
        else:
            assert "FAIL 1 file(s) scanned" in text        # (the table folds the long file column)


def test_nothing_scanned_and_not_analysed_in_text_output(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["inspect", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "nothing scanned" in r.output
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    r = runner.invoke(app, ["inspect", str(tmp_path / "blob.bin"), "--format", "json"])
    doc = json.loads(r.output)
    assert r.exit_code == 2 and doc["status"] == "incomplete"
    assert doc["checks"][0]["metrics"]["error_files"][0]["kind"] == "not-analysed"
    r = runner.invoke(app, ["inspect", str(tmp_path / "blob.bin")])
    assert "not analysed:" in r.output and "INCOMPLETE" in r.output


def test_text_output_is_one_unfolded_line_per_finding(tmp_path: Path) -> None:
    d = tmp_path / ("a-rather-long-directory-name-" * 4)
    d.mkdir()
    (d / "evil.pkl").write_bytes(RCE_P0)
    r = runner.invoke(app, ["inspect", str(d), "-o", str(tmp_path / "r.txt")])
    line = next(x for x in (tmp_path / "r.txt").read_text().splitlines() if "BASTION-SC-001" in x)
    assert line.startswith("critical") and str(d / "evil.pkl") in line and "Imports os.system" in line
    assert r.exit_code == 1
