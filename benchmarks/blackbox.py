"""Black-box attacks, bastion vs ART, side by side in one run on the same models and inputs.

Square at a 1,000-query budget (success rate), HopSkipJump at about 1,000 queries (median
perturbation), on the demo digits CNN and on the breast-cancer demo (tabular). Both tools query the
same Python function, which counts every input it answers, so queries are measured the same way.
The tools run alternately, ``--repeats`` times; times are medians. Run it in the benchmark venv:

    benchmarks/.env/bin/python benchmarks/blackbox.py --repeats 3 --out benchmarks/results/blackbox.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.attacks import HopSkipJump, Square
from bastion.core.demo import breast_cancer, demo_data, digits_cnn
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget


class Counted:
    """A prediction function that counts the inputs it answers."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn, self.n = fn, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.n += len(x)
        return self.fn(np.asarray(x, np.float32))


def digits_setup(n: int) -> dict[str, Any]:
    t = digits_cnn()
    ds = demo_data("digits")

    def fn(z: np.ndarray) -> np.ndarray:  # the raw module, as ART's PyTorchClassifier would call it
        with torch.no_grad():
            return torch.softmax(t.module(torch.from_numpy(z.reshape(-1, 1, 8, 8))), 1).double().numpy()

    x, y = ds.x[:n], ds.y[:n]
    ok = fn(x).argmax(1) == y
    return {"name": "digits CNN", "fn": fn, "x": x[ok], "y": y[ok], "spec": t.input_spec, "shape": (1, 8, 8),
            "clip": (0.0, 1.0), "art_shape": (1, 8, 8)}


def cancer_setup(n: int) -> dict[str, Any]:
    """The breast-cancer MLP seen in standardised units (z = x / std), so ε means the same to
    both tools; the 30 features are laid out as a 5×6 'image' for ART's Square (images only)."""
    t = breast_cancer()
    ds = demo_data("breast-cancer")
    scale = t.input_spec.scale_array().astype(np.float64)
    hi = float((t.input_spec.bounds_arrays()[1] / scale).max())

    def fn(z: np.ndarray) -> np.ndarray:  # NaN rows (ART's L2 Square can send them) answer NaN
        flat = z.reshape(len(z), -1).astype(np.float64)
        out = np.full((len(z), 2), np.nan)
        good = np.isfinite(flat).all(1)
        if good.any():
            out[good] = t.estimator.predict_proba((flat[good] * scale.reshape(1, -1)).astype(np.float32))
        return out

    x = (ds.x[:n] / scale).astype(np.float32)
    y = ds.y[:n]
    ok = fn(x).argmax(1) == y
    spec = InputSpec(shape=(30,), lower=0.0, upper=hi, kind="vector")  # bastion: a plain feature vector
    return {"name": "breast-cancer MLP (z-units)", "fn": fn, "x": x[ok].reshape(-1, 1, 5, 6), "y": y[ok],
            "spec": spec, "shape": (30,), "clip": (0.0, hi), "art_shape": (1, 5, 6)}


def fooled(fn: Callable[[np.ndarray], np.ndarray], xa: np.ndarray, y: np.ndarray) -> np.ndarray:
    finite = np.isfinite(xa.reshape(len(xa), -1)).all(1)
    return finite & (fn(np.nan_to_num(xa)).argmax(1) != y)


def sizes(x: np.ndarray, xa: np.ndarray, norm: str) -> np.ndarray:
    d = (xa.astype(np.float64) - x).reshape(len(x), -1)
    return np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)


def run_bastion(setup: dict[str, Any], attack: Any) -> dict[str, Any]:
    c = Counted(setup["fn"])
    target = CallableTarget(c, list(range(10 if "digits" in setup["name"] else 2)), setup["spec"])
    x = setup["x"].reshape(len(setup["x"]), *setup["shape"])
    t0 = time.perf_counter()
    res = attack.run(target, x, setup["y"])
    secs = time.perf_counter() - t0
    return {"x_adv": res.x_adv.reshape(setup["x"].shape), "seconds": secs, "queries": c.n}


