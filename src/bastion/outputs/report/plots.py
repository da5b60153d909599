"""Figures for the HTML report, drawn with matplotlib and returned as ``data:`` URIs.

Every figure is drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot
global state) and embedded inline, so ``report.html`` stays one self-contained file: charts
as SVG (crisp when printed; text drawn as paths, so no font files), image grids as PNG.
Artifacts come from checks and are free-form JSON: each function validates what it draws and
raises :class:`ValueError` with a short reason when the data does not fit.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_NORM_LABEL = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
_RC = {
    "text.parse_math": False,  # never interpret '$' in untrusted names as math
    "svg.fonttype": "path",
    "svg.hashsalt": "bastion",  # deterministic ids: same result -> same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]
MAX_EXAMPLES = 10
MAX_INVERSION_CLASSES = 20


def _rc() -> dict[str, Any]:
    from cycler import cycler

    return {**_RC, "axes.prop_cycle": cycler(color=_COLORS)}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig: Any, fmt: str = "svg", dpi: int = 110) -> str:
    """Serialise a figure to a ``data:image/...;base64,`` URI (no metadata, reproducible)."""
    buf = io.BytesIO()
    meta: dict[str, Any] = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _floats(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a list of numbers") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty list of numbers")
    return arr


def robustness_curve(curves: Sequence[Mapping[str, Any]]) -> str:
    """Robust accuracy against ε, one line per attack, one panel per norm (clean accuracy dashed)."""
    import matplotlib

    if not curves:
        raise ValueError("no curves")
    by_norm: dict[str, list[Mapping[str, Any]]] = {}
    for c in curves:
        by_norm.setdefault(str(c.get("norm", "linf")), []).append(c)
    with matplotlib.rc_context(_rc()):
        fig = _figure(4.6 * len(by_norm) + 0.6, 3.2)
        axes = fig.subplots(1, len(by_norm), squeeze=False)[0]
        for ax, (norm, group) in zip(axes, by_norm.items(), strict=True):
            cleans: set[float] = set()
            for i, c in enumerate(group):
                eps = _floats(c.get("eps"), "eps")
                acc = _floats(c.get("robust_accuracy"), "robust_accuracy")
                if eps.shape != acc.shape:
                    raise ValueError(f"curve '{c.get('attack')}': eps and robust_accuracy differ in length")
                order = np.argsort(eps)
                color = _COLORS[i % len(_COLORS)]
                ax.plot(eps[order], acc[order], marker="o", ms=4, lw=2, color=color, label=str(c.get("attack", "?")))
                clean = c.get("clean_accuracy")
                if isinstance(clean, int | float) and round(float(clean), 6) not in cleans:
                    cleans.add(round(float(clean), 6))
                    ax.axhline(float(clean), ls="--", lw=1, color="#6b7280")
                    ax.annotate(f"clean {float(clean):.1%}", (1.0, float(clean)), xycoords=("axes fraction", "data"),
                                ha="right", va="bottom", fontsize=8, color="#374151")
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlabel(f"perturbation budget ε ({_NORM_LABEL.get(norm.lower(), norm)})")
            ax.set_ylabel("robust accuracy")
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
            ax.legend(frameon=False, fontsize=8)
        return figure_to_data_uri(fig, "svg")


def _images(values: Any, shape: Sequence[int], what: str) -> np.ndarray:
    """Lists of images -> array (n, H, W) or (n, H, W, C) in [0, 1]."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError("shape must be [H, W] or [C, H, W]")
    arr = np.asarray(values, dtype=float)
    size = int(np.prod(shape))
    if arr.size == 0 or arr.size % size:
        raise ValueError(f"{what}: {arr.size} values do not split into images of shape {list(shape)}")
    arr = arr.reshape((-1, *shape))
    if len(shape) == 3:
        if shape[0] not in (1, 3):
            raise ValueError(f"{what}: images need 1 or 3 channels, got {shape[0]}")
        arr = arr[:, 0] if shape[0] == 1 else arr.transpose(0, 2, 3, 1)
    return np.nan_to_num(arr)


