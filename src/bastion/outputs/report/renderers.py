"""One HTML renderer per artifact type.

A renderer takes every artifact of its type from one check (so curves of several attacks share
one chart) and returns display blocks for the template: ``figure`` (an inline image with a
caption), ``tabular`` (adversarial records) or ``kv`` (a small table). :data:`RENDERERS`, a lazy
registry (entry-point group ``bastion.renderers``), maps each ``Artifact.type`` to its renderer;
a type without one is listed as "not drawn", never guessed at from names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bastion.core.registry import Registry
from bastion.core.results import (
    DefenseCostTable,
    DriftSeries,
    ExampleGrid,
    FidelityCurve,
    Histogram,
    InversionGrid,
    PoisoningCurve,
    QueryCurve,
    QueryLog,
    ReliabilityDiagram,
    RobustnessCurve,
    RocCurve,
    StageChart,
    TabularExamples,
    VariantTable,
)
from bastion.outputs.report import plots
from bastion.outputs.report.summary import format_number

Block = dict[str, Any]
Renderer = Callable[[Sequence[Any]], list[Block]]
_MAX_ROWS = 12


def _figure(title: str, uri: str, caption: str, wide: bool = False) -> Block:
    return {"kind": "figure", "title": title, "uri": uri, "caption": caption, "wide": wide}


def robustness_curves(arts: Sequence[RobustnessCurve]) -> list[Block]:
    return [_figure("Robustness curve", plots.robustness_curve([a.model_dump() for a in arts]),
                    "Share of inputs still classified correctly as the attacker's budget ε grows. The dashed line "
                    "is the accuracy without attack; the lower the curve, the easier the model is to fool.")]


def example_grids(arts: Sequence[ExampleGrid]) -> list[Block]:
    out = []
    for a in arts:
        at = f" at ε = {format_number(a.eps)}" if a.eps is not None else ""
        out.append(_figure(a.title or f"Adversarial examples ({a.attack or 'attack'}{at})",
                           plots.example_grid(a.model_dump()),
                           "Top: original inputs with their true label. Middle: the change the attack made, "
                           "amplified (red = brighter, blue = darker). Bottom: the modified input and what the "
                           "model now says (red when it is wrong).", wide=True))
    return out


def inversion_grids(arts: Sequence[InversionGrid]) -> list[Block]:
    return [_figure(a.title or f"Model inversion ({a.attack or 'attack'})", plots.inversion_grid(a.model_dump()),
                    "Top: the mean of each class's real records. Bottom: the input the attack reconstructed from "
                    "the model alone for that class, on the same grey scale. cos: how similar the reconstruction is "
                    "to its class mean (both relative to the mean of all records; green when its own class mean is "
                    "the most similar one, red naming the class it resembles most).", wide=True) for a in arts]


def stage_charts(arts: Sequence[StageChart]) -> list[Block]:
    return [_figure(a.title or "Robust accuracy after each attack stage",
                    plots.stages_chart([s.model_dump() for s in a.stages]),
                    "Each stage attacks only the inputs that survived the previous ones.") for a in arts]


def query_curves(arts: Sequence[QueryCurve]) -> list[Block]:
    return [_figure("Attack success against queries", plots.query_curves([a.model_dump() for a in arts]),
                    "How quickly an attacker who can only query the model succeeds.")]


def histograms(arts: Sequence[Histogram]) -> list[Block]:
    return [_figure(a.title or "Histogram", plots.histogram(a.model_dump()), "") for a in arts]


def roc_curves(arts: Sequence[RocCurve]) -> list[Block]:
    series = [(f"{a.attack or 'attack'}" + (f" (AUC {a.auc:.3f})" if a.auc is not None else ""), a.fpr, a.tpr)
              for a in arts]
    return [_figure("ROC curve (log-log)", plots.roc_loglog(series),
                    "How well the attack tells records used in training from others, on logarithmic axes so that "
                    "low false-positive rates are visible: what matters is how many training records an attacker "
                    "identifies while almost never accusing others. The dashed diagonal is guessing; the further "
                    "above it, the more the model leaks about its training data.")]


def fidelity_curves(arts: Sequence[FidelityCurve]) -> list[Block]:
    series = [(a.attack or "extraction", a.queries, a.fidelity) for a in arts]
    return [_figure("Fidelity of the stolen copy", plots.line_chart(series, xlabel="queries to the model",
                                                                    ylabel="agreement with the model"),
                    "Share of inputs on which a copy trained from the model's answers agrees with it.")]


def drift_series(arts: Sequence[DriftSeries]) -> list[Block]:
    out = []
    for a in arts:
        xs = list(range(len(a.values)))
        out.append(_figure(a.title or f"Drift: {a.metric}", plots.line_chart(
            [(a.metric, xs, a.values)], xlabel="window", ylabel=a.metric, percent=False, threshold=a.threshold),
            f"{a.metric} per time window ({len(a.windows)} windows); above the dashed line an alert is raised."))
    return out


def reliability_diagrams(arts: Sequence[ReliabilityDiagram]) -> list[Block]:
    series = [(a.title or (f"model (ECE {a.ece:.3f})" if a.ece is not None else "model"), a.confidence, a.accuracy)
              for a in arts if a.confidence]
    if not series:
        return []
    return [_figure("Reliability diagram", plots.line_chart(series, xlabel="confidence", ylabel="accuracy",
                                                             diagonal=True),
                    "Accuracy of the model's answers against its confidence in them, per confidence bin. A "
                    "calibrated model lies on the dashed diagonal; below it, the model is overconfident.")]


def poisoning_curves(arts: Sequence[PoisoningCurve]) -> list[Block]:
    out = []
    for a in arts:
        series = [(name.replace("_", " "), a.x, [float("nan") if v is None else v for v in values])
                  for name, values in a.series.items()]
        out.append(_figure(a.title or f"Poisoning: {a.attack}", plots.line_chart(
            series, xlabel=a.xlabel, ylabel="share of test records"),
            "What a model trained on the poisoned data does on clean test records (accuracy) and how often the "
            "attacker gets the answer they want (attack success), as the attacker controls more training records."))
    return out


def tabular_examples(arts: Sequence[TabularExamples]) -> list[Block]:
    out = []
    for a in arts:
        rows = []
        for row in a.rows[:_MAX_ROWS]:
            changes = [(f, v[0], v[1]) for f, v in row.changes.items() if v[0] is not None and v[1] is not None]
            rows.append({"label": row.label, "adv_label": row.adv_label, "fooled": row.label != row.adv_label,
                         "changes": [(f, format_number(x), format_number(y), f"{y - x:+.3g}") for f, x, y in changes[:5]],
                         "more": max(0, len(changes) - 5)})
        if rows:
            out.append({"kind": "tabular", "title": a.title or "Largest feature changes", "attack": a.attack,
                        "rows": rows})
    return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def query_logs(arts: Sequence[QueryLog]) -> list[Block]:
    out = []
    for a in arts:
        rows = []
        for k, v in a.counters.items():
            if k.startswith("bytes") and isinstance(v, int | float) and not isinstance(v, bool):
                text = _human_bytes(float(v))
            elif k == "seconds" and isinstance(v, int | float):
                text = f"{float(v):.2f} s"
            elif isinstance(v, dict):
                text = ", ".join(f"{kk}: {format_number(vv)}" for kk, vv in v.items())
            else:
                text = format_number(v)
            rows.append((k.replace("_", " "), text))
        out.append({"kind": "kv", "title": a.title or "Queries sent to the model", "rows": rows})
    return out


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def variant_tables(arts: Sequence[VariantTable]) -> list[Block]:
    """The model and its deployment variants: clean and robust accuracy as bars, and the full table."""
    out: list[Block] = []
    for a in arts:
        names = [r.variant for r in a.rows]
        out.append(_figure(a.title or "Deployment variants", plots.grouped_bars(
            names, [("clean", [r.clean_accuracy for r in a.rows]),
                    ("robust (worst case)", [r.robust_accuracy for r in a.rows])],
            ylabel="accuracy", marked=[r.flagged for r in a.rows]),
            f"Each model on the same inputs; robust accuracy is the share no attack ({', '.join(a.attacks)}) fooled "
            f"at ε = {format_number(a.eps)}. A name in red is markedly less robust than the full model."))
        rows = [[r.variant + (" ⚠" if r.flagged else ""), r.source, r.gradients, _ratio(r.clean_accuracy),
                 _ratio(r.robust_accuracy), _ratio(r.agreement), _ratio(r.transfer_from_full),
                 _ratio(r.transfer_to_full), "—" if r.p_value is None else f"{r.p_value:.2g}"] for r in a.rows]
        out.append({"kind": "table", "title": a.title or "Deployment variants",
                    "header": ["model", "source", "white-box gradients", "clean", "robust", "agrees with full",
                               "full → it", "it → full", "McNemar p"], "rows": rows,
                    "caption": " ".join(["Transfer: share of the inputs that fooled one model which also fool the "
                                         "other.", *(f"{r.variant}: {n}." for r in a.rows for n in r.notes)])})
    return out


def defense_cost_tables(arts: Sequence[DefenseCostTable]) -> list[Block]:
    """Output defenses side by side: accuracy, membership TPR at low FPR and extraction fidelity as bars,
    and the full table with intervals."""
    out: list[Block] = []
    for a in arts:
        names = [r.defense for r in a.rows]
        mia = sorted({k for r in a.rows for k in r.membership})
        ext = sorted({k for r in a.rows for k in r.extraction})
        series = [("accuracy", [r.accuracy for r in a.rows])]
        series += [(f"{k} TPR @ {a.fpr:.0%} FPR", [r.membership.get(k, {}).get("tpr") for r in a.rows]) for k in mia]
        series += [(f"{k} fidelity", [r.extraction.get(k, {}).get("fidelity") for r in a.rows]) for k in ext]
        out.append(_figure(a.title or "Output defenses", plots.grouped_bars(names, series, ylabel="share"),
                           "Each defense on the same records: lower membership TPR and extraction fidelity mean "
                           "more protection; accuracy should stay level. A missing bar was not measured.", wide=True))

        def ci(m: dict[str, Any], key: str) -> str:
            v, (lo, hi) = m.get(key), m.get(f"{key}_ci", (None, None))
            text = "—" if v is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"
            avg, once = (m.get("averaged") or {}).get(key), (m.get("single_query") or {}).get(key)
            return text if avg is None or once is None else f"{text} (averaged {avg:.3f}, asked once {once:.3f})"

        rows = [[r.defense, _ratio(r.accuracy), _ratio(r.agreement),
                 *(ci(r.membership.get(k, {}), f) for k in mia for f in ("auc", "tpr")),
                 *(ci(r.extraction.get(k, {}), "fidelity") for k in ext)] for r in a.rows]
        header = ["defense", "accuracy", "agrees with undefended",
                  *(f"{k} {f}" for k in mia for f in ("AUC", f"TPR @ {a.fpr:g}")), *(f"{k} fidelity" for k in ext)]
        out.append({"kind": "table", "title": a.title or "Output defenses", "header": header, "rows": rows,
                    "caption": " ".join(["Brackets: 95 % intervals.",
                                         *(f"{r.defense}: randomised; each figure is the stronger of an attacker "
                                           f"who asks every input {r.repeats} times and averages the answers (every "
                                           "repeat a query) and one who asks once (both in brackets)."
                                           for r in a.rows if r.repeats > 1),
                                         *(f"{r.defense}: {n}." for r in a.rows for n in r.notes)])})
    return out


_HERE = __name__
#: Artifact type -> renderer (entry-point group ``bastion.renderers``).
RENDERERS: Registry[Renderer] = Registry("renderer", {
    "robustness_curve": f"{_HERE}:robustness_curves",
    "example_grid": f"{_HERE}:example_grids",
    "stage_chart": f"{_HERE}:stage_charts",
    "query_curve": f"{_HERE}:query_curves",
    "histogram": f"{_HERE}:histograms",
    "roc_curve": f"{_HERE}:roc_curves",
    "fidelity_curve": f"{_HERE}:fidelity_curves",
    "drift_series": f"{_HERE}:drift_series",
    "tabular_examples": f"{_HERE}:tabular_examples",
    "query_log": f"{_HERE}:query_logs",
    "reliability_diagram": f"{_HERE}:reliability_diagrams",
    "variant_table": f"{_HERE}:variant_tables",
    "inversion_grid": f"{_HERE}:inversion_grids",
    "poisoning_curve": f"{_HERE}:poisoning_curves",
    "defense_cost_table": f"{_HERE}:defense_cost_tables",
})
