"""Gradient-masking sanity checks: they flag randomised, saturated and zero-gradient models, a
black-box attack beating the white-box one significantly, robust accuracy that stays up at a large ε
and an unbounded attack that fails, and stay quiet on a standard and an adversarially trained model."""

from __future__ import annotations

import numpy as np
import torch

from bastion.attacks import APGD, PGD
from bastion.attacks.base import AttackResult, get_attack
from bastion.attacks.evasion.sanity import (
    Significance,
    check_blackbox_vs_whitebox,
    check_gradients,
    check_large_eps,
    check_output_kind,
    check_randomized,
    check_unbounded,
    full_range_eps,
)
from bastion.campaign.checks.base import CheckContext
from bastion.campaign.rules import MASKING_RULE
from bastion.campaign.checks.gradient_masking import (
    GradientMaskingCheck,
    GradientMaskingParams,
)
from bastion.core.data import Dataset
from bastion.core.metrics import perturbation_norms
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget

import pytest

from ._whitebox_models import pgd_trained_digits_mlp, trained_digits_mlp

torch.set_num_threads(1)
SPEC = InputSpec(shape=(64,), lower=0.0, upper=1.0)


class DropoutOn(torch.nn.Module):
    """Dropout that stays active in eval mode (a randomised 'defence')."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.nn.functional.dropout(x, 0.3, training=True))


class Rounded(torch.nn.Module):
    """Input quantisation with torch.round: gradients are zero almost everywhere."""

    def __init__(self, inner: torch.nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * self.levels) / self.levels)


class Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


class Wrapped(torch.nn.Module):
    """``step(inner, x)``: the audit's masked variants of one model."""

    def __init__(self, inner: torch.nn.Module, step: str) -> None:
        super().__init__()
        self.inner, self.step = inner, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step == "x1000":
            return self.inner(x) * 1000
        if self.step == "round3":  # 3-bit input rounding
            return self.inner(torch.round(x * 7) / 7)
        if self.step == "noise":
            return self.inner(x + 0.1 * torch.randn_like(x))
        if self.step == "sqrt":
            return self.inner(torch.sqrt(x) * torch.sqrt(x))
        raise ValueError(self.step)


def _data() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    model, _, _, x, y = trained_digits_mlp()
    return model, x[:60], y[:60]


def test_clean_model_is_not_flagged() -> None:
    model, x, y = _data()
    target = TorchTarget(model, SPEC)
    for r in (check_randomized(target, x), check_output_kind(target, x), check_gradients(target, x, y)):
        assert not r.flagged, r.message
    assert target.queries == 0  # bastion's own measurements are not counted


def test_dropout_left_on_is_flagged_as_randomised() -> None:
    model, x, _ = _data()
    r = check_randomized(TorchTarget(DropoutOn(model), SPEC), x)
    assert r.flagged and r.metrics["n_changed"] >= 0.9 * len(x) and "randomised" in r.message


def test_rounding_model_has_zero_gradients() -> None:
    model, x, y = _data()
    r = check_gradients(TorchTarget(Rounded(model), SPEC), x, y)
    assert r.flagged and r.metrics["n_zero"] == len(x) and r.samples == list(range(len(x)))


def test_saturated_outputs_are_flagged() -> None:
    model, x, _ = _data()
    r = check_output_kind(TorchTarget(Scaled(model, 1000.0), SPEC), x)
    assert r.flagged and r.metrics["saturated_fraction"] > 0.5


def test_blackbox_beating_whitebox_is_flagged_on_the_masked_model() -> None:
    model, x, y = _data()
    masked = TorchTarget(Rounded(model), SPEC)
    eps = 0.15
    white = APGD(eps=eps, steps=20).run(masked, x, y)
    # a transfer attack (no gradients of the masked model): PGD on the differentiable twin, replayed
    twin = PGD(eps=eps, steps=20).run(TorchTarget(model, SPEC), x, y)
    probs = masked.predict_proba(twin.x_adv)
    black = AttackResult(attack="transfer", x_adv=twin.x_adv, success=probs.argmax(1) != y,
                         norms=perturbation_norms(x, twin.x_adv), queries=len(x), seconds=0.0, y=y,
                         clean_pred=masked.predict(x), adv_pred=probs.argmax(1), adv_confidence=probs.max(1),
                         eps=eps, norm="linf")
    r = check_blackbox_vs_whitebox(white, black)
    assert r.flagged and r.metrics["n_blackbox_only"] > 0
    assert not check_blackbox_vs_whitebox(white, white).flagged


