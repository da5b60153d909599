"""The ``extraction`` check: can an attacker copy the model through its prediction API?

Runs extraction attacks (:data:`bastion.attacks.extraction.EXTRACTION_ATTACKS`: equation solving,
Knockoff Nets, Copycat CNN, Jacobian augmentation) within the threat's query budget on a pool of
records the policy names (a dataset role, default ``eval``); a ``query_set`` role gives the
learning-based attacks other (out-of-distribution) inputs to query instead. It measures, per
attack, the fidelity (agreement of the copy with the model on held-out pool records), the copy's
accuracy and the queries spent, and keeps each fidelity curve. The most faithful copy gives the
finding (``BASTION-EX-001``: ATLAS AML.T0024.002 and AML.T0005, OWASP ML05): high at fidelity
>= 0.9, medium at >= 0.75, low at >= 0.5.

With ``transfer``, it then plays the attacker's chain: the evasion ``transfer`` attack crafts
adversarial inputs on each copy and sends them to the model (held-out records it classifies
right), beside a baseline of random noise of the same norm per input (Papernot et al. 2017,
arXiv:1602.02697): ``transfer_success_rate`` against ``noise_success_rate``.

An attack that cannot run (equation solving on a label-only model or with too small a budget) is
reported with what went wrong and why; the other attacks still run, and the check is then an
error, never a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bastion.attacks.extraction import EXTRACTION_ATTACKS, ExtractionResult, ModelExtraction, get_extraction_attack
from bastion.campaign.checks.base import (AttackChoice, AttackList, Check, CheckContext, CheckFailed, CheckParams,
                                          Interrupted, register_check)
from bastion.campaign.checks.records import RecordSet
from bastion.campaign.privacy_rules import EXTRACTION_RULE
from bastion.campaign.gates import GateView
from bastion.core.data import Dataset, align_labels
from bastion.core.results import CheckResult, Finding, Severity
from bastion.core.rules import get_rule
from bastion.core.run import RunContext
from bastion.core.threat import ThreatModel
from bastion.errors import BastionError, UsageError

MEASURED = frozenset({"fidelity", "surrogate_accuracy", "queries", "transfer_success_rate", "noise_success_rate"})
SEVERITY_AT = ((0.9, Severity.high), (0.75, Severity.medium), (0.5, Severity.low))


class ExtractionAttackSpec(AttackChoice):
    registry = EXTRACTION_ATTACKS
    what = "extraction attack"


class TransferSpec(CheckParams):
    """The attacker's chain: adversarial inputs crafted on the copy, sent to the model."""

    eps: float = Field(gt=0, description="perturbation size, in each feature's scale")
    norm: Literal["linf", "l2"] = "linf"
    steps: int = Field(50, ge=1, le=10_000, description="momentum-PGD steps on the copy")
    samples: int = Field(200, ge=1, description="most held-out records attacked")


class ExtractionCheckParams(CheckParams):
    attacks: AttackList[ExtractionAttackSpec] = Field(
        default_factory=lambda: [ExtractionAttackSpec(attack="equation-solving")],
        description="Extraction attacks to run: a name or {attack: NAME, params: {...}}.")
    pool: RecordSet = Field(default_factory=lambda: RecordSet(role="eval"),
                            description="Records the attacker may query (part is held out to measure fidelity).")
    query_set: RecordSet | None = Field(default=None, description="Records the learning-based attacks query "
                                                                    "instead of the pool (out-of-distribution data).")
    query_budget: int | None = Field(default=None, gt=0, description="Queries each attack may send.")
    transfer: TransferSpec | None = Field(default=None, description="Craft adversarial inputs on each copy and "
                                                                    "measure how many fool the model.")


