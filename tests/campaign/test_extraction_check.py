"""The ``extraction`` check: a logistic regression behind its scores is copied exactly (a high
finding mapped to ATLAS AML.T0024.002 / AML.T0005 and OWASP ML05); a budget below what equation
solving needs is reported with what and why while the other checks still run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from bastion.campaign.runner import scan
from bastion.core.results import ScanResult


def _policy(tmp_path: Path, checks: list[dict], gates: list[str] | None = None) -> Path:
    import skops.io
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((200, 5))
    y = ((x - 0.5) @ rng.normal(size=(5, 3))).argmax(1)
    skops.io.dump(LogisticRegression(C=10.0, max_iter=2000).fit(x, y), tmp_path / "lr.skops")
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
    doc = {"version": 2, "name": "theft", "seed": 0,
           "target": {"model": "sklearn:lr.skops", "bounds": [0.0, 1.0]},
           "datasets": {"eval": {"source": "npz:d.npz"}}, "checks": checks, "gates": gates or [],
           "output": {"dir": str(tmp_path / "out")}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _scan(path: Path) -> ScanResult:
    return scan(path, write=False, workers=1)


def test_a_linear_model_behind_its_scores_is_copied_exactly(tmp_path: Path) -> None:
    res = _scan(_policy(tmp_path, [{"name": "theft", "kind": "extraction", "attacks": ["equation-solving"]}],
                        ["fidelity[theft, attack=equation-solving] <= 0.5"]))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    assert check.values("fidelity", attack="equation-solving") == [1.0]
    assert check.values("queries") == [6.0]  # d+1 with d = 5
    (finding,) = check.findings
    assert finding.rule_id == "BASTION-EX-001" and finding.severity.value == "high"
    assert finding.atlas == ["AML.T0024.002", "AML.T0005"] and finding.owasp == ["ML05"]
    assert [a.type for a in check.artifacts] == ["fidelity_curve"]
    assert res.verdict == "fail" and not res.gates[0].passed


def test_a_budget_below_what_equation_solving_needs_is_an_error_and_the_next_check_runs(tmp_path: Path) -> None:
    res = _scan(_policy(tmp_path, [
        {"name": "small", "kind": "extraction", "attacks": ["equation-solving"], "query_budget": 4},
        {"name": "enough", "kind": "extraction", "attacks": ["equation-solving"], "query_budget": 6}]))
    small, enough = res.checks
    assert small.status == "error" and "needs 6 queries" in small.reason and "leaves 4" in small.reason
    assert not small.findings and small.values("fidelity") == []
    assert enough.status == "complete" and enough.values("fidelity") == [1.0]


def test_the_attackers_chain_transfers_from_the_copy_better_than_noise(tmp_path: Path) -> None:
    res = _scan(_policy(tmp_path, [{
        "name": "theft", "kind": "extraction", "query_budget": 120,
        "attacks": [{"attack": "knockoff", "params": {"rounds": 2, "epochs": 60, "lr": 0.01}}, "equation-solving"],
        "transfer": {"eps": 0.15, "steps": 20}}], ["transfer_success_rate[theft, attack=knockoff, eps=0.15, norm=linf] <= 0.3"]))
    check = res.checks[0]
    assert check.status == "complete", check.reason
    assert check.values("queries", attack="knockoff") == [120.0] and len(check.artifacts) == 2
    for attack in ("knockoff", "equation-solving"):
        (t,) = check.values("transfer_success_rate", attack=attack, eps=0.15, norm="linf")
        (noise,) = check.values("noise_success_rate", attack=attack)
        assert t > noise + 0.2, (attack, t, noise)
    assert check.metrics["attacks"]["knockoff"]["transfer"]["inputs"] > 20
    assert not res.gates[0].passed  # a gate reads the chain's figure by attack, eps and norm


def test_a_gate_on_a_transfer_eps_the_check_does_not_run_is_refused(tmp_path: Path) -> None:
    import pytest

    from bastion.errors import PolicyError

    with pytest.raises(PolicyError, match="eps"):
        _scan(_policy(tmp_path, [{"name": "theft", "kind": "extraction", "attacks": ["equation-solving"],
                                  "transfer": {"eps": 0.15}}], ["transfer_success_rate[theft, eps=0.3] <= 0.3"]))


def test_knockoff_adaptive_queries_the_labelled_query_set_within_the_budget(tmp_path: Path) -> None:
    path = _policy(tmp_path, [{"name": "theft", "kind": "extraction", "query_budget": 60, "query_set": {"role": "holdout"},
                               "attacks": [{"attack": "knockoff", "params": {"strategy": "adaptive", "rounds": 2,
                                                                              "epochs": 5}}]}])
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "q.npz", x=rng.random((90, 5)).astype(np.float32), y=rng.integers(0, 3, 90))
    doc = yaml.safe_load(path.read_text())
    doc["datasets"]["holdout"] = {"source": "npz:q.npz"}
    path.write_text(yaml.safe_dump(doc))
    check = _scan(path).checks[0]
    assert check.status == "complete", check.reason
    assert check.values("queries", attack="knockoff") == [60.0]
