"""A sign of gradient masking makes the evasion figures it concerns untrusted: in report.json, in
the other reports and in gates. Regression (audit): a `pgd` robust accuracy of 95-97% on a masked
model sat beside the masking finding as an "info" finding, and a gate on it passed."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bastion.campaign.policy import load_policy
from bastion.campaign.runner import scan
from bastion.campaign.trust import mark_untrusted
from bastion.core.results import CheckResult, Measurement
from bastion.core.rules import get_rule
from bastion.errors import PolicyError

MODELS = '''
import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def _split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x[:1400])), torch.from_numpy(y[:1400])).backward()
        opt.step()
    return net.eval(), x[1400:1460], y[1400:1460]


class Rounded(torch.nn.Module):
    """3-bit input rounding inside forward: zero gradients, a masked model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 7) / 7)


def _shaped(net):
    net.input_shape = (64,)
    return net


def standard():
    return _shaped(_split()[0])


def rounded():
    return _shaped(Rounded(_split()[0]))


def data():
    return _split()[1], _split()[2]
'''

MASKING = {"name": "masking", "kind": "gradient-masking", "n_samples": 40, "eps": 0.1, "blackbox_queries": 100}
PGD = {"name": "pgd-check", "kind": "evasion", "attack": "pgd", "eps": [0.05], "examples": 0}
SQUARE = {"name": "sq", "kind": "evasion", "attack": "square", "eps": [0.05], "params": {"max_queries": 20},
          "examples": 0}
GATE = "robust_accuracy[pgd, eps=0.05] >= 0.5"


def _policy(tmp_path: Path, model: str, gates: list, checks: list | None = None) -> dict:
    (tmp_path / "m.py").write_text(MODELS)
    return {"version": 1, "name": "t", "target": {"model": f"python:{tmp_path / 'm.py'}:{model}", "bounds": [0, 1]},
            "data": {"source": f"python:{tmp_path / 'm.py'}:data"}, "checks": checks or [PGD, MASKING, SQUARE],
            "gates": gates, "output": {"dir": str(tmp_path / "out"), "formats": ["json", "junit", "sarif", "html"]}}


def test_gate_on_a_masked_models_pgd_figure_fails_as_untrusted(tmp_path: Path) -> None:
    pytest.importorskip("jinja2")
    res = scan(_policy(tmp_path, "rounded", [GATE]))
    pgd = next(c for c in res.checks if c.name == "pgd-check")
    robust = next(m for m in pgd.measurements if m.name == "robust_accuracy")
    assert robust.value is not None and robust.value >= 0.5  # the figure alone would pass the gate
    gate = res.gates[0]
    assert not gate.passed and res.verdict == "fail"
    assert gate.reason.startswith("untrusted figure cannot pass") and "BASTION-EV-103" in gate.untrusted
    assert pgd.untrusted and robust.untrusted
    assert next(m for m in pgd.measurements if m.name == "clean_accuracy").untrusted is None  # masking can't touch it
    assert next(f for f in pgd.findings if f.rule_id == "BASTION-EV-001").untrusted
    # the black-box square figure is not concerned by zero gradients
    sq = next(c for c in res.checks if c.name == "sq")
    assert sq.untrusted is None and all(m.untrusted is None for m in sq.measurements)
    assert all(m.untrusted is None for m in next(c for c in res.checks if c.name == "masking").measurements)
    # every report says so
    out = tmp_path / "out"
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema_version"] == "2.1" and doc["gates"][0]["untrusted"]
    assert any(m["untrusted"] for c in doc["checks"] if c["name"] == "pgd-check" for m in c["measurements"])
    sarif = json.loads((out / "report.sarif").read_text())
    ev = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "BASTION-EV-001"]
    assert ev and ev[0]["properties"]["untrusted"] and "UNTRUSTED" in ev[0]["message"]["text"]
    junit = ET.parse(out / "junit.xml").getroot()
    case = next(c for c in junit.iter("testcase") if c.get("name") == "pgd-check")
    assert "UNTRUSTED" in "".join(case.itertext())
    html = (out / "report.html").read_text()
    assert "Untrusted figures" in html and "This figure is UNTRUSTED" in html and "⚠ untrusted" in html
    assert "untrusted" in res.summary.lower()


def test_allow_untrusted_lets_the_gate_pass_and_says_so(tmp_path: Path) -> None:
    pol = _policy(tmp_path, "rounded", [{"gate": GATE, "allow_untrusted": True}], [PGD, MASKING])
    pol["output"]["formats"] = ["json"]
    gate = scan(pol).gates[0]
    assert gate.passed and gate.untrusted and "passed on an untrusted figure" in gate.reason


def test_standard_model_figures_stay_trusted(tmp_path: Path) -> None:
    pol = _policy(tmp_path, "standard", ["robust_accuracy[pgd, eps=0.05] >= 0.0"], [PGD, MASKING])
    pol["output"]["formats"] = ["json"]
    res = scan(pol)
    assert not any(c.findings for c in res.checks if c.name == "masking")
    assert res.gates[0].passed and res.gates[0].untrusted is None
    assert all(c.untrusted is None for c in res.checks)


def _finding(sanity: str, concerns: str, check: str = "masking") -> CheckResult:
    rule = get_rule({"randomized-outputs": "BASTION-EV-101", "zero-gradients": "BASTION-EV-103"}[sanity])
    res = CheckResult(name=check, kind="gradient-masking")
    res.findings.append(rule.finding(title=rule.title, check=check, metrics={"sanity": sanity, "concerns": concerns}))
    return res


def _evasion(attack: str) -> CheckResult:
    res = CheckResult(name=attack, kind="evasion")
    res.measurements += [Measurement(name="robust_accuracy", value=0.9, unit="ratio", where={"attack": attack}),
                         Measurement(name="queries", value=10, unit="queries", where={"attack": attack})]
    return res


def test_randomised_outputs_concern_every_attack_zero_gradients_only_gradient_ones() -> None:
    checks = [_finding("zero-gradients", "gradient"), _evasion("pgd"), _evasion("square"), _evasion("transfer")]
    assert mark_untrusted(checks) == ["pgd"]
    assert checks[1].measurements[1].untrusted is None  # queries stay trusted
    checks = [_finding("randomized-outputs", "all"), _evasion("pgd"), _evasion("square")]
    assert mark_untrusted(checks) == ["pgd", "square"]
    assert "BASTION-EV-101" in (checks[2].untrusted or "")
    assert mark_untrusted([_evasion("pgd")]) == []  # no masking finding: nothing marked
    # figures evaluated in expectation over fresh draws are what a randomised model needs
    expected = _evasion("square")
    expected.measurements.append(Measurement(name="draws", value=100, unit="count", where={"attack": "square"}))
    assert mark_untrusted([_finding("randomized-outputs", "all"), expected]) == []
    pgd = _evasion("pgd")
    pgd.measurements.append(Measurement(name="draws", value=100, unit="count", where={"attack": "pgd"}))
    assert mark_untrusted([_finding("randomized-outputs", "all"), _finding("zero-gradients", "gradient", "m2"),
                           pgd]) == ["pgd"]  # zero gradients still concern it
    assert "BASTION-EV-103" in (pgd.untrusted or "") and "BASTION-EV-101" not in (pgd.untrusted or "")


def test_gate_options_are_validated(tmp_path: Path) -> None:
    pol = _policy(tmp_path, "standard", [{"gate": GATE, "allow_untrusted": "maybe"}], [PGD])
    with pytest.raises(PolicyError) as err:
        load_policy(pol)
    assert "gates[0]" in str(err.value)
    pol = _policy(tmp_path, "standard", [{"gate": GATE, "allow": True}], [PGD])
    with pytest.raises(PolicyError, match="unknown field; allowed here: gate, allow_untrusted") as err:
        load_policy(pol)
    assert err.value.field == "gates[0].allow"
    pol = _policy(tmp_path, "standard", [GATE, 12], [PGD])
    with pytest.raises(PolicyError, match="a gate is an expression or a mapping") as err:
        load_policy(pol)
    assert err.value.field == "gates[1]"
    pol = _policy(tmp_path, "standard", [{"gate": "robust_accuracy[pgdd] >= 1", "allow_untrusted": True}], [PGD])
    with pytest.raises(PolicyError, match="did you mean 'pgd'") as err:
        load_policy(pol)
    assert err.value.field == "gates[0].gate"


def test_a_schema_2_0_report_reads_as_all_trusted(tmp_path: Path) -> None:
    from bastion.outputs.report.json_report import read_report

    doc = {"schema_version": "2.0", "checks": [{"name": "pgd", "kind": "evasion", "measurements": [
        {"name": "robust_accuracy", "value": 0.5, "unit": "ratio", "where": {"attack": "pgd"}}]}],
        "gates": [{"expression": "robust_accuracy >= 0.1", "metric": "robust_accuracy", "value": 0.5,
                   "threshold": 0.1, "op": ">=", "passed": True}], "findings": []}
    (tmp_path / "report.json").write_text(json.dumps(doc))
    res = read_report(tmp_path / "report.json")
    assert res.checks[0].measurements[0].untrusted is None and res.gates[0].untrusted is None


def _worst_case(*attacks: str) -> CheckResult:
    res = CheckResult(name="variants", kind="variants")
    for model in ("full", "torch-int8"):
        for attack in (*attacks, "all"):
            res.measurements.append(Measurement(name="robust_accuracy", value=0.9, unit="ratio",
                                                where={"variant": model, "attack": attack}))
    return res


def test_a_worst_case_over_attacks_is_in_doubt_only_when_each_attack_is() -> None:
    """Before, a worst case (attack 'all', as the variants check reports) was never marked: a gate on it
    passed on a masked model whose every attack was gradient-based."""
    only_gradients = _worst_case("pgd", "apgd-ce")
    assert mark_untrusted([_finding("zero-gradients", "gradient"), only_gradients]) == ["variants"]
    assert all(m.untrusted for m in only_gradients.measurements)
    with_square = _worst_case("pgd", "square")
    assert mark_untrusted([_finding("zero-gradients", "gradient"), with_square]) == ["variants"]
    worst = [m for m in with_square.measurements if m.where["attack"] == "all"]
    assert worst and all(m.untrusted is None for m in worst)  # at most Square's figure, which stays trusted
    assert all(m.untrusted for m in with_square.measurements if m.where["attack"] == "pgd")
    unknown = CheckResult(name="x", kind="variants")
    unknown.measurements.append(Measurement(name="robust_accuracy", value=0.9, unit="ratio", where={"attack": "all"}))
    assert mark_untrusted([_finding("zero-gradients", "gradient"), unknown]) == ["x"]
