"""Metrics of robustness, computed from plain arrays so every capability can use them."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Unit of each number :func:`attack_metrics` returns (``norms`` excepted: see :data:`NORM_UNITS`),
#: as :class:`bastion.core.results.Measurement` records it.
METRIC_UNITS: dict[str, str] = {
    "n": "count", "clean_accuracy": "ratio", "robust_accuracy": "ratio", "success_rate": "ratio",
    "n_attacked": "count", "n_fooled": "count", "adv_confidence_mean": "ratio", "queries": "queries",
    "queries_per_sample": "queries", "seconds": "seconds",
    # a randomised target: accuracies are expectations over ``draws`` fresh draws, with a 95% interval
    "draws": "count", "robust_accuracy_ci_low": "ratio", "robust_accuracy_ci_high": "ratio",
}
#: Unit of the statistics of each perturbation norm (L0 counts features; L2 and L∞ are in ε units).
NORM_UNITS: dict[str, str] = {"l0": "count", "l2": "eps", "linf": "eps"}


def perturbation_norms(x: np.ndarray, x_adv: np.ndarray, scale: np.ndarray | None = None,
                       tol: float = 1e-6) -> dict[str, np.ndarray]:
    """Per-sample L0, L2 and L∞ norms of ``x_adv - x`` in units of ``scale`` (ε units)."""
    delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64))
    if scale is not None:
        delta = delta / np.asarray(scale, np.float64)
    flat = delta.reshape(len(delta), -1)
    return {"l0": (np.abs(flat) > tol).sum(axis=1).astype(np.float64),
            "l2": np.linalg.norm(flat, axis=1),
            "linf": np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(len(flat))}


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else float("nan")


def _stats(v: np.ndarray) -> dict[str, float | None]:
    if len(v) == 0:
        return {"median": None, "mean": None, "max": None}
    return {"median": float(np.median(v)), "mean": float(np.mean(v)), "max": float(np.max(v))}


def attack_metrics(*, y: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray, success: np.ndarray,
                   norms: dict[str, np.ndarray], adv_confidence: np.ndarray, queries: int,
                   seconds: float) -> dict[str, Any]:
    """Clean and robust accuracy, success rate on inputs the model got right, norms of the
    successful perturbations, confidence on adversarial inputs, queries and time."""
    correct = clean_pred == y
    fooled = success & correct
    n_correct = int(correct.sum())
    return {
        "n": int(len(y)),
        "clean_accuracy": accuracy(clean_pred, y),
        "robust_accuracy": accuracy(adv_pred, y),
        "success_rate": float(fooled.sum() / n_correct) if n_correct else None,
        "n_attacked": n_correct,
        "n_fooled": int(fooled.sum()),
        "norms": {k: _stats(v[fooled]) for k, v in norms.items()},
        "adv_confidence_mean": float(np.mean(adv_confidence[fooled])) if fooled.any() else None,
        "queries": int(queries),
        "queries_per_sample": float(queries / max(len(y), 1)),
        "seconds": float(seconds),
    }
