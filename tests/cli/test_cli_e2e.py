"""End-to-end runs of the installed ``bastion`` command: exit codes and the files written."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest


SLOW_MODEL = '''
import time
import torch
import torch.nn as nn


class Slow(nn.Module):
    """A linear model on 8 features that sleeps on every forward pass (or crashes)."""

    input_shape = (8,)

    def __init__(self, delay: float = 0.0, crash_after: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 3)
        with torch.no_grad():
            self.lin.weight.mul_(10.0)
            self.lin.bias.zero_()
        self.delay, self.crash_after, self.calls = delay, crash_after, 0

    def forward(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("model server fell over")
        time.sleep(self.delay)
        return self.lin(x - 0.5)


def slow():
    return Slow(delay=0.05)


def crashing():
    return Slow(crash_after=30)


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 8, generator=g)
    return x.numpy(), Slow()(x).argmax(1).detach().numpy()


def failing_factory():
    from bastion.errors import BastionRuntimeError
    raise BastionRuntimeError("the model registry is down")
'''


def _policy(tmp_path: Path, model: str, checks: str, gates: str = "") -> Path:
    """Write a policy whose target and data come from the test's models.py."""
    (tmp_path / "models.py").write_text(SLOW_MODEL)
    indent = lambda block: "".join(f"  {line}\n" for line in block.splitlines())  # noqa: E731
    models = tmp_path / "models.py"
    text = (f"version: 1\nname: test\ntarget:\n  model: python:{models}:{model}\n"
            f"data:\n  source: python:{models}:data\n"
            f"checks:\n{indent(checks)}gates:\n{indent(gates) if gates else '  []' + chr(10)}"
            f"output:\n  dir: {tmp_path / 'out'}\n")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_version(cli) -> None:
    r = cli(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("bastion ")


@pytest.mark.parametrize("cmd", [[], ["scan"], ["attack"], ["demo"], ["inspect"]])
def test_help_everywhere(cli, cmd: list[str]) -> None:
    r = cli(cmd + ["--help"])
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


@pytest.mark.timeout(900)
def test_demo_writes_reports(cli, tmp_path: Path) -> None:
    r = cli(["demo", "--out", str(tmp_path), "--json"], timeout=400)
    assert r.returncode == 0, r.stderr
    summary = {m["model"]: m for m in json.loads(r.stdout)["models"]}  # --json: stdout is only the JSON
    assert set(summary) == {"demo:digits-cnn", "demo:breast-cancer", "demo:digits-mlp"}
    privacy = json.loads((tmp_path / "privacy" / "report.json").read_text())  # the first report shows a real leak
    assert privacy["status"] == "complete" and summary["demo:digits-mlp"]["membership_auc"] > 0.6
    assert any(f["rule_id"] == "BASTION-MI-001" for f in privacy["findings"])
    for name in ("digits-cnn", "breast-cancer"):
        for f in ("report.json", "report.html", "junit.xml", "report.sarif"):
            assert (tmp_path / name / f).is_file(), f"{name}/{f} missing"
        doc = json.loads((tmp_path / name / "report.json").read_text())
        assert doc["schema_version"] and doc["status"] == "complete"
        assert doc["verdict"] in ("pass", "fail")
        evasion = [c for c in doc["checks"] if c["kind"] == "evasion"]
        assert evasion and all(m["value"] > 0.9 for c in evasion for m in c["measurements"]
                                   if m["name"] == "clean_accuracy")
        assert all("passed" in g and "value" in g for g in doc["gates"])
        row = summary[f"demo:{name}"]
        assert row["verdict"] == doc["verdict"] and row["gates"] == len(doc["gates"])
        assert Path(row["report"]) == tmp_path / name / "report.html"
    digits = json.loads((tmp_path / "digits-cnn" / "report.json").read_text())
    types = {a["type"] for c in digits["checks"] for a in c["artifacts"]}
    assert {"example_grid", "histogram", "query_curve"} <= types  # minimal perturbations, black-box vs queries
    assert "gradient-masking" in {c["kind"] for c in digits["checks"]}
    assert "digits" in r.stdout and "breast" in r.stdout


def test_scan_exit_codes_follow_gates(cli, tmp_path: Path) -> None:
    checks = "- {name: fgsm, kind: evasion, attack: fgsm, eps: [0.3]}\n"
    ok = _policy(tmp_path, "crashing", checks, "- clean_accuracy[fgsm] >= 0.5\n")
    r = cli(["scan", str(ok), "--quiet"])
    assert r.returncode == 0, r.stderr
    bad = _policy(tmp_path, "crashing", checks, "- robust_accuracy[fgsm, eps=0.3] >= 0.99\n")
    r = cli(["scan", str(bad), "--json"])
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "fail" and doc["gates"][0]["passed"] is False
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verdict"] == "fail"


def test_invalid_policy_exit_2_without_traceback(cli, tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\ntarget: {model: demo:digits-cnn}\ndata: {source: demo:digits}\n"
                 "checks:\n  - name: a\n    kind: evasion\n    epz: 0.1\n")
    r = cli(["scan", str(p)])
    assert r.returncode == 2
    assert "bad.yaml:7" in r.stderr and "epz" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, words", [
    (["attack", "--target", "model.pkl", "--data", "demo:digits"], "pickle"),
    (["attack", "--target", "demo:digits-cnn", "--data", "npz:missing.npz"], "no such data file"),
    (["attack", "--target", "demo:digits-cnn", "--data", "demo:breast-cancer"], "shape"),
    (["attack", "--target", "demo:digits-cnn", "--data", "demo:digits", "--attack", "nope"], "unknown attack"),
    (["attack", "--target", "demo:digits-cnn", "--data", "demo:digits", "--norm", "l7"], "norm"),
])
def test_attack_usage_errors_exit_2(cli, tmp_path: Path, args: list[str], words: str) -> None:
    r = cli(args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ["scan"],                                                     # missing argument
    ["attack", "--eps", "abc", "--target", "x", "--data", "y"],   # not a number
    ["--threads", "0", "attacks"],                                # out of range
    ["no-such-command"],
])
def test_command_line_mistakes_exit_2(cli, args: list[str]) -> None:
    r = cli(args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_threads_option_is_recorded(cli, tmp_path: Path) -> None:
    p = _policy(tmp_path, "crashing", "- {name: fgsm, kind: evasion, attack: fgsm, eps: [0.3]}\n")
    r = cli(["--threads", "1", "scan", str(p), "--json"])
    assert r.returncode in (0, 1), r.stderr
    assert json.loads(r.stdout)["tool"]["torch_threads"] == "1"


def test_attack_json(cli) -> None:
    r = cli(["attack", "--target", "demo:digits-cnn", "--data", "demo:digits", "--attack", "pgd",
             "--eps", "0.05", "--eps", "0.1", "--limit", "40", "--param", "steps=5", "--json"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert [m["eps"] for m in res] == [0.05, 0.1]
    assert res[1]["robust_accuracy"] <= res[0]["robust_accuracy"] <= res[0]["clean_accuracy"]
    assert res[1]["norms"]["linf"]["max"] <= 0.1 + 1e-6


def test_runtime_error_exit_3(cli, tmp_path: Path) -> None:
    p = _policy(tmp_path, "failing_factory", "- {name: fgsm, kind: evasion, attack: fgsm}\n")
    r = cli(["scan", str(p)])
    assert r.returncode == 3, r.stderr
    assert "registry is down" in r.stderr and "Traceback" not in r.stderr


def test_crash_inside_a_check_keeps_the_others(cli, tmp_path: Path) -> None:
    checks = ("- {name: first, kind: evasion, attack: fgsm, eps: [0.1]}\n"
              "- {name: crashes, kind: evasion, attack: pgd, eps: [0.1], params: {steps: 50}}\n"
              "- {name: third, kind: evasion, attack: fgsm, eps: [0.2]}\n")
    p = _policy(tmp_path, "crashing", checks, "- clean_accuracy[first] >= 0.5\n")
    r = cli(["scan", str(p), "--quiet"])
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["status"] == "incomplete" and "crashes" in doc["status_reason"]
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert statuses["crashes"] == "error" and statuses["first"] == "complete" and "third" in statuses
    # the gate on 'first' passed, but a check that errored is a runtime error: never a pass
    assert doc["verdict"] == "fail" and r.returncode == 3, r.stderr
    assert "crashes" in r.stderr and "Traceback" not in r.stderr
    for f in ("report.html", "junit.xml", "report.sarif"):
        assert (tmp_path / "out" / f).is_file()


def test_ctrl_c_leaves_incomplete_valid_report(cli_env: dict[str, str], bastion_exe: list[str], tmp_path: Path) -> None:
    checks = ("- {name: quick, kind: evasion, attack: fgsm, eps: [0.1], examples: 0}\n"
              "- {name: slow, kind: evasion, attack: pgd, eps: [0.1], params: {steps: 500, random_start: false}}\n")
    p = _policy(tmp_path, "slow", checks)
    report = tmp_path / "out" / "report.json"
    proc = subprocess.Popen(bastion_exe + ["scan", str(p), "--quiet"], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if report.exists():
            try:
                if len(json.loads(report.read_text())["checks"]) >= 1:
                    break
            except (json.JSONDecodeError, KeyError):
                pytest.fail("report.json was observed half-written")
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the first check never finished")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(report.read_text())
    assert doc["status"] == "incomplete"
    assert [c["name"] for c in doc["checks"]][0] == "quick"
    assert "interrupted" in (doc["status_reason"] or "")
