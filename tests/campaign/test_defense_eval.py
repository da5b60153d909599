"""The ``defense-eval`` check: undefended, non-adaptive and adaptive robust accuracy side by side;
a defense that only hides gradients is found out and credited with the adaptive figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.campaign.checks.base import CheckContext
from bastion.campaign.checks.defense_eval import DefenseEvalCheck, DefenseEvalParams
from bastion.campaign.rules import OBFUSCATION_RULE
from bastion.campaign.runner import scan
from bastion.core.data import Dataset
from bastion.core.defense import DEFENSES
from bastion.errors import UsageError

N = 40


def run(target, data, name: str, **params):  # noqa: ANN001, ANN201 - a target, a Dataset -> CheckResult
    defended = DEFENSES[name](**params).wrap(target, seed=0)
    sub = Dataset(data.x[:N], data.y[:N], data.name)
    check = DefenseEvalCheck("de", DefenseEvalParams(eps=[0.05, 0.1], params={"steps": 10}))
    return check.run(CheckContext(target=defended, data=sub, y=sub.y))


def test_a_non_differentiable_defense_is_found_out_and_credited_with_the_adaptive_figure(
        digits_target, digits_data) -> None:  # noqa: ANN001
    res = run(digits_target, digits_data, "bit-depth", bits=4)
    assert res.status == "complete"
    table = res.metrics["table"]
    assert [r["eps"] for r in table] == [0.05, 0.1]
    worst = table[-1]
    assert worst["non-adaptive"] - worst["adaptive"] > 0.2  # rounding hides the gradient; BPDA crosses it
    assert worst["adaptive"] <= worst["undefended"] + 0.1
    found = [f for f in res.findings if f.rule_id == OBFUSCATION_RULE]
    assert len(found) == 1 and found[0].metrics["credited_robust_accuracy"] == worst["adaptive"]
    assert "only obfuscates gradients" in found[0].title
    by = {(m.where["setting"], m.where["eps"]): m for m in res.measurements if m.name == "robust_accuracy"}
    assert by[("non-adaptive", 0.1)].untrusted and not by[("adaptive", 0.1)].untrusted
    assert by[("adaptive", 0.1)].value == worst["adaptive"]
    assert {a.attack for a in res.artifacts} == {"pgd, undefended", "pgd on bit-depth, non-adaptive",
                                                "pgd on bit-depth, adaptive"}


def test_a_differentiable_defense_gives_the_same_figure_both_ways(digits_target, digits_data) -> None:  # noqa: ANN001
    res = run(digits_target, digits_data, "spatial-smoothing", sigma=0.5)
    assert all(r["obfuscation_gap"] == 0 for r in res.metrics["table"])  # same gradients, same seed
    assert not [f for f in res.findings if f.rule_id == OBFUSCATION_RULE]


def test_undefended_targets_and_non_gradient_attacks_are_refused(digits_target, digits_data) -> None:  # noqa: ANN001
    check = DefenseEvalCheck("de", DefenseEvalParams())
    with pytest.raises(UsageError, match="has none"):
        check.run(CheckContext(target=digits_target, data=digits_data, y=digits_data.y))
    with pytest.raises(UsageError, match="a black-box attack"):
        DefenseEvalCheck("de", DefenseEvalParams(attack="square"))
    with pytest.raises(UsageError, match="on the check itself"):
        DefenseEvalCheck("de", DefenseEvalParams(params={"eps": 0.3}))


def test_in_a_policy_a_gate_passes_on_the_adaptive_figure_only(tmp_path: Path, digits_target) -> None:  # noqa: ANN001
    policy = {
        "version": 2, "name": "defended digits", "seed": 0,
        "target": {"model": "demo:digits-cnn", "defenses": [{"kind": "median-smoothing", "window": 3}]},
        "datasets": {"eval": {"source": "demo:digits", "limit": 30}},
        "threat": {"norm": "linf", "eps": 0.1},
        "checks": [{"name": "de", "kind": "defense-eval", "params": {"steps": 10}}],
        "gates": ["robust_accuracy[de, setting=adaptive] >= 0", "robust_accuracy[de, setting=non-adaptive] >= 0"],
        "output": {"dir": str(tmp_path / "out"), "formats": ["json", "html"]},
    }
    result = scan(policy)
    (check,) = result.checks
    assert check.status == "complete" and check.metrics["defense"] == "median-smoothing"
    assert [g.passed for g in result.gates] == [True, False]  # the non-adaptive figure is never credited
    assert result.gates[1].untrusted
    assert (tmp_path / "out" / "report.html").is_file()


def test_gradient_masking_takes_the_adaptive_path_of_a_defended_target(digits_target, digits_data) -> None:  # noqa: ANN001
    from bastion.campaign.checks.gradient_masking import GradientMaskingCheck, GradientMaskingParams

    defended = DEFENSES["bit-depth"](bits=4).wrap(digits_target, seed=0)
    params = GradientMaskingParams(n_samples=20, eps=0.1, blackbox_queries=100)
    res = GradientMaskingCheck("gm", params).run(CheckContext(target=defended, data=digits_data, y=digits_data.y))
    assert any("adaptive path 'adaptive(bit-depth" in n for n in res.metrics["notes"])
    assert res.metrics["checks"]["zero-gradients"]["flagged"] is False  # BPDA: gradients cross the rounding


def test_a_defense_on_inputs_outside_its_range_is_refused_naming_the_policy_field(tmp_path: Path) -> None:
    from bastion.errors import BastionError

    policy = {"version": 2, "name": "table behind JPEG",
              "target": {"model": "demo:breast-cancer", "defenses": [{"kind": "jpeg"}]},
              "datasets": {"eval": {"source": "demo:breast-cancer", "limit": 10}},
              "checks": [{"name": "pgd", "kind": "evasion", "attack": "pgd"}],
              "output": {"dir": str(tmp_path / "out")}}
    with pytest.raises(BastionError, match=r"expects inputs in \[0, 1\]") as err:
        scan(policy)
    assert "target.defenses[0]" in str(err.value)
