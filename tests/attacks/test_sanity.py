"""Gradient-masking sanity checks: they flag randomised, saturated and zero-gradient models, and a
black-box attack beating the white-box one, and stay quiet on a clean model."""

from __future__ import annotations

import numpy as np
import torch

from bastion.attacks import APGD, PGD
from bastion.attacks.base import AttackResult
from bastion.attacks.evasion.sanity import (
    check_blackbox_vs_whitebox,
    check_gradients,
    check_output_kind,
    check_randomized,
)
from bastion.campaign.checks.base import CheckContext
from bastion.campaign.checks.gradient_masking import (
    GradientMaskingCheck,
    GradientMaskingParams,
)
from bastion.core.data import Dataset
from bastion.core.metrics import perturbation_norms
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget

from ._whitebox_models import trained_digits_mlp

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