def run_art(setup: dict[str, Any], make: Callable[[Any], Any], y_onehot: bool) -> dict[str, Any]:
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    c = Counted(setup["fn"])
    n_classes = 10 if "digits" in setup["name"] else 2
    clf = BlackBoxClassifierNeuralNetwork(c, input_shape=setup["art_shape"], nb_classes=n_classes,
                                          channels_first=True, clip_values=setup["clip"])
    np.random.seed(0)
    attack = make(clf)
    y = np.eye(n_classes)[setup["y"]] if y_onehot else None
    t0 = time.perf_counter()
    xa = attack.generate(setup["x"], y=y)
    return {"x_adv": xa, "seconds": time.perf_counter() - t0, "queries": c.n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=200, help="digits inputs for Square")
    ap.add_argument("--n-hsj", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/blackbox.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import art
    from art.attacks.evasion import HopSkipJump as ArtHSJ
    from art.attacks.evasion import SquareAttack

    import bastion

    digits, cancer = digits_setup(args.n), cancer_setup(10_000)
    digits_h = {**digits, "x": digits["x"][:args.n_hsj], "y": digits["y"][:args.n_hsj]}
    cancer_h = {**cancer, "x": cancer["x"][:args.n_hsj], "y": cancer["y"][:args.n_hsj]}
    art_norm = {"linf": np.inf, "l2": 2}
    cases: list[tuple[str, dict[str, Any], str, float, Any, Any]] = []
    # ART's Square raises on the 5x6 layout when p_init makes a square as tall as the image: both
    # tools use p_init=0.5 on the table (the largest that ART accepts there), 0.8 on the digits
    for setup, runs, p0 in ((digits, [("linf", 0.1), ("l2", 1.0)], 0.8), (cancer, [("linf", 0.5)], 0.5)):
        for norm, eps in runs:
            cases.append((f"square {norm} eps={eps} p_init={p0}", setup, norm, eps,
                          lambda s, norm=norm, eps=eps, p0=p0: run_bastion(
                              s, Square(eps=eps, norm=norm, max_queries=1000, p_init=p0)),
                          lambda s, norm=norm, eps=eps, p0=p0: run_art(s, lambda clf: SquareAttack(
                              clf, norm=art_norm[norm], eps=eps, max_iter=1000, nb_restarts=1, p_init=p0,
                              batch_size=256, verbose=False), True)))
    for setup in (digits_h, cancer_h):
        for it in (5, 6):
            cases.append((f"hopskipjump l2 (ART max_iter={it})", setup, "l2", None,
                          lambda s: run_bastion(s, HopSkipJump(norm="l2", max_queries=1000)),
                          lambda s, it=it: run_art(s, lambda clf: ArtHSJ(clf, norm=2, max_iter=it, max_eval=10000,
                                                                         init_eval=100, init_size=100,
                                                                         verbose=False), False)))
    rows = []
    for label, setup, norm, eps, ours, theirs in cases:
        times: dict[str, list[float]] = {"bastion": [], "art": []}
        out: dict[str, dict[str, Any]] = {}
        for r in range(args.repeats):
            for tool, fn in (("bastion", ours), ("art", theirs)) if r % 2 == 0 else (("art", theirs), ("bastion", ours)):
                res = fn(setup)
                times[tool].append(res["seconds"])
                out[tool] = res
        row: dict[str, Any] = {"model": setup["name"], "case": label, "n": int(len(setup["x"]))}
        for tool, res in out.items():
            f = fooled(setup["fn"], res["x_adv"], setup["y"])
            sz = sizes(setup["x"], res["x_adv"], norm)
            row[tool] = {"success_rate": float(f.mean()), "queries_per_sample": res["queries"] / len(setup["x"]),
                         "median_norm": float(np.median(sz[f])) if f.any() else None,
                         "max_norm": float(sz.max()), "seconds_median": float(np.median(times[tool])),
                         "seconds_all": [round(s, 2) for s in times[tool]]}
        both = np.ones(len(setup["x"]), bool)
        for res in out.values():
            both &= fooled(setup["fn"], res["x_adv"], setup["y"])
        for tool, res in out.items():  # medians over the inputs both tools fooled
            sz = sizes(setup["x"], res["x_adv"], norm)
            row[tool]["median_norm_common"] = float(np.median(sz[both])) if both.any() else None
        row["n_common"] = int(both.sum())
        rows.append(row)
        print(json.dumps(row))
    meta = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPU cores "
                       "(shared with other jobs)",
            "python": platform.python_version(), "torch": torch.__version__, "art": art.__version__,
            "bastion": getattr(bastion, "__version__", "dev"), "repeats": args.repeats, "torch_threads": 1}
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