def example_grid(examples: Mapping[str, Any]) -> str:
    """Original / amplified perturbation / adversarial image for each example (PNG)."""
    import matplotlib

    shape = examples.get("shape")
    if not isinstance(shape, list | tuple):
        raise ValueError("examples need a 'shape'")  # noqa: TRY004 - bad data, reported as a drawing error
    orig = _images(examples.get("original"), shape, "original")
    adv = _images(examples.get("adversarial"), shape, "adversarial")
    if orig.shape != adv.shape:
        raise ValueError("original and adversarial hold different numbers of images")
    n = min(len(orig), MAX_EXAMPLES)
    orig, adv = orig[:n], adv[:n]
    delta = adv - orig
    # one signed map per pixel: mean over colour channels
    signed = delta.mean(axis=-1) if delta.ndim == 4 else delta
    bound = float(np.abs(signed).max()) or 1.0
    labels = [str(s) for s in examples.get("labels", [])]
    adv_labels = [str(s) for s in examples.get("adv_labels", [])]
    conf = list(examples.get("confidence", []))
    gray = "gray" if orig.ndim == 3 else None

    with matplotlib.rc_context({**_rc(), "axes.grid": False}):
        fig = _figure(1.25 * n + 1.0, 4.3)
        axes = fig.subplots(3, n, squeeze=False)
        rows = ("original", f"perturbation\n(×{0.5 / bound:.3g})", "adversarial")
        for j in range(n):
            axes[0, j].imshow(np.clip(orig[j], 0, 1), cmap=gray, vmin=0, vmax=1, interpolation="nearest")
            axes[1, j].imshow(signed[j], cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
            axes[2, j].imshow(np.clip(adv[j], 0, 1), cmap=gray, vmin=0, vmax=1, interpolation="nearest")
            if j < len(labels):
                axes[0, j].set_title(f"true: {labels[j]}", fontsize=8)
            if j < len(adv_labels):
                text = f"→ {adv_labels[j]}"
                if j < len(conf) and isinstance(conf[j], int | float):
                    text += f" ({float(conf[j]):.0%})"
                fooled = j < len(labels) and adv_labels[j] != labels[j]
                axes[2, j].set_xlabel(text, fontsize=8, color="#b91c1c" if fooled else "#15803d")
            for i in range(3):
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
                for spine in axes[i, j].spines.values():
                    spine.set_visible(False)
        for i, name in enumerate(rows):
            axes[i, 0].set_ylabel(name, fontsize=8)
        return figure_to_data_uri(fig, "png", dpi=120)


def inversion_grid(grid: Mapping[str, Any]) -> str:
    """Each class's mean real record above the model-inversion reconstruction of that class, on one
    shared grey scale, with the reconstruction's similarity to its class mean (green when its own
    class mean is the most similar one; red, naming the nearest class, otherwise) (PNG)."""
    import matplotlib

    shape = grid.get("shape")
    if not isinstance(shape, list | tuple):
        raise ValueError("an inversion grid needs a 'shape'")  # noqa: TRY004 - bad data, reported as a drawing error
    means = _images(grid.get("class_means"), shape, "class_means")
    recs = _images(grid.get("reconstructions"), shape, "reconstructions")
    if means.shape != recs.shape:
        raise ValueError("class_means and reconstructions hold different numbers of images")
    n = min(len(means), MAX_INVERSION_CLASSES)
    means, recs = means[:n], recs[:n]
    labels = [str(s) for s in grid.get("labels", [])]
    nearest = [str(s) for s in grid.get("nearest", [])]
    sim = list(grid.get("similarity", []))
    lo, hi = float(min(means.min(), recs.min())), float(max(means.max(), recs.max()))
    gray = "gray" if means.ndim == 3 else None
    if means.ndim == 4:  # colour: shown as it is, scaled to [0, 1] together
        means, recs, lo, hi = (means - lo) / ((hi - lo) or 1.0), (recs - lo) / ((hi - lo) or 1.0), 0.0, 1.0
    with matplotlib.rc_context({**_rc(), "axes.grid": False}):
        fig = _figure(1.1 * n + 1.0, 2.9)
        axes = fig.subplots(2, n, squeeze=False)
        for j in range(n):
            axes[0, j].imshow(means[j], cmap=gray, vmin=lo, vmax=hi, interpolation="nearest")
            axes[1, j].imshow(recs[j], cmap=gray, vmin=lo, vmax=hi, interpolation="nearest")
            if j < len(labels):
                axes[0, j].set_title(f"class {labels[j]}", fontsize=8)
            if j < len(sim) and isinstance(sim[j], int | float):
                own = j >= len(nearest) or j >= len(labels) or nearest[j] == labels[j]
                text = f"cos {float(sim[j]):.2f}" + ("" if own else f"\n≈ {nearest[j]}")
                axes[1, j].set_xlabel(text, fontsize=8, color="#15803d" if own else "#b91c1c")
            for i in range(2):
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
                for spine in axes[i, j].spines.values():
                    spine.set_visible(False)
        axes[0, 0].set_ylabel("class mean", fontsize=8)
        axes[1, 0].set_ylabel("reconstructed", fontsize=8)
        return figure_to_data_uri(fig, "png", dpi=120)


def histogram(spec: Mapping[str, Any]) -> str:
    """A histogram of one list of values (e.g. minimal adversarial perturbations)."""
    import matplotlib

    values = _floats(spec.get("values"), "values")
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite values")
    with matplotlib.rc_context(_rc()):
        fig = _figure(4.6, 2.8)
        ax = fig.subplots()
        bins = int(min(40, max(5, np.sqrt(values.size) * 2)))
        ax.hist(values, bins=bins, color=_COLORS[0], alpha=0.85, edgecolor="white")
        ax.axvline(float(np.median(values)), color=_COLORS[1], ls="--", lw=1.2,
                   label=f"median {np.median(values):.4g}")
        ax.set_xlabel(str(spec.get("xlabel", "")))
        ax.set_ylabel("count")
        ax.legend(frameon=False, fontsize=8)
        return figure_to_data_uri(fig, "svg")


def stages_chart(stages: Sequence[Mapping[str, Any]]) -> str:
    """Robust accuracy left after each stage of an ensemble attack (bars, with values)."""
    import matplotlib

    if not stages:
        raise ValueError("no stages")
    names = [str(s.get("stage", "?")) for s in stages]
    acc = _floats([s.get("robust_accuracy") for s in stages], "robust_accuracy")
    with matplotlib.rc_context(_rc()):
        fig = _figure(max(4.0, 0.9 * len(names) + 1.5), 2.9)
        ax = fig.subplots()
        xs = np.arange(len(names))
        ax.bar(xs, acc, color=_COLORS[0], width=0.6)
        for x, a in zip(xs, acc, strict=True):
            ax.annotate(f"{a:.1%}", (x, a), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
        ax.set_xticks(xs, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("robust accuracy after stage")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        return figure_to_data_uri(fig, "svg")


def grouped_bars(groups: Sequence[str], series: Sequence[tuple[str, Any]], *, ylabel: str,
                 marked: Sequence[bool] = ()) -> str:
    """Bars of several ``series`` ``(label, values)`` per group (ratios, with values); groups in
    ``marked`` get their name drawn in red (e.g. a variant markedly less robust than its model)."""
    import matplotlib

    if not groups or not series:
        raise ValueError("nothing to draw")
    vals = [(label, _floats(v, label)) for label, v in series]
    if any(v.size != len(groups) for _, v in vals):
        raise ValueError("every series needs one value per group")
    with matplotlib.rc_context(_rc()):
        fig = _figure(max(4.2, 1.1 * len(groups) + 1.5), 3.0)
        ax = fig.subplots()
        xs = np.arange(len(groups))
        width = 0.8 / len(vals)
        for i, (label, v) in enumerate(vals):
            pos = xs - 0.4 + width * (i + 0.5)
            ax.bar(pos, v, width=width, color=_COLORS[i % len(_COLORS)], label=label)
            for x, a in zip(pos, v, strict=True):
                ax.annotate(f"{a:.0%}", (x, a), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_xticks(xs, list(groups), rotation=20 if len(groups) > 4 else 0,
                      ha="right" if len(groups) > 4 else "center")
        for tick, bad in zip(ax.get_xticklabels(), marked):
            if bad:
                tick.set_color(_COLORS[1])
        ax.set_ylim(0, 1.15)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(frameon=False, fontsize=8, ncols=len(vals), loc="upper right")
        return figure_to_data_uri(fig, "svg")


def query_curves(curves: Sequence[Mapping[str, Any]]) -> str:
    """Attack success rate against the number of queries spent, one line per attack."""
    import matplotlib

    if not curves:
        raise ValueError("no query curves")
    with matplotlib.rc_context(_rc()):
        fig = _figure(5.2, 3.1)
        ax = fig.subplots()
        top, low = 0.0, float("inf")
        for i, c in enumerate(curves):
            q = _floats(c.get("queries"), "queries")
            s = _floats(c.get("success_rate"), "success_rate")
            if q.shape != s.shape:
                raise ValueError(f"query curve '{c.get('attack')}': queries and success_rate differ in length")
            order = np.argsort(q)
            ax.plot(q[order], s[order], lw=2, marker="o", ms=3, color=_COLORS[i % len(_COLORS)],
                    label=str(c.get("attack", "?")))
            top = max(top, float(q.max()))
            if (q > 0).any():
                low = min(low, float(q[q > 0].min()))
        if np.isfinite(low) and top / low >= 100:
            ax.set_xscale("log")
            # plain labels (1, 10, 100): the default log labels are mathtext, which is off here
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("queries to the model")
        ax.set_ylabel("attack success rate")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(frameon=False, fontsize=8)
        return figure_to_data_uri(fig, "svg")


def line_chart(series: Sequence[tuple[str, Any, Any]], *, xlabel: str, ylabel: str, percent: bool = True,
               diagonal: bool = False, threshold: float | None = None, log_x: bool = False) -> str:
    """Lines ``(label, xs, ys)`` on one axis: ROC curves (with the chance diagonal), fidelity
    curves, drift series (with the alert threshold dashed)."""
    import matplotlib

    if not series:
        raise ValueError("nothing to draw")
    with matplotlib.rc_context(_rc()):
        fig = _figure(5.0, 3.1)
        ax = fig.subplots()
        for i, (label, xs, ys) in enumerate(series):
            x, y = _floats(xs, "x values"), _floats(ys, "y values")
            if x.shape != y.shape:
                raise ValueError(f"'{label}': x and y values differ in length")
            ax.plot(x, y, lw=2, marker="o" if x.size <= 30 else None, ms=3, color=_COLORS[i % len(_COLORS)],
                    label=label)
        if diagonal:
            ax.plot([0, 1], [0, 1], ls="--", lw=1, color="#6b7280", label="chance")
        if threshold is not None:
            ax.axhline(threshold, ls="--", lw=1, color=_COLORS[1], label="alert threshold")
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if percent:
            ax.set_ylim(-0.02, 1.05)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, fontsize=8)
        return figure_to_data_uri(fig, "svg")


def roc_loglog(series: Sequence[tuple[str, Any, Any]]) -> str:
    """ROC curves ``(label, fpr, tpr)`` on log-log axes, where the low false-positive rates that
    matter for membership inference are visible (Carlini et al. 2022); the chance line dashed.
    Zero rates cannot be drawn on log axes: the axes start at the smallest non-zero FPR."""
    import matplotlib

    if not series:
        raise ValueError("nothing to draw")
    curves = []
    for label, xs, ys in series:
        x, y = _floats(xs, "fpr"), _floats(ys, "tpr")
        if x.shape != y.shape:
            raise ValueError(f"'{label}': fpr and tpr differ in length")
        curves.append((label, x, y))
    positive = [v for _, x, _ in curves for v in x if v > 0]
    lo = min(positive) if positive else 1e-3
    with matplotlib.rc_context(_rc()):
        fig = _figure(5.0, 3.4)
        ax = fig.subplots()
        for i, (label, x, y) in enumerate(curves):
            keep = x > 0
            ax.step(x[keep], np.maximum(y[keep], lo), where="post", lw=2, color=_COLORS[i % len(_COLORS)], label=label)
        ax.plot([lo, 1], [lo, 1], ls="--", lw=1, color="#6b7280", label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1.05)
        fmt = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:.1%}" if v < 0.01 else f"{v:.0%}")
        ax.xaxis.set_major_formatter(fmt)
        ax.yaxis.set_major_formatter(fmt)
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate (log)")
        ax.legend(frameon=False, fontsize=8)
        return figure_to_data_uri(fig, "svg")
