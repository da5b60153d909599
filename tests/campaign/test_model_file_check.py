"""The model-file check runs the scanner inside a scan and feeds gates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bastion.campaign.runner import scan

MALICIOUS = b"cos\nsystem\n(S'echo owned'\ntR."  # protocol-0 pickle calling os.system; never loaded


def _policy(tmp_path: Path, files: list[str]) -> dict:
    return {"version": 1, "checks": [{"name": "files", "kind": "model-file", "paths": files}],
            "gates": ["findings_high[files] <= 0"], "output": {"dir": str(tmp_path / "out")}}


def test_malicious_file_fails_the_gate(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(MALICIOUS)
    np.save(tmp_path / "ok.npy", np.arange(5.0))
    result = scan(_policy(tmp_path, ["weights.bin", "ok.npy"]))
    assert result.verdict == "fail"
    check = result.checks[0]
    counts = {m.name: m.value for m in check.finding_counts()}
    assert counts["findings_critical"] >= 1
    assert any("system" in f.title for f in check.findings)
    assert all(f.location and "weights.bin" in f.location for f in check.findings)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    sarif = json.loads((tmp_path / "out" / "report.sarif").read_text())
    assert doc["verdict"] == "fail" and sarif["runs"][0]["results"]


def test_benign_file_passes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "ok.npy", np.arange(5.0))
    result = scan(_policy(tmp_path, ["ok.npy"]))
    assert result.verdict == "pass" and result.status == "complete"
    assert {m.name: m.value for m in result.checks[0].finding_counts()}["findings_high"] == 0
