"""A failed, skipped or partial check never looks like a pass (issue 7): errored checks fail the
verdict and exit 3, gates on them read "no measurement", unreadable model files fail their gate,
user errors inside a check finish the report, and gates that can never match are refused early."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bastion.campaign.gates import parse_gate
from bastion.campaign.policy import load_policy
from bastion.campaign.runner import exit_code, scan
from bastion.core.results import CheckResult
from bastion.errors import PolicyError, UsageError

MODELS = '''
import numpy as np

W = np.array([[2.0, -1.0, 0.5], [-1.0, 2.0, 0.5], [0.5, 0.5, -2.0], [1.0, -2.0, 1.0]])
calls = {"n": 0}


def probs(x):
    z = (np.asarray(x, float) - 0.5) @ W
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def good():
    return probs


def nan_later():
    """Answers the loader's probe, then returns NaN: a model misbehaving mid-run."""
    def f(x):
        calls["n"] += 1
        return probs(x) if calls["n"] <= 2 else np.full((len(x), 3), np.nan)
    return f


def linear():
    import torch

    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W.T, dtype=torch.float32))
        lin.bias.copy_(-0.5 * torch.tensor(W.sum(0), dtype=torch.float32))
    lin.input_shape = (4,)
    return lin


def exits():
    import sys
    sys.exit(7)


def raises():
    raise ValueError("weights not found")


def data():
    x = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    return x, probs(x).argmax(1)
