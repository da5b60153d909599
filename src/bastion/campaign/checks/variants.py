"""The ``variants`` check: the target and its deployment variants (int8 in PyTorch, int8 in ONNX
Runtime, a distilled student, the user's own files) side by side on the same attacks and inputs
(:mod:`bastion.campaign.variants`). Gates read e.g. ``robust_accuracy[variants, variant=torch-int8,
attack=all] >= 0.6``; a variant markedly less robust than the full model raises ``BASTION-VA-001``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from bastion.campaign.checks.base import (
    Check,
    CheckContext,
    CheckInputError,
    CheckParams,
    Interrupted,
    register_check,
)
from bastion.campaign.gates import GateView
from bastion.campaign.trust import WORST_CASE
from bastion.campaign.variant_rules import WEAKER_RULE
from bastion.campaign.variants import BLACKBOX, BUILTINS, FULL, AttackSpec, Builtin, ModelSpec, VariantsResult
from bastion.core.results import CheckResult, Severity, VariantTable
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.schemes import model_file
from bastion.errors import UsageError

MEASURED = frozenset({"clean_accuracy", "robust_accuracy", "agreement", "transfer_from_full", "transfer_to_full",
                      "robustness_drop", "p_value", "n"})
WORST = WORST_CASE  # the attack field of the worst case over every attack


class VariantsParams(CheckParams):
    quantize: list[Builtin] = Field(default_factory=lambda: list(BUILTINS),
                                    description="Variants bastion builds: torch-int8, onnx-int8.")
    onnx: str | None = Field(None, description="An ONNX export of the model, quantised for onnx-int8 instead of "
                                               "exporting it here.")
    distilled: str | None = Field(None, description="Model spec of a distilled student of the model.")
    models: list[ModelSpec] = Field(default_factory=list, description="The user's own variants: {name, model, "
                                                                      "differentiable}.")
    attacks: list[AttackSpec] = Field(default_factory=lambda: [AttackSpec(name="pgd")],
                                      description="Attacks run on every model: names or {name, params}.")
    blackbox: AttackSpec | None = Field(default_factory=lambda: AttackSpec(name=BLACKBOX), description=(
        "Black-box attack run on every model too when a variant is attacked through the full model's gradients "
        "and no black-box attack is named; null leaves it out (those variants' figures are then upper bounds)."))
    eps: float = Field(0.1, gt=0, allow_inf_nan=False)
    norm: Literal["linf", "l2"] = "linf"
    samples: int = Field(200, ge=1, description="Eval inputs compared (a seeded random subset).")
    threshold: float = Field(0.05, ge=0, le=1, description="Robust-accuracy drop (a ratio) from which a variant is "
                                                           "markedly less robust.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Level of the paired McNemar test behind that finding.")

    @field_validator("attacks", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        v = [v] if isinstance(v, (str, dict)) else v
        return [{"name": a} if isinstance(a, str) else a for a in v] if isinstance(v, list) else v

    @field_validator("blackbox", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _some(self) -> VariantsParams:
        if not self.quantize and self.distilled is None and not self.models:
            raise ValueError("no variant to compare: name one in quantize, distilled or models")
        if self.onnx is not None and "onnx-int8" not in self.quantize:
            raise ValueError("onnx is the file quantised for onnx-int8; add onnx-int8 to quantize")
        return self


@register_check
class VariantsCheck(Check):
    kind = "variants"
    Params = VariantsParams
    requires = frozenset({"gradients"})
    threat_fields = ("norm", "eps")
    metric_names = MEASURED

    def __init__(self, name: str, params: VariantsParams) -> None:
        super().__init__(name, params)
        self.params: VariantsParams = params
        for a in params.attacks:
            a.build(params.eps, params.norm)  # bad attack parameters: refused when the policy loads
        if params.blackbox is not None and params.blackbox.build(params.eps, params.norm).needs_gradients:
            raise UsageError(f"blackbox: '{params.blackbox.name}' uses gradients; name a black-box attack "
                             "(e.g. square)")

    @classmethod
    def threat_params(cls, threat: dict[str, Any]) -> dict[str, Any]:
        """One ε for the comparison: the largest of the threat's."""
        out = super().threat_params(threat)
        if isinstance(out.get("eps"), list):
            out["eps"] = max(out["eps"])
        return out

    def validate_inputs(self, policy_dir: Path) -> None:
        p = self.params
        files = [(("onnx",), p.onnx if p.onnx is None or ":" in p.onnx else f"onnx:{p.onnx}"),
                 (("distilled",), p.distilled), *((("models", i, "model"), m.model) for i, m in enumerate(p.models))]
        for loc, spec in files:
            path = model_file(spec) if spec else None
            if path is not None and not (path if path.is_absolute() else policy_dir / path).is_file():
                raise CheckInputError(loc, f"no such model file: {path}")

    def gate_view(self) -> GateView:
        p = self.params
        names = [FULL, *p.quantize, *(["distilled"] if p.distilled else []), *(m.name for m in p.models)]
        attacks = [a.name for a in p.attacks] + ([p.blackbox.name] if p.blackbox is not None else [])
        return GateView(self.name, frozenset({self.name, self.kind, *attacks}), MEASURED,
                        {"variant": frozenset(names), "attack": frozenset([*attacks, WORST]),
                         "eps": frozenset({f"{p.eps:g}"}), "norm": frozenset({p.norm})})

    def _variants(self, ctx: CheckContext) -> list[Any]:
        from bastion.campaign.variants import build_variants

        p = self.params
        target, _, _ = ctx.require_model(self.name)
        return build_variants(target, quantize=p.quantize, onnx=p.onnx, distilled=p.distilled, models=p.models,
                              base_dir=ctx.policy_dir)

    def prepare(self, ctx: CheckContext) -> None:
        """Build and load every variant once before the scan runs: a variant file that is not a model or
        answers other classes stops the scan as a user error (exit 2). ``run`` takes them from
        ``ctx.prepared`` (built once per scan)."""
        ctx.prepared[self.name] = self._variants(ctx)

    def run(self, ctx: CheckContext) -> CheckResult:
        from bastion.campaign.variants import evaluate_variants

        target, data, y = ctx.require_model(self.name)
        p = self.params
        t0 = time.perf_counter()
        rows = np.sort(RunContext(seed=ctx.seed).spawn(self.name).rng("subset").permutation(len(y))[:p.samples])
        variants = ctx.prepared.pop(self.name, None) or self._variants(ctx)
        n_attacks = len(p.attacks) + int(p.blackbox is not None and any(v.gradients != "own" for v in variants))
        total = len(rows) * n_attacks * (len(variants) + 1)
        with ctx.bar(f"{self.name}: {len(variants) + 1} models × {n_attacks} attacks", total) as advance:
            res = evaluate_variants(target, data.x[rows], y[rows], variants, attacks=p.attacks, eps=p.eps,
                                    norm=p.norm, threshold=p.threshold, alpha=p.alpha, seed=ctx.seed,
                                    blackbox=p.blackbox, progress=advance)
        result = self._result(res, time.perf_counter() - t0)
        if res.interrupted:
            raise Interrupted(result)
        return result

    def _result(self, res: VariantsResult, seconds: float) -> CheckResult:
        out = CheckResult(name=self.name, kind=self.kind, seconds=seconds,
                          status="complete" if res.complete else "incomplete", reason=res.reason,
                          metrics={"eps": res.eps, "norm": res.norm, "attacks": res.attacks, "n": res.n,
                                   "threshold": res.threshold, "alpha": res.alpha,
                                   "variants": [r.model_dump() for r in res.rows], "by_attack": res.by_attack})
        at = {"eps": res.eps, "norm": res.norm}
        out.measure("n", res.n, "count")
        for r in res.rows:
            v = {"variant": r.variant}
            out.measure("clean_accuracy", r.clean_accuracy, "ratio", **v)
            out.measure("agreement", r.agreement, "ratio", **v)
            out.measure("robust_accuracy", r.robust_accuracy, "ratio", **v, attack=WORST, **at)
            for attack, acc in res.by_attack[r.variant].items():
                out.measure("robust_accuracy", acc, "ratio", **v, attack=attack, **at)
            if r.variant != FULL:
                out.measure("transfer_from_full", r.transfer_from_full, "ratio", **v, **at)
                out.measure("transfer_to_full", r.transfer_to_full, "ratio", **v, **at)
                out.measure("robustness_drop", r.drop, "ratio", **v, **at)
                out.measure("p_value", r.p_value, "", **v, **at)
        if not res.rows:
            return out
        out.artifacts.append(VariantTable(title=f"The model and its deployment variants ({res.norm}, ε={res.eps:g})",
                                          eps=res.eps, norm=res.norm, attacks=res.attacks, rows=res.rows))
        full = res.row(FULL)
        rule = get_rule(WEAKER_RULE)
        for r in res.weaker:
            assert r.drop is not None and r.p_value is not None
            how = "its own gradients" if r.gradients == "own" else "the full model's gradients (BPDA)"
            out.findings.append(rule.finding(
                title=(f"variant '{r.variant}' keeps {r.robust_accuracy:.0%} robust accuracy where the full model "
                       f"keeps {full.robust_accuracy:.0%} ({', '.join(res.attacks)}, {res.norm} ε={res.eps:g})"),
                severity=Severity.critical if r.drop >= 2 * max(res.threshold, 0.1) else rule.default_severity,
                check=self.name,
                metrics={"variant": r.variant, "source": r.source, "gradients": r.gradients, "n": res.n,
                         "full_robust_accuracy": full.robust_accuracy, "variant_robust_accuracy": r.robust_accuracy,
                         "drop": r.drop, "threshold": res.threshold, "only_full_robust": r.only_full_robust,
                         "only_variant_robust": r.only_variant_robust, "p_value": r.p_value, "alpha": res.alpha,
                         "transfer_from_full": r.transfer_from_full},
                description=(f"On the same {res.n} inputs, {r.only_full_robust} withstand every attack on the full "
                             f"model but not on '{r.variant}' ({r.source}), and {r.only_variant_robust} the other way "
                             f"round (exact one-sided McNemar p={r.p_value:.2g} < {res.alpha:g}; drop "
                             f"{r.drop:.1%} ≥ threshold {res.threshold:.1%}). White-box attacks on it followed "
                             f"{how}.")))
        return out
