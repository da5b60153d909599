"""The ``privacy-defense-eval`` check: what does each output defense buy against privacy attacks, and at what cost?

For the undefended model and for the model behind each output-hardening defense
(:mod:`bastion.defenses.outputs`), side by side: accuracy (task accuracy on the eval records and
top-1 agreement with the undefended model), membership inference (the ``membership`` check's
attacks and records: AUC and TPR at 1 % FPR with their 95 % intervals) and model extraction (the
``extraction`` check's attacks at their budget: fidelity with its interval). Each row runs the
membership and extraction checks' own code on the defended target; attacks that train shadow or
reference models harden their models' answers like the target (the attacker knows the defense).

A randomised defense (``output-noise``: fresh noise at every query, declared ``randomized`` with its
EOT draws) is measured twice: by attackers who ask each input ``eot_samples`` times and average the
answers (:mod:`bastion.core.repeated`; every repeat counted) and by the same attackers asking once.
It is credited, per figure, with the stronger of the two (averaging for membership inference; at
a fixed query budget extraction may do better with more inputs asked once), both kept beside
(``averaged``, ``single_query``). A deterministic defense is asked once per input.

Findings: ``BASTION-MI-005`` when a defense buys nothing (every membership figure and every
extraction fidelity measured through it lies within the undefended figure's 95 % interval),
``BASTION-MI-006`` when it costs more accuracy than ``tolerance``, and ``BASTION-MI-007`` when a
randomised defense's noise is averaged away (a single-query figure understates the averaging
attacker's by more than ``repeat_tolerance``). Behind ``label-only`` only the
membership attacks that read labels run (``label-robustness``, Choquette-Choo et al. 2021,
arXiv:2007.14321); with none of them configured the row says membership was not measured, which
is not a measurement of no leak; score-trained extraction attacks are run on the labels
(``labels: top1``), as the attacker would.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from bastion.campaign.checks.base import Check, CheckContext, CheckFailed, CheckParams, Interrupted, register_check
from bastion.campaign.checks.defense_eval import undefended
from bastion.campaign.checks.extraction import ExtractionCheck, ExtractionCheckParams
from bastion.campaign.checks.membership import MembershipCheck, MembershipParams
from bastion.campaign.gates import GateView
from bastion.campaign.privacy_rules import AVERAGED_AWAY_RULE, DEFENSE_COST_RULE, USELESS_DEFENSE_RULE
from bastion.core.defense import DEFENSES, DefendedTarget, TargetDefense
from bastion.core.repeated import query_repeats
from bastion.core.results import CheckResult, DefenseCostRow, DefenseCostTable, Finding
from bastion.core.rules import get_rule
from bastion.core.stats import auc_interval, clopper_pearson
from bastion.core.targets.base import Target
from bastion.errors import UsageError

FPR = 0.01
UNDEFENDED = "undefended"
MEASURED = frozenset({"accuracy", "agreement", "membership_auc", "tpr_at_fpr", "fidelity",
                      "single_query_membership_auc", "single_query_tpr_at_fpr", "single_query_fidelity"})
ONCE = "single_query"


def _output_defense(i: int, spec: Any) -> TargetDefense:
    """Defense ``i`` of the list, built and checked to be output hardening; ValueError naming it."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind", spec.get("name")), str):
        raise ValueError(f"defenses[{i}]: write {{kind: NAME, ...parameters}}, got {spec!r}")
    name = spec.get("kind", spec.get("name"))
    params = spec.get("params", {k: v for k, v in spec.items() if k not in ("kind", "name")})
    outputs = _OUTPUT_NAMES
    if name not in DEFENSES:
        raise ValueError(f"defenses[{i}]: unknown defense '{name}'; output defenses: {', '.join(outputs)}")
    cls = DEFENSES.get_object(name)
    if not (isinstance(cls, type) and issubclass(cls, TargetDefense)):
        raise ValueError(f"defenses[{i}]: '{name}' is a training defense; output defenses: {', '.join(outputs)}")
    try:
        defense = cls(**params)
    except UsageError as exc:
        raise ValueError(f"defenses[{i}]: {exc.message}") from None
    if not defense.hardens_output() or type(defense).preprocess is not TargetDefense.preprocess:
        raise ValueError(f"defenses[{i}]: '{name}' transforms the input, not the answer (use defense-eval for it); "
                         f"output defenses: {', '.join(outputs)}")
    return defense