@register_check
class ExtractionCheck(Check):
    """Model extraction: how faithful a copy an attacker gets within the query budget."""

    kind = "extraction"
    Params = ExtractionCheckParams
    metric_names = MEASURED
    threat_fields = ("query_budget",)

    def __init__(self, name: str, params: ExtractionCheckParams) -> None:
        super().__init__(name, params)
        self.params: ExtractionCheckParams = params
        self.attacks: list[ModelExtraction] = [get_extraction_attack(a.attack, **a.params) for a in params.attacks]

    def requirements(self) -> frozenset[str]:
        q = self.params.query_set
        return frozenset({self.params.pool.role, *([q.role] if q else [])})

    def gate_view(self) -> GateView:
        """Bare selectors match the check, its kind or an attack; with ``transfer``, ``eps`` and
        ``norm`` select the chain's figures."""
        names = frozenset(a.label for a in self.attacks)
        fields: dict[str, frozenset[str] | None] = {"attack": names}
        if (t := self.params.transfer) is not None:
            fields.update({"eps": frozenset({f"{t.eps:g}"}), "norm": frozenset({t.norm})})
        return GateView(self.name, frozenset({self.name, self.kind, *names}), MEASURED, fields)

    def run(self, ctx: CheckContext) -> CheckResult:
        target, _, _ = ctx.require_model(self.name)
        t0 = time.perf_counter()
        pool = self._records(ctx, self.params.pool, "pool")
        qs = self.params.query_set
        query_set = None if qs is None else self._records(ctx, qs, "query_set")  # its labels group it (adaptive)
        res = CheckResult(name=self.name, kind=self.kind, metrics={"attacks": {}})
        run = RunContext(seed=ctx.seed).spawn(self.name)
        threat = ThreatModel(query_budget=self.params.query_budget)
        errors: list[str] = []
        results: list[ExtractionResult] = []
        transfers: dict[str, dict[str, float | int]] = {}
        for attack in self.attacks:
            out = self._attempt(attack.label, errors, lambda a=attack: a.run(target, pool, threat, run,
                                                                              query_set=query_set),
                                lambda: self._finish(res, results, transfers, errors, t0))
            if out is None:
                continue
            results.append(out)
            if out.interrupted:
                raise Interrupted(self._finish(res, results, transfers, errors + [f"{attack.label}: interrupted"], t0))
            if self.params.transfer is not None:
                chain = self._attempt(f"{attack.label} transfer", errors,
                                      lambda o=out: _transfer_chain(target, o, pool, self.params.transfer, run),
                                      lambda: self._finish(res, results, transfers, errors, t0))
                if chain is not None:
                    transfers[out.attack] = chain
        final = self._finish(res, results, transfers, errors, t0)
        if errors:
            raise CheckFailed(final)
        return final

    @staticmethod
    def _attempt(label: str, errors: list[str], step: Callable[[], Any], partial: Callable[[], CheckResult]) -> Any:
        """``step()``, or None with what went wrong added to ``errors`` (one attack's failure must
        not lose the others'); Ctrl-C keeps what was measured before."""
        try:
            return step()
        except KeyboardInterrupt:
            errors.append(f"{label}: interrupted")
            raise Interrupted(partial()) from None
        except BastionError as exc:
            errors.append(f"{label}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - reported in the check's reason
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
        return None

    def _records(self, ctx: CheckContext, rs: RecordSet, where: str) -> Dataset:
        """The records of a role, labels as class indices (so the copy's accuracy is measured too)."""
        target = ctx.target
        assert target is not None
        if rs.role == "eval":
            data, y = ctx.data, ctx.y
        elif rs.role in ctx.datasets:
            data = ctx.datasets[rs.role]
            y = align_labels(data, target)
        else:
            raise UsageError(f"check '{self.name}': the {where} comes from the dataset role '{rs.role}', which the "
                             "policy does not give", hint=f"add 'datasets: {{{rs.role}: ...}}' to the policy")
        assert data is not None and y is not None
        idx = rs.select(len(data), where)
        return Dataset(np.asarray(data.x)[idx], np.asarray(y)[idx], name=data.name)

    def _finish(self, res: CheckResult, results: list[ExtractionResult], transfers: dict[str, dict[str, Any]],
                errors: list[str], t0: float) -> CheckResult:
        for r in results:
            r.record(res)
            res.metrics["attacks"][r.attack] = {
                "fidelity": r.fidelity, "accuracy": r.accuracy, "target_accuracy": r.target_accuracy,
                "queries": r.queries, "seconds": round(r.seconds, 2), "complete": r.complete, "reason": r.reason,
                "holdout": len(r.holdout), "repeats": r.repeats}
            if (t := transfers.get(r.attack)) is not None:
                where = {"attack": r.attack, "eps": t["eps"], "norm": t["norm"]}
                res.measure("transfer_success_rate", t["transfer_success_rate"], "ratio", **where)
                res.measure("noise_success_rate", t["noise_success_rate"], "ratio", **where)
                res.metrics["attacks"][r.attack]["transfer"] = t
        best = max(results, key=lambda r: r.fidelity, default=None)
        if best is not None and (finding := _finding(best, self.name)) is not None:
            res.findings.append(finding)
        if errors:
            res.status = "error"
            res.reason = "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res


def _finding(r: ExtractionResult, check: str) -> Finding | None:
    severity = next((s for at, s in SEVERITY_AT if r.fidelity >= at), None)
    if severity is None:
        return None
    acc = (f" The copy is right on {r.accuracy:.1%} of them (the model on {r.target_accuracy:.1%})."
           if r.accuracy is not None and r.target_accuracy is not None else "")
    return get_rule(EXTRACTION_RULE).finding(
        title=f"{r.attack}: a copy agreeing with the model on {r.fidelity:.1%} of held-out inputs after "
              f"{r.queries} queries", check=check, severity=severity,
        description=f"The {r.attack} attack built a copy of the model from {r.queries} queries that agrees with it "
                    f"on {r.fidelity:.1%} of held-out inputs.{acc}",
        metrics={"attack": r.attack, "fidelity": r.fidelity, "queries": r.queries, "accuracy": r.accuracy})


def _transfer_chain(target: Any, extraction: ExtractionResult, pool: Dataset, spec: TransferSpec,
                    ctx: RunContext) -> dict[str, Any]:
    """Adversarial inputs crafted on the copy with the evasion ``transfer`` attack, sent to the
    model, beside random noise of the same per-input norm: the share of held-out records the model
    classified right that each one makes it get wrong."""
    from bastion.attacks.base import get_attack
    from bastion.core.metrics import perturbation_norms

    hold = np.asarray(extraction.holdout[:spec.samples], np.int64)
    x, y = np.asarray(pool.x)[hold], np.asarray(pool.y)[hold]
    attack = get_attack("transfer", eps=spec.eps, norm=spec.norm, steps=spec.steps, surrogate=extraction.surrogate)
    adv = attack.run(target, x, y, ctx=ctx.spawn(f"transfer-{extraction.attack}"))
    right = adv.clean_pred == y
    spec_in = target.input_spec
    size = perturbation_norms(x, adv.x_adv, spec_in.scale_array())[spec.norm]
    noise = _noise(x.shape, size, spec.norm, ctx.rng("noise", extraction.attack)) * spec_in.scale_array()
    lo, hi = spec_in.bounds_arrays()
    noisy = np.clip(x + noise * spec_in.mutable_mask(), lo, hi).astype(np.float32)
    noisy_pred = target.predict(noisy)
    n = int(right.sum())
    rate = (lambda pred: float(np.mean(pred[right] != y[right])) if n else float("nan"))  # noqa: E731
    return {"eps": spec.eps, "norm": spec.norm, "inputs": n, "transfer_success_rate": rate(adv.adv_pred),
            "noise_success_rate": rate(noisy_pred)}


def _noise(shape: tuple[int, ...], size: np.ndarray, norm: str, rng: np.random.Generator) -> np.ndarray:
    """Random perturbations with the given per-input norms: random signs (L∞) or a uniformly
    random direction (L2)."""
    if norm == "linf":
        d = rng.choice([-1.0, 1.0], size=shape)
    else:
        d = rng.standard_normal(shape)
        d /= np.linalg.norm(d.reshape(len(d), -1), axis=1).clip(1e-12).reshape(-1, *([1] * (len(shape) - 1)))
    return d * size.reshape(-1, *([1] * (len(shape) - 1)))
