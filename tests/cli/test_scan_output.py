"""`bastion scan` output for machines and CI logs: --format json|sarif|junit on stdout, defaults
from BASTION_FORMAT and BASTION_FAIL_ON, lines never cut at 80 columns when stdout is a pipe."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

MALICIOUS = b"cos\nsystem\n(S'echo owned'\ntR."  # protocol-0 pickle calling os.system; never loaded


def _policy(tmp_path: Path) -> Path:
    (tmp_path / "weights.bin").write_bytes(MALICIOUS)
    out = tmp_path / ("a-long-report-directory-name-" * 4) / "reports"
    p = tmp_path / "policy.yaml"
    p.write_text(f"version: 1\nname: output test\nchecks:\n  - {{name: files, kind: model-file, paths: [weights.bin],"
                 f" fail_on: critical}}\noutput: {{dir: '{out}'}}\n")
    return p


def _run(exe: list[str], args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(exe + args, env=env, capture_output=True, text=True, timeout=120)


def test_formats_on_stdout_and_environment_defaults(cli_env: dict[str, str], bastion_exe: list[str],
                                                    tmp_path: Path) -> None:
    p = _policy(tmp_path)
    env = {k: v for k, v in cli_env.items() if k not in ("COLUMNS", "BASTION_FORMAT", "BASTION_FAIL_ON")}

    r = _run(bastion_exe, ["scan", str(p)], env)                    # no gate, no fail_on: pass
    assert r.returncode == 0, r.stderr
    report_line = next(line for line in r.stdout.splitlines() if line.startswith("Report:"))
    assert report_line.endswith("reports/report.html") and len(report_line) > 80   # not cut at 80 columns

    r = _run(bastion_exe, ["scan", str(p), "--format", "sarif"], env)
    assert r.returncode == 0, r.stderr
    sarif = json.loads(r.stdout)
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"]

    r = _run(bastion_exe, ["scan", str(p)], {**env, "BASTION_FORMAT": "junit", "BASTION_FAIL_ON": "critical"})
    assert r.returncode == 1, r.stderr                               # the environment's fail-on applies
    assert ET.fromstring(r.stdout).tag in ("testsuites", "testsuite")

    r = _run(bastion_exe, ["scan", str(p), "--format", "json", "--fail-on", "critical"], env)
    assert r.returncode == 1 and json.loads(r.stdout)["verdict"] == "fail"

    r = _run(bastion_exe, ["scan", str(p), "--format", "yaml"], env)
    assert r.returncode == 2 and "--format" in r.stderr and "Traceback" not in r.stderr


def test_out_pointing_at_a_file_is_a_usage_error(cli_env: dict[str, str], bastion_exe: list[str],
                                                 tmp_path: Path) -> None:
    p = _policy(tmp_path)
    (tmp_path / "afile").write_text("x")
    r = _run(bastion_exe, ["scan", str(p), "--out", str(tmp_path / "afile")], cli_env)
    assert r.returncode == 2 and "--out" in r.stderr and "is a file" in r.stderr
    assert (tmp_path / "afile").read_text() == "x"
    r = _run(bastion_exe, ["scan", str(p), "--limit", "0"], cli_env)
    assert r.returncode == 2 and "--limit" in r.stderr