def test_gradient_masking_check_reports_findings_only_for_the_masked_model() -> None:
    model, x, y = _data()
    params = GradientMaskingParams(n_samples=30, eps=0.1, blackbox_queries=100)
    for module, expect in ((model, set()), (Rounded(model), {"BASTION-EV-103"})):
        ctx = CheckContext(target=TorchTarget(module, SPEC), data=Dataset(x, y), y=y)
        res = GradientMaskingCheck("masking", params).run(ctx)
        rules = {f.rule_id for f in res.findings}
        assert expect <= rules and (rules == set() if not expect else True)
        for f in res.findings:
            assert "gradient masking" in f.description and f.atlas and f.owasp == ["ML01"]
            assert "BPDA" in f.remediation or "EOT" in f.remediation or "adaptive" in f.remediation


def _result(y: np.ndarray, success: np.ndarray, name: str) -> AttackResult:
    pred = np.where(success, (y + 1) % 10, y)
    return AttackResult(attack=name, x_adv=np.zeros((len(y), 1)), success=success, norms={}, queries=0, seconds=0.0,
                        y=y, clean_pred=y.copy(), adv_pred=pred, adv_confidence=np.ones(len(y)), eps=0.1, norm="linf")


def test_one_blackbox_only_input_is_not_a_masking_finding() -> None:
    """Regression (audit): Square fooled 1 of 97 inputs one APGD-CE run missed on a standard CNN,
    and a *high* finding was raised. One discordant input is noise, not masking."""
    y = np.arange(97) % 10
    white = np.arange(97) < 50
    black = white.copy()
    black[60] = True  # one input only the black-box attack fooled
    black[:3] = False  # and three only the white-box one did
    r = check_blackbox_vs_whitebox(_result(y, white, "apgd-ce"), _result(y, black, "square"))
    assert not r.flagged and r.metrics["n_blackbox_only"] == 1 and r.metrics["n_whitebox_only"] == 3
    assert r.metrics["p_value"] > 0.5 and "1 of 97" in r.message and "CI" in r.message


def test_blackbox_comparison_needs_significance_and_the_minimum_effect() -> None:
    y = np.arange(1000) % 10
    white = np.zeros(1000, bool)
    black = np.zeros(1000, bool)
    black[:8] = True  # 8 of 1000 only by the black box: significant (p = 2^-8), but below the 3% minimum
    r = check_blackbox_vs_whitebox(_result(y, white, "apgd-ce"), _result(y, black, "square"))
    assert r.metrics["p_value"] < 0.01 and not r.flagged
    r = check_blackbox_vs_whitebox(_result(y, white, "apgd-ce"), _result(y, black, "square"), min_rate=0.005)
    assert r.flagged and r.metrics["count"] == 8 and r.metrics["ci_low"] < 0.008 < r.metrics["ci_high"]
    black[:40] = True  # 4%, and nothing the white box found: flagged at the defaults
    assert check_blackbox_vs_whitebox(_result(y, white, "apgd-ce"), _result(y, black, "square")).flagged
    # a stricter alpha asks for more evidence
    few = np.zeros(1000, bool)
    few[:6] = True
    loose, strict = Significance(alpha=0.05), Significance(alpha=0.001)
    assert check_blackbox_vs_whitebox(_result(y, white, "a"), _result(y, few, "b"), min_rate=0, sig=loose).flagged
    assert not check_blackbox_vs_whitebox(_result(y, white, "a"), _result(y, few, "b"), min_rate=0, sig=strict).flagged


def test_zero_gradient_signal_tolerates_a_rare_input() -> None:
    model, x, y = _data()
    stuck = Rounded(model)
    r = check_gradients(TorchTarget(stuck, SPEC), x[:1], y[:1])
    assert r.metrics["count"] == 1 and not r.flagged  # one input of one: p = 0.02, not significant at 0.01
    r = check_gradients(TorchTarget(stuck, SPEC), x[:1], y[:1], max_rate=0.0)
    assert r.flagged  # with nothing tolerated, a single zero gradient is a sign


