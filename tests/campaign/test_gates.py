"""Gates: parsing, selection of measurements, worst-case resolution."""

from __future__ import annotations

import pytest

from bastion.campaign.gates import measurements, parse_gate
from bastion.core.results import CheckResult


def _check(name: str, attack: str, results: list[dict]) -> CheckResult:
    return CheckResult(name=name, kind="evasion", metrics={"attack": attack, "clean_accuracy": 0.97,
                                                            "results": results})


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


def test_measurements_tag_check_and_kind() -> None:
    ms = measurements(CHECKS)
    assert {m["check"] for m in ms} == {"pgd-linf", "pgd-l2", "fgsm"}
    assert all(m["kind"] == "evasion" for m in ms)