def describe(defense: TargetDefense) -> str:
    """``name(param=value, ...)``: a row's label (``eot_samples`` only when not its default: it sets how
    often the attacks repeat each query)."""
    fields = type(defense.params).model_fields
    args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in defense.params.model_dump().items()
                     if k != "eot_samples" or v != fields[k].default)
    return f"{defense.label}({args})" if args else defense.label


_OUTPUT_NAMES = ("top-k", "label-only", "rounding", "reverse-sigmoid", "output-noise")


class PrivacyDefenseEvalParams(CheckParams):
    defenses: list[dict[str, Any]] | None = Field(default=None, description=(
        "Output defenses compared with the undefended model, each {kind: NAME, ...parameters} (top-k, label-only, "
        "rounding, reverse-sigmoid, output-noise); default: the output defenses of target.defenses, each alone."))
    membership: MembershipParams | None = Field(default_factory=MembershipParams, description=(
        "The membership check's parameters (attacks, members, non_members, reference, ...); null: not measured."))
    extraction: ExtractionCheckParams | None = Field(default=None, description=(
        "The extraction check's parameters (attacks, pool, query_budget, ...); null: not measured."))
    tolerance: float = Field(default=0.02, ge=0, le=1, description=(
        "Accuracy (or top-1 agreement) a defense may lose before a finding says it costs accuracy (a ratio)."))
    repeat_tolerance: float = Field(default=0.02, ge=0, le=1, description=(
        "How far a randomised defense's single-query figure (membership AUC, TPR, extraction fidelity) may lie "
        "below the averaging attacker's before a finding says its noise is averaged away."))

    @field_validator("defenses")
    @classmethod
    def _defenses(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v is not None:
            if not v:
                raise ValueError("give at least one output defense, or leave 'defenses' out")
            for i, spec in enumerate(v):
                _output_defense(i, spec)
        return v

    @model_validator(mode="after")
    def _something(self) -> PrivacyDefenseEvalParams:
        if self.membership is None and self.extraction is None:
            raise ValueError("measure membership, extraction or both: give 'membership' or 'extraction'")
        if self.extraction is not None and self.extraction.transfer is not None:
            raise ValueError("extraction.transfer is not measured here; run it in the extraction check")
        return self


@register_check
class PrivacyDefenseEvalCheck(Check):
    """Each output defense's effect on membership inference, extraction fidelity and accuracy."""

    kind = "privacy-defense-eval"
    Params = PrivacyDefenseEvalParams
    metric_names = MEASURED

    def __init__(self, name: str, params: PrivacyDefenseEvalParams) -> None:
        super().__init__(name, params)
        self.params: PrivacyDefenseEvalParams = params
        self.membership = None if params.membership is None else MembershipCheck(f"{name}/membership",
                                                                                  params.membership)
        self.extraction = None if params.extraction is None else ExtractionCheck(f"{name}/extraction",
                                                                                 params.extraction)

    def requirements(self) -> frozenset[str]:
        return frozenset().union(*(c.requirements() for c in (self.membership, self.extraction) if c is not None))

    def gate_view(self) -> GateView:
        attacks = frozenset(a.label for c in (self.membership, self.extraction) if c is not None for a in c.attacks)
        return GateView(self.name, frozenset({self.name, self.kind}), MEASURED,
                        {"defense": None, "attack": attacks, "fpr": frozenset({f"{FPR:g}"})})

    # --- the rows --------------------------------------------------------------------------------
    def _models(self, target: Target) -> list[tuple[str, Target]]:
        """(label, model) for the undefended model and each defended one."""
        if self.params.defenses is not None:
            base = target
            defenses = [_output_defense(i, s) for i, s in enumerate(self.params.defenses)]
        else:
            base, defenses, t = undefended(target), [], target
            while isinstance(t, DefendedTarget):
                if t.defense.hardens_output():
                    defenses.insert(0, t.defense)
                t = t.inner
            if not defenses:
                raise UsageError(f"check '{self.name}' compares output defenses, but none is configured",
                                 hint="give the check 'defenses: [{kind: top-k, k: 1}, {kind: rounding, decimals: 2}]'"
                                      " or put them in target.defenses")
        seed = 0  # each defended model draws its own noise from its own seeded generator
        return [(UNDEFENDED, base), *((describe(d), d.wrap(base, seed=seed)) for d in defenses)]

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        t0 = time.perf_counter()
        models = self._models(target)
        res = CheckResult(name=self.name, kind=self.kind, metrics={"rows": [], "notes": []})
        rows: list[DefenseCostRow] = []
        errors: list[str] = []
        with target.uncounted(), models[0][1].uncounted():
            reference = models[0][1].predict(np.asarray(data.x))
        for label, model in models:
            try:
                rows.append(self._row(ctx, label, model, reference, np.asarray(y), errors))
            except Interrupted:
                errors.append(f"{label}: interrupted")
                raise Interrupted(self._finish(res, rows, errors, t0)) from None
        final = self._finish(res, rows, errors, t0)
        if errors:
            raise CheckFailed(final)
        return final

    def _row(self, ctx: CheckContext, label: str, model: Target, reference: np.ndarray, y: np.ndarray,
             errors: list[str]) -> DefenseCostRow:
        sub = replace(ctx, target=model)
        with model.uncounted():
            pred = model.predict(np.asarray(ctx.data.x))  # type: ignore[union-attr]
        row = DefenseCostRow(defense=label, accuracy=float(np.mean(pred == y)),
                             agreement=float(np.mean(pred == reference)),
                             repeats=query_repeats(model, None, np.asarray(ctx.data.x)))  # type: ignore[union-attr]
        if self.membership is not None:
            self._membership(sub, model, row, errors)
        if self.extraction is not None:
            self._extraction(sub, model, row, errors)
        return row

    def _membership(self, ctx: CheckContext, model: Target, row: DefenseCostRow, errors: list[str]) -> None:
        assert self.membership is not None and self.params.membership is not None
        check = self.membership
        if model.label_only:
            kept = [a for a in self.params.membership.attacks if not check.attacks[
                self.params.membership.attacks.index(a)].needs_scores]
            if not kept:
                row.notes.append("membership not measured: every configured attack needs scores, which a label-only "
                                 "answer withholds; a leak may remain: add the label-only attack label-robustness "
                                 "to the membership attacks to measure it")
                return
            check = MembershipCheck(check.name, self.params.membership.model_copy(update={"attacks": kept}))
        out = self._run(check, ctx, row, errors)
        if out is None:
            return
        row.membership = _membership_figures(out)
        if row.repeats > 1 and (once := self._run(_asked_once(check), ctx, row, errors)) is not None:
            for attack, m in _membership_figures(once).items():
                if attack in row.membership:
                    row.membership[attack] = _stronger(row.membership[attack], m, ("auc", "tpr"))

    def _extraction(self, ctx: CheckContext, model: Target, row: DefenseCostRow, errors: list[str]) -> None:
        assert self.extraction is not None and self.params.extraction is not None
        check = self.extraction
        if model.label_only:  # the attacker trains on the labels it gets
            specs = [s.model_copy(update={"params": {**s.params, "labels": "top1"}})
                     if "labels" in type(a.params).model_fields else s
                     for s, a in zip(self.params.extraction.attacks, check.attacks, strict=True)]
            check = ExtractionCheck(check.name, self.params.extraction.model_copy(update={"attacks": specs}))
        out = self._run(check, ctx, row, errors)
        if out is None:
            return
        row.extraction = _extraction_figures(out)
        if row.repeats > 1 and (once := self._run(_asked_once(check), ctx, row, errors)) is not None:
            for attack, m in _extraction_figures(once).items():
                if attack in row.extraction:
                    row.extraction[attack] = _stronger(row.extraction[attack], m, ("fidelity",))

    @staticmethod
    def _run(check: Check, ctx: CheckContext, row: DefenseCostRow, errors: list[str]) -> CheckResult | None:
        """The sub-check's result; what it could not measure goes to the row and to ``errors``."""
        try:
            return check.run(ctx)
        except CheckFailed as exc:
            reason = exc.partial.reason or "failed"
            row.notes.append(f"{check.kind}: {reason}")
            errors.append(f"{row.defense}: {check.kind}: {reason}")
            return exc.partial
        except Interrupted as exc:
            raise Interrupted(exc.partial) from None

    # --- results ---------------------------------------------------------------------------------
    def _finish(self, res: CheckResult, rows: list[DefenseCostRow], errors: list[str], t0: float) -> CheckResult:
        for row in rows:
            where = {"defense": row.defense}
            res.measure("accuracy", row.accuracy, "ratio", **where)
            res.measure("agreement", row.agreement, "ratio", **where)
            for attack, m in row.membership.items():
                res.measure("membership_auc", m["auc"], "score", **where, attack=attack)
                res.measure("tpr_at_fpr", m["tpr"], "ratio", **where, attack=attack, fpr=FPR)
                if (s := m.get(ONCE)) is not None:
                    res.measure("single_query_membership_auc", s["auc"], "score", **where, attack=attack)
                    res.measure("single_query_tpr_at_fpr", s["tpr"], "ratio", **where, attack=attack, fpr=FPR)
            for attack, m in row.extraction.items():
                res.measure("fidelity", m["fidelity"], "ratio", **where, attack=attack)
                if (s := m.get(ONCE)) is not None:
                    res.measure("single_query_fidelity", s["fidelity"], "ratio", **where, attack=attack)
        res.metrics["rows"] = [r.model_dump() for r in rows]
        res.metrics["tolerance"] = self.params.tolerance
        if rows:
            res.artifacts.append(DefenseCostTable(title="Output defenses: privacy and accuracy", fpr=FPR, rows=rows))
        if rows and rows[0].defense == UNDEFENDED:
            res.findings += [f for row in rows[1:] for f in self._findings(rows[0], row)]
        if errors:
            res.status, res.reason = "error", "; ".join(errors)
        res.seconds = time.perf_counter() - t0
        return res

    def _findings(self, base: DefenseCostRow, row: DefenseCostRow) -> list[Finding]:
        out: list[Finding] = []
        same = _unchanged(base, row)
        if same:
            out.append(get_rule(USELESS_DEFENSE_RULE).finding(
                title=f"{row.defense} buys nothing: {'; '.join(same)} as without it (within 95 % intervals)",
                check=self.name, description=(
                    f"Through {row.defense}, every membership attack and every extraction attack measured reached "
                    f"the figures it reached on the undefended model, within their 95 % intervals."),
                metrics={"defense": row.defense, "membership": row.membership, "extraction": row.extraction,
                         "undefended": {"membership": base.membership, "extraction": base.extraction}}))
        gaps = _averaged_away(row, self.params.repeat_tolerance)
        if gaps:
            out.append(get_rule(AVERAGED_AWAY_RULE).finding(
                title=(f"{row.defense}: its noise is averaged away by {row.repeats} queries per input: "
                       f"{'; '.join(gaps)}"),
                check=self.name, description=(
                    f"{row.defense} draws fresh randomness at every query. Asked once per input, the attacks below "
                    f"reach less than an attacker who asks each input {row.repeats} times and averages the answers "
                    f"(every repeat counted as a query): the single-query figures overstate the protection by more "
                    f"than {self.params.repeat_tolerance:g}. The row reports the averaging attacker's figures."),
                metrics={"defense": row.defense, "repeats": row.repeats, "membership": row.membership,
                         "extraction": row.extraction, "repeat_tolerance": self.params.repeat_tolerance}))
        loss = max(base.accuracy - row.accuracy, 1.0 - row.agreement)
        if loss > self.params.tolerance:
            out.append(get_rule(DEFENSE_COST_RULE).finding(
                title=(f"{row.defense} costs accuracy: {base.accuracy:.1%} -> {row.accuracy:.1%}, top-1 agreement "
                       f"with the undefended model {row.agreement:.1%} (tolerance {self.params.tolerance:.1%})"),
                check=self.name, description="The defense changes the answered label of some inputs.",
                metrics={"defense": row.defense, "accuracy": row.accuracy, "undefended_accuracy": base.accuracy,
                         "agreement": row.agreement, "tolerance": self.params.tolerance}))
        return out


def _membership_figures(out: CheckResult) -> dict[str, dict[str, Any]]:
    """Per membership attack of a membership check's result: AUC and TPR at ``FPR`` with intervals."""
    n_members, n_non = int(out.values("members")[0]), int(out.values("non_members")[0])
    figures = {}
    for attack, m in out.metrics["attacks"].items():
        lo, hi = auc_interval(m["auc"], n_members, n_non)
        point = next((p for p in m["tpr_at_fpr"] if abs(p["fpr"] - FPR) < 1e-12), {})
        figures[attack] = {"auc": m["auc"], "auc_ci": [lo, hi], "tpr": point.get("tpr"),
                           "tpr_ci": [point.get("ci_low"), point.get("ci_high")], "repeats": m.get("repeats", 1)}
    return figures


def _extraction_figures(out: CheckResult) -> dict[str, dict[str, Any]]:
    """Per extraction attack of an extraction check's result: fidelity with its interval, queries."""
    figures = {}
    for attack, m in out.metrics["attacks"].items():
        n = int(m["holdout"])
        lo, hi = clopper_pearson(int(round(m["fidelity"] * n)), n)
        figures[attack] = {"fidelity": m["fidelity"], "fidelity_ci": [lo, hi], "queries": m["queries"],
                           "repeats": m.get("repeats", 1)}
    return figures


def _stronger(averaged: dict[str, Any], once: dict[str, Any], figures: tuple[str, ...]) -> dict[str, Any]:
    """What a randomised defense is credited with: per figure the stronger of the averaging attacker
    and the single-query one (the higher value, with its interval; averaging wins ties), both kept
    beside (``averaged``, ``single_query``). Averaging is the stronger membership attacker; at a fixed
    query budget an extraction attacker may do better with more inputs asked once (labels that the
    noise never moves)."""
    out: dict[str, Any] = {}
    for key in figures:
        a, o = averaged.get(key), once.get(key)
        src = once if o is not None and (a is None or o > a) else averaged
        out[key], out[f"{key}_ci"] = src[key], src[f"{key}_ci"]
        if key == "fidelity":
            out["queries"] = src["queries"]
    return {**out, "repeats": averaged["repeats"], "averaged": averaged, ONCE: once}


def _asked_once(check: Check) -> Check:
    """The same membership or extraction check with every attack asking each input once."""
    params: Any = check.params
    specs = [s.model_copy(update={"params": {**s.params, "repeats": 1}}) for s in params.attacks]
    return type(check)(check.name, params.model_copy(update={"attacks": specs}))


def _averaged_away(row: DefenseCostRow, tolerance: float) -> list[str]:
    """Where the single-query figure lies more than ``tolerance`` below the averaging attacker's."""
    said = []
    for attack, m in row.membership.items():
        once, avg = m.get(ONCE), m.get("averaged")
        if once is None or avg is None:
            continue
        if avg["auc"] - once["auc"] > tolerance:
            said.append(f"{attack} AUC {once['auc']:.3f} asked once, {avg['auc']:.3f} averaged")
        if avg["tpr"] is not None and once["tpr"] is not None and avg["tpr"] - once["tpr"] > tolerance:
            said.append(f"{attack} TPR at {FPR:.0%} FPR {once['tpr']:.1%} asked once, {avg['tpr']:.1%} averaged")
    for attack, m in row.extraction.items():
        once, avg = m.get(ONCE), m.get("averaged")
        if once is not None and avg is not None and avg["fidelity"] - once["fidelity"] > tolerance:
            said.append(f"{attack} fidelity {once['fidelity']:.1%} asked once, {avg['fidelity']:.1%} averaged")
    return said


def _within(value: float | None, ci: list[float | None]) -> bool:
    lo, hi = ci
    return value is not None and lo is not None and hi is not None and lo - 1e-12 <= value <= hi + 1e-12


def _unchanged(base: DefenseCostRow, row: DefenseCostRow) -> list[str]:
    """What the defense left unchanged (each figure within the undefended one's interval), or []
    when any figure moved out of it or nothing was compared."""
    said: list[str] = []
    if set(row.membership) != set(base.membership) or set(row.extraction) != set(base.extraction):
        return []  # not every figure compared (e.g. no membership attack behind label-only)
    for attack, m in row.membership.items():
        b = base.membership[attack]
        if not _within(m["auc"], b["auc_ci"]) or (b["tpr"] is not None and not _within(m["tpr"], b["tpr_ci"])):
            return []
        said.append(f"{attack} AUC {m['auc']:.3f} (undefended {b['auc']:.3f})")
    for attack, m in row.extraction.items():
        b = base.extraction[attack]
        if not _within(m["fidelity"], b["fidelity_ci"]):
            return []
        said.append(f"{attack} fidelity {m['fidelity']:.1%} (undefended {b['fidelity']:.1%})")
    return said