'''


def _policy(tmp_path: Path, model: str, checks: list[dict], gates: list[str]) -> dict:
    (tmp_path / "m.py").write_text(MODELS)
    return {"version": 1, "name": "t", "target": {"model": f"python:{tmp_path / 'm.py'}:{model}"},
            "data": {"source": f"python:{tmp_path / 'm.py'}:data"}, "checks": checks, "gates": gates,
            "output": {"dir": str(tmp_path / "out")}}


SQUARE = {"name": "sq", "kind": "evasion", "attack": "square", "eps": [0.1], "params": {"max_queries": 20},
          "examples": 0}


def test_model_returning_nan_mid_run_is_an_error_not_a_pass(tmp_path: Path) -> None:
    pol = _policy(tmp_path, "nan_later", [SQUARE], ["findings_high[sq] <= 0", "queries[sq] <= 1000000"])
    result = scan(pol)
    check = result.checks[0]
    assert check.status == "error" and "NaN" in (check.reason or "")
    assert not check.finding_counts()                                 # no counter that reads 0
    assert all(not g.passed and g.value is None and "no measurement" in g.reason for g in result.gates)
    assert result.verdict == "fail" and exit_code(result) == 3
    out = tmp_path / "out"
    doc = json.loads((out / "report.json").read_text())              # the report is finished
    assert doc["status"] == "incomplete" and doc["verdict"] == "fail" and "sq" in doc["status_reason"]
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.html", "junit.xml", "report.sarif"}


def test_gate_on_errored_check_has_no_measurement() -> None:
    errored = CheckResult(name="files", kind="model-file", status="error", reason="boom")
    res = parse_gate("findings_high[files] <= 0").evaluate([errored])
    assert not res.passed and res.value is None and "no measurement" in res.reason and "boom" in res.reason


def test_partial_measurement_cannot_pass() -> None:
    partial = CheckResult(name="pgd", kind="evasion", status="incomplete", reason="query budget exhausted")
    partial.measure("robust_accuracy", 0.9, "ratio", attack="pgd", eps=0.1)
    res = parse_gate("robust_accuracy[pgd] >= 0.5").evaluate([partial])
    assert not res.passed and res.value == 0.9 and "incomplete" in res.reason


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_model_file_that_cannot_be_read_fails_its_gate(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "weights.pkl")
    np.save(tmp_path / "ok.npy", np.arange(3.0))
    pol = {"version": 1, "checks": [{"name": "files", "kind": "model-file", "paths": ["weights.pkl", "ok.npy"]}],
           "gates": ["findings_high[files] <= 0"], "output": {"dir": str(tmp_path / "out")}}
    (tmp_path / "p.yaml").write_text(json.dumps(pol))
    result = scan(tmp_path / "p.yaml")
    assert result.checks[0].status != "complete"
    assert not result.gates[0].passed and result.verdict == "fail"


def test_missing_model_file_path_is_refused_when_the_policy_loads(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nchecks:\n  - name: files\n    kind: model-file\n    paths:\n      - here.npy\n"
                 "      - missing.pt\n")
    (tmp_path / "here.npy").write_bytes(b"")
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    assert err.value.line == 7 and err.value.field == "checks[0].paths[1]" and "missing.pt" in str(err.value)


HEAD = ("version: 1\ntarget: {model: demo:digits-cnn}\ndata: {source: demo:digits}\nchecks:\n"
        "  - {name: pgd-linf, kind: evasion, attack: pgd, eps: [0.05, 0.1]}\n"
        "  - {name: df, kind: evasion, attack: deepfool, norm: l2, eps: [0.5]}\n"
        "  - {name: files, kind: model-file, paths: [.]}\ngates:\n")


@pytest.mark.parametrize("gate, words", [
    ("Robust_accuracy[pgd] >= 0.5", "did you mean 'robust_accuracy'"),
    ("robust_accuracy[PGD] >= 0.5", "did you mean 'pgd'"),
    ("robust_accuracy[pgd, eps=0.15] >= 0.5", "measured eps values: 0.05, 0.1"),
    ("robust_accuracy[pgd, epz=0.1] >= 0.5", "did you mean 'eps'"),
    ("robust_accuracy[files] >= 0.5", "no check matching [files] measures 'robust_accuracy'"),
    ("robust_accuracy[df, eps=1.0] >= 0.5", "measured eps values: 0.5"),
])
def test_gates_that_can_never_match_are_refused_at_load(tmp_path: Path, gate: str, words: str) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(HEAD + f"  - '{gate}'\n")
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    assert err.value.line == 9 and err.value.field == "gates[0]" and words in str(err.value), str(err.value)


def test_gates_that_can_match_load(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(HEAD + "  - robust_accuracy[pgd, eps=0.1, norm=linf] >= 0.5\n  - robust_accuracy[df, eps=0.5] > 0\n"
                 "  - findings_high[files] <= 0\n  - files_scanned[files] >= 1\n  - clean_accuracy >= 0.9\n")
    loaded = load_policy(p)
    assert loaded.gate_reads == [["pgd-linf"], ["df"], ["files"], ["files"], ["pgd-linf", "df"]]


@pytest.mark.parametrize("field, value", [("whitebox", "apgd-cee"), ("blackbox", "squar"), ("blackbox", "pgd"),
                                          ("unbounded", "pgd"), ("unbounded", "deepfoo")])
def test_gradient_masking_refuses_unknown_or_wrong_attacks(tmp_path: Path, field: str, value: str) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(f"version: 1\ntarget: {{model: demo:digits-cnn}}\ndata: {{source: demo:digits}}\nchecks:\n"
                 f"  - name: gm\n    kind: gradient-masking\n    {field}: {value}\n")
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    assert err.value.field == f"checks[0].{field}" and err.value.line == 7


def test_minimal_attack_robust_accuracy_is_per_eps_and_selectable(tmp_path: Path) -> None:
    """DeepFool's robust accuracy is read off at each policy ε (not 0.0 whatever ε), falls as ε
    grows, and gates reach each ε."""
    checks = [{"name": "df", "kind": "evasion", "attack": "deepfool", "norm": "l2", "eps": [0.01, 0.1, 5.0],
               "examples": 0}]
    gates = ["robust_accuracy[deepfool, eps=0.01] >= 0.5", "robust_accuracy[df, eps=5] <= 0.5"]
    pol = _policy(tmp_path, "linear", checks, gates)
    result = scan(pol, write=False)
    check = result.checks[0]
    measured = [m for m in check.measurements if m.name == "robust_accuracy"]
    assert [m.where["eps"] for m in measured] == [0.01, 0.1, 5.0]    # only at each ε: never "0.0 unbounded"
    accs = [m.value for m in measured]
    assert accs[0] > 0.5 and accs[0] >= accs[1] >= accs[2]            # bounded by ε, monotone
    assert [g.value for g in result.gates] == [accs[0], accs[2]]


@pytest.mark.parametrize("factory, words", [("exits", "sys.exit(7)"), ("raises", "ValueError: weights not found")])
def test_failing_factory_is_a_user_error_naming_factory_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 factory: str, words: str) -> None:
    """A factory's sys.exit(7) never becomes bastion's exit code; its exception is the user's code
    failing (exit 2, the factory and the policy field named), not an internal error."""
    (tmp_path / "m.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path.parent)  # the factory's file is found relative to the policy
    p = tmp_path / "policy.yaml"
    p.write_text(f"version: 1\ntarget:\n  model: python:m.py:{factory}\ndata: {{source: 'python:m.py:data'}}\n"
                 f"checks:\n  - {{name: a, kind: evasion, attack: fgsm}}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    with pytest.raises(UsageError) as err:
        scan(p)
    msg = str(err.value)
    assert err.value.exit_code == 2 and "policy.yaml:3" in msg and "target.model" in msg
    assert f"m.py:{factory}" in msg and words in msg
    doc = json.loads((tmp_path / "out" / "report.json").read_text())  # the report says it stopped
    assert doc["status"] == "incomplete" and doc["verdict"] == "fail"


def test_declared_measurements_cover_what_checks_measure(tmp_path: Path) -> None:
    """The names gates are checked against at load time are the names checks really produce."""
    np.save(tmp_path / "ok.npy", np.arange(3.0))
    checks = [{"name": "fg", "kind": "evasion", "attack": "fgsm", "eps": [0.1, 0.2]},
              {"name": "df", "kind": "evasion", "attack": "deepfool", "norm": "l2", "eps": [0.1]},
              {"name": "sq", "kind": "evasion", "attack": "square", "eps": [0.1], "params": {"max_queries": 10}},
              {"name": "files", "kind": "model-file", "paths": [str(tmp_path / "ok.npy")]}]
    pol = _policy(tmp_path, "linear", checks, [])
    loaded = load_policy(pol)
    result = scan(loaded, write=False)
    for check, res in zip(loaded.checks, result.checks):
        view = check.gate_view()
        assert res.status == "complete"
        assert {m.name for m in res.measurements} <= view.metrics, check.name
        for m in res.measurements:
            for key, value in m.where.items():
                allowed = view.fields[key]
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                assert allowed is None or shown in allowed, (check.name, key, value)
