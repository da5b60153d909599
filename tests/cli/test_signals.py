"""Ctrl-C and SIGTERM always stop, and say so (issue 7): real `bastion` processes, real signals.

The models write a marker file once they have been called a few times, so each signal arrives
while the phase under test (an attack, the gradient-masking comparison, the data loading) runs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

MODELS = '''
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

MARK = Path(os.environ["BASTION_TEST_MARK"])


class Slow(nn.Module):
    """A linear model on 8 features that sleeps on every call and marks its 5th call."""

    input_shape = (8,)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 5:
            MARK.write_text("running")
        time.sleep(0.03)
        return self.lin(x - 0.5) * 10


def slow():
    return Slow()


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 8, generator=g)
    with torch.no_grad():
        return x.numpy(), (Slow().lin(x - 0.5)).argmax(1).numpy()


def slow_data():
    MARK.write_text("loading")
    time.sleep(60)
    return data()
'''


def _start(exe: list[str], args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "m.py").write_text(MODELS)
    mark = tmp_path / "mark"
    env = {**env, "BASTION_TEST_MARK": str(mark)}
    proc = subprocess.Popen(exe + args, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not mark.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the phase under test never started (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    time.sleep(0.3)
    return proc, mark


def _policy(tmp_path: Path, checks: str, data: str = "data", formats: str = "[json, html, junit, sarif]") -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(f"version: 1\nname: signal test\ntarget: {{model: 'python:m.py:slow'}}\n"
                 f"data: {{source: 'python:m.py:{data}'}}\nchecks:\n{checks}"
                 f"output: {{dir: out, formats: {formats}}}\n")
    return p


def test_ctrl_c_in_gradient_masking_stops_the_scan(cli_env: dict[str, str], bastion_exe: list[str], tmp_path: Path) -> None:
    """The white-box attack of the comparison swallowed Ctrl-C: the scan went on and said 'complete'."""
    p = _policy(tmp_path, "  - {name: gm, kind: gradient-masking, n_samples: 24, eps: 0.1, whitebox: pgd,\n"
                          "     blackbox: square, blackbox_queries: 200}\n"
                          "  - {name: after, kind: evasion, attack: fgsm, eps: [0.1]}\n")
    # the marker is written at the 5th call: inside pgd (randomised-output check: 3 calls, gradients: 2)
    proc, _ = _start(bastion_exe, ["scan", str(p), "--quiet"], cli_env, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["status"] == "incomplete" and doc["verdict"] == "fail"
    assert "interrupted" in doc["status_reason"]
    assert [c["name"] for c in doc["checks"]] == ["gm"] and doc["checks"][0]["status"] == "incomplete"
    assert "interrupted" in err and "Traceback" not in err


def test_sigterm_while_loading_finishes_a_truthful_report(cli_env: dict[str, str], bastion_exe: list[str], tmp_path: Path) -> None:
    """SIGTERM (CI cancel) during data loading: exit 143, no stale reports of an earlier run beside
    the new report.json, and a message that says no check ran."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.html", "junit.xml", "report.sarif"):
        (out / name).write_text("STALE from a previous run")
    p = _policy(tmp_path, "  - {name: a, kind: evasion, attack: fgsm}\n", data="slow_data", formats="[json, junit]")
    proc, _ = _start(bastion_exe, ["scan", str(p)], cli_env, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "while loading" in err and "0 of 1 check(s) done" in err
    doc = json.loads((out / "report.json").read_text())
    assert doc["status"] == "incomplete" and doc["verdict"] == "fail" and doc["checks"] == []
    assert "STALE" not in (out / "junit.xml").read_text()
    assert not (out / "report.html").exists() and not (out / "report.sarif").exists()


def test_ctrl_c_in_attack_command_exits_130_with_incomplete_results(cli_env: dict[str, str],
                                                                     bastion_exe: list[str], tmp_path: Path) -> None:
    proc, _ = _start(bastion_exe, ["attack", "--target", "python:m.py:slow", "--data", "python:m.py:data", "--attack", "pgd",
                      "--eps", "0.05", "--eps", "0.2", "--param", "steps=400", "--param", "batch_size=8", "--json"],
                     cli_env, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["status"] == "incomplete"
    first = doc["results"][0]
    assert first["complete"] is False and first["robust_accuracy"] is None   # never clean accuracy posing as robust
    assert [r["eps"] for r in doc["not_run"]] == [0.2]                        # the other ε is not dropped silently
    assert "not run" in err