def test_full_range_eps() -> None:
    assert full_range_eps(SPEC, "linf") == pytest.approx(1.0)
    assert full_range_eps(SPEC, "l2") == pytest.approx(8.0)
    assert full_range_eps(InputSpec(shape=(3,), lower=-np.inf, upper=1.0), "linf") is None


@pytest.mark.parametrize("step", ["x1000", "round3"])
def test_large_eps_and_unbounded_flag_masked_models(step: str) -> None:
    model, x, y = _data()
    target = TorchTarget(Wrapped(model, step), SPEC)
    wide = check_large_eps(APGD(eps=1.0, steps=20).run(target, x, y))
    assert wide.flagged and wide.metrics["rate"] > 0.05 and wide.metrics["p_value"] < 0.01
    free = check_unbounded(get_attack("deepfool").run(target, x, y))
    assert free.flagged and free.metrics["count"] > 0 and "100% success" in free.message


@pytest.mark.parametrize("which", ["standard", "pgd-trained"])
def test_large_eps_and_unbounded_stay_quiet_on_working_attacks(which: str) -> None:
    model, x, y = _data()
    target = TorchTarget(model if which == "standard" else pgd_trained_digits_mlp(), SPEC)
    wide = check_large_eps(APGD(eps=1.0, steps=20).run(target, x, y))
    assert not wide.flagged and wide.metrics["count"] == 0, wide.message
    assert not check_unbounded(get_attack("deepfool").run(target, x, y)).flagged


@pytest.mark.parametrize("which", ["standard", "pgd-trained", "x1000", "round3", "noise", "sqrt"])
def test_gradient_masking_check_on_the_audit_models(which: str) -> None:
    """No finding on the standard and adversarially trained models; at least one on each masked one,
    with the count, interval and p-value stated."""
    model, x, y = _data()
    module = {"standard": model, "pgd-trained": pgd_trained_digits_mlp()}.get(which) or Wrapped(model, which)
    ctx = CheckContext(target=TorchTarget(module, SPEC), data=Dataset(x, y), y=y)
    res = GradientMaskingCheck("masking", GradientMaskingParams(n_samples=60, eps=0.1, blackbox_queries=200)).run(ctx)
    if which in ("standard", "pgd-trained"):
        assert res.findings == [], [f.description for f in res.findings]
        assert set(res.metrics["checks"]) == set(MASKING_RULE)  # every signal ran
        return
    assert res.findings
    for f in res.findings:
        assert f.metrics["concerns"] in ("gradient", "all") and "marked untrusted" in f.description
        if f.metrics["sanity"] != "output-kind" or not f.metrics["probabilities_like"]:
            assert "CI" in f.description and f.metrics["ci_low"] <= f.metrics["ci_high"]
    if which == "noise":  # a minimal attack stops on a boundary the noise blurs: large-ε stands in for it
        assert "unbounded-attack" not in res.metrics["checks"] and any("randomised" in n for n in res.metrics["notes"])
    expected = {"x1000": "BASTION-EV-102", "round3": "BASTION-EV-103", "noise": "BASTION-EV-101",
                "sqrt": "BASTION-EV-103"}[which]
    assert expected in {f.rule_id for f in res.findings}


class Quantized(torch.nn.Module):
    """3-bit input rounding in a named submodule, so BPDA can be declared on it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.quantize, self.inner = Round3(), inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.quantize(x))


class Round3(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


def test_declared_bpda_clears_the_gradient_signals() -> None:
    """Following the remediation (BPDA on the rounding step) the attacks follow the substitute, and
    the check judges the path they take: no zero-gradient, large-ε or unbounded finding."""
    from bastion.core.defense import BPDA

    model, x, y = _data()
    params = GradientMaskingParams(n_samples=60, eps=0.1, blackbox_queries=200)
    plain = TorchTarget(Quantized(model), SPEC)
    rules = {f.rule_id for f in GradientMaskingCheck("m", params).run(
        CheckContext(target=plain, data=Dataset(x, y), y=y)).findings}
    assert "BASTION-EV-103" in rules
    declared = TorchTarget(Quantized(model), SPEC, bpda=BPDA(module="quantize"))
    res = GradientMaskingCheck("m", params).run(CheckContext(target=declared, data=Dataset(x, y), y=y))
    assert res.findings == [], [f.description for f in res.findings]
    assert any("adaptive path" in n for n in res.metrics["notes"])
