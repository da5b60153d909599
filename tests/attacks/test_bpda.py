"""BPDA declared for a model's own non-differentiable step (issue 9, item 2): without it PGD stays
high on a masked model; with it, PGD falls to the level of the same model without the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import bastion
from bastion.core.defense import BPDA
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import UsageError
from tests.attacks._whitebox_models import trained_digits_mlp

SPEC = InputSpec(shape=(64,), lower=0.0, upper=1.0)


class Round3(torch.nn.Module):
    """3-bit input rounding: zero gradient almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


class SqrtSquare(torch.nn.Module):
    """sqrt(x)·sqrt(x): the identity in value, a non-finite gradient at 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x) * torch.sqrt(x)


def _data() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    model, _, _, x, y = trained_digits_mlp()
    return model, x[:120], y[:120]


@pytest.mark.parametrize("step", [Round3, SqrtSquare])
def test_pgd_through_a_declared_bpda_matches_the_model_without_the_step(step) -> None:
    model, x, y = _data()
    pgd = bastion.attacks.PGD(eps=0.1, steps=20)
    reference = pgd.run(TorchTarget(model, SPEC), x, y).robust_accuracy
    masked = torch.nn.Sequential(step(), model)
    without = pgd.run(TorchTarget(masked, SPEC), x, y)
    identity = pgd.run(TorchTarget(masked, SPEC, bpda=BPDA(module="0")), x, y)
    stand_in = pgd.run(TorchTarget(masked, SPEC, bpda=BPDA(substitute=model)), x, y)
    assert without.robust_accuracy > reference + 0.2  # the masking the declaration is for
    for res in (identity, stand_in):
        assert res.robust_accuracy <= reference + 0.05
        # predictions come from the real model: re-measure the adversarial inputs on it
        real = TorchTarget(masked, SPEC).predict(res.x_adv)
        assert res.robust_accuracy == pytest.approx(np.mean(real == y))


def test_a_substitute_for_the_step_gives_its_gradient() -> None:
    model, x, y = _data()
    masked = torch.nn.Sequential(Round3(), model)
    calls = []

    def smooth(z: torch.Tensor) -> torch.Tensor:
        calls.append(len(z))
        return z  # a differentiable approximation of rounding

    res = bastion.attacks.PGD(eps=0.1, steps=5).run(
        TorchTarget(masked, SPEC, bpda=BPDA(module="0", substitute=smooth)), x, y)
    assert calls and res.robust_accuracy < 0.8


def test_bad_declarations_are_refused_clearly() -> None:
    model, _, _ = _data()
    with pytest.raises(UsageError, match="module .* or a substitute"):
        BPDA()
    with pytest.raises(UsageError, match="'nope' is not a submodule"):
        TorchTarget(torch.nn.Sequential(Round3(), model), SPEC, bpda=BPDA(module="nope"))


MODELS = '''
import torch
from tests.attacks._whitebox_models import trained_digits_mlp


class Round3(torch.nn.Module):
    def forward(self, x):
        return torch.round(x * 7) / 7


def masked():
    return torch.nn.Sequential(Round3(), trained_digits_mlp()[0])


def smooth(x):
    return trained_digits_mlp()[0](x)


def data():
    _, _, _, x, y = trained_digits_mlp()
    return x[:80], y[:80]
'''


def _policy(tmp_path: Path, bpda: dict | None) -> dict:
    (tmp_path / "m.py").write_text(MODELS)
    target = {"model": f"python:{tmp_path / 'm.py'}:masked", "input_shape": [64], "bounds": [0.0, 1.0]}
    if bpda is not None:
        target["bpda"] = bpda
    return {"version": 1, "name": "bpda", "target": target, "data": {"source": f"python:{tmp_path / 'm.py'}:data"},
            "checks": [{"name": "pgd", "kind": "evasion", "attack": "pgd", "eps": [0.1], "params": {"steps": 20},
                        "examples": 0}],
            "output": {"dir": str(tmp_path / "out"), "formats": ["json"]}}


def test_the_policy_declares_bpda_for_the_target(tmp_path: Path) -> None:
    from bastion.campaign.runner import scan

    def robust(bpda: dict | None) -> float:
        return scan(_policy(tmp_path, bpda)).checks[0].values("robust_accuracy")[0]

    without = robust(None)
    straight = robust({"module": "0"})
    stand_in = robust({"forward": f"python:{tmp_path / 'm.py'}:smooth"})
    assert without > 0.8 and straight < without - 0.4 and stand_in < without - 0.4


@pytest.mark.parametrize("bpda, message", [
    ({"module": "0", "forward": "python:m.py:smooth"}, "either module"),
    ({"forward": "python:m.py:smooth", "substitute": "python:m.py:smooth"}, "substitute approximates"),
    ({"module": "0", "substitute": "m.py:smooth"}, "python:path/file.py:function"),
])
def test_bad_policy_declarations_name_the_field(tmp_path: Path, bpda: dict, message: str) -> None:
    from bastion.campaign.policy import load_policy
    from bastion.errors import PolicyError

    with pytest.raises(PolicyError, match=message) as err:
        load_policy(_policy(tmp_path, bpda))
    assert "target.bpda" in str(err.value)


def test_a_policy_with_bpda_and_a_target_defense_loads(tmp_path: Path) -> None:
    """Regression: the runner's defense loop reused the data spec's variable name, so any target
    defense ended the load with AttributeError ('DefenseSpec' has no 'source')."""
    from bastion.campaign.runner import scan
    from bastion.core.defense import DEFENSES, TargetDefense

    class NoOp(TargetDefense):
        pass

    pol = _policy(tmp_path, {"module": "0"})
    pol.update(version=2, datasets={"eval": pol.pop("data")})
    pol["target"]["defenses"] = [{"name": "test-noop"}]
    DEFENSES.add("test-noop", NoOp)
    try:
        res = scan(pol).checks[0]
    finally:
        DEFENSES.remove("test-noop")
    assert res.status == "complete" and res.values("robust_accuracy")[0] < 0.5


def test_masking_findings_name_the_bpda_declaration_with_a_policy_snippet() -> None:
    from bastion.campaign.rules import MASKING_RULE
    from bastion.core.rules import get_rule

    for signal in ("zero-gradients", "blackbox-beats-whitebox", "large-eps", "unbounded-attack"):
        if signal in MASKING_RULE:
            text = get_rule(MASKING_RULE[signal]).remediation
            assert "bpda: {module: " in text and "bpda: {forward: " in text and "BPDA(module=" in text, signal
    assert "eot_iter" in get_rule(MASKING_RULE["randomized-outputs"]).remediation
