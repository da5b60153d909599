"""Gates: parsing, selection of measurements, worst-case resolution."""

from __future__ import annotations

import pytest

from bastion.campaign.gates import measurements, parse_gate
from bastion.core.results import CheckResult, Finding, Severity


def _check(name: str, attack: str, results: list[dict]) -> CheckResult:
    check = CheckResult(name=name, kind="evasion")
    check.measure("clean_accuracy", 0.97, "ratio", attack=attack)
    for r in results:
        check.measure("robust_accuracy", r["robust_accuracy"], "ratio",
                      **{k: v for k, v in r.items() if k != "robust_accuracy"})
    return check


CHECKS = [
    _check("pgd-linf", "pgd", [{"attack": "pgd", "eps": 0.05, "norm": "linf", "robust_accuracy": 0.8},
                               {"attack": "pgd", "eps": 0.1, "norm": "linf", "robust_accuracy": 0.45}]),
    _check("pgd-l2", "pgd", [{"attack": "pgd", "eps": 0.1, "norm": "l2", "robust_accuracy": 0.9}]),
    _check("fgsm", "fgsm", [{"attack": "fgsm", "eps": 0.1, "norm": "linf", "robust_accuracy": 0.6}]),
]


@pytest.mark.parametrize("expr, value, passed", [
    ("robust_accuracy[pgd, eps=0.05] >= 0.6", 0.8, True),
    ("robust_accuracy[pgd, eps=0.1, norm=linf] >= 0.6", 0.45, False),
    ("robust_accuracy[pgd, eps=0.1] >= 0.4", 0.45, True),      # worst of linf 0.45 and l2 0.9
    ("robust_accuracy[pgd, eps=0.1] <= 0.5", 0.9, False),      # worst case for <= is the maximum
    ("robust_accuracy[fgsm] > 0.59", 0.6, True),
    ("clean_accuracy[pgd-l2] >= 95%", 0.97, True),
    ("robust_accuracy[pgd-l2, eps=0.1] == 0.9", 0.9, True),
])
def test_gate_evaluation(expr: str, value: float, passed: bool) -> None:
    res = parse_gate(expr).evaluate(CHECKS)
    assert res.value == pytest.approx(value)
    assert res.passed is passed


def test_gate_without_match_fails_with_reason() -> None:
    res = parse_gate("robust_accuracy[square, eps=0.1] >= 0.1").evaluate(CHECKS)
    assert res.passed is False and res.value is None and "no measurement" in (res.reason or "")


@pytest.mark.parametrize("bad", ["robust_accuracy >> 3", "robust_accuracy[pgd >= 1", ">= 0.5", "acc[=3] >= 1", ""])
def test_malformed_gates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_gate(bad)


def test_measurements_come_with_their_check() -> None:
    ms = measurements(CHECKS)
    assert {c.name for c, _ in ms} == {"pgd-linf", "pgd-l2", "fgsm"}
    assert all(c.kind == "evasion" for c, _ in ms)
    res = parse_gate("robust_accuracy[eps=0.1] >= 0.5").evaluate(CHECKS)
    assert (res.value, res.check, res.unit) == (0.45, "pgd-linf", "ratio")
    assert res.where == {"attack": "pgd", "eps": 0.1, "norm": "linf"}


def test_gates_read_measurements_not_free_form_details() -> None:
    check = CheckResult(name="c", kind="evasion", metrics={"robust_accuracy": 0.9})
    res = parse_gate("robust_accuracy[c] >= 0.5").evaluate([check])
    assert res.passed is False and res.value is None


def test_finding_counts_only_for_completed_checks() -> None:
    finding = Finding(rule_id="BASTION-SC-001", title="t", severity=Severity.critical, check="files")
    done = CheckResult(name="files", kind="model-file", findings=[finding])
    gate = parse_gate("findings_high[files] <= 0")
    assert gate.evaluate([done]).value == 1 and not gate.evaluate([done]).passed
    clean = CheckResult(name="files", kind="model-file")
    assert gate.evaluate([clean]).passed
    for status in ("error", "incomplete", "skipped"):  # never a pass on 0 counted findings
        res = gate.evaluate([CheckResult(name="files", kind="model-file", status=status)])
        assert res.passed is False and res.value is None and "no measurement" in (res.reason or "")
