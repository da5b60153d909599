"""Certification: randomized smoothing throughput against ART's ``PyTorchRandomizedSmoothing``, and
interval bound propagation's verified accuracy on the digits CNN.

1. **Smoothing** (Cohen et al. 2019, CERTIFY): bastion's ``smoothing`` certifier and ART 1.20.1's
   ``PyTorchRandomizedSmoothing.certify`` on the same base model (the digits CNN trained on Gaussian
   noise at σ by bastion's ``gaussian-noise`` training defense, or the shipped demo CNN with
   ``--base demo``), the same test images, σ, n0, n and α, one torch thread. The inputs run in
   chunks; in each chunk the tools take turns (bastion, ART at the same batch size, ART at its
   default batch size 32, and the bare forward passes: the same 10,100 noisy copies through the
   module with nothing else, the floor any implementation pays), in an order that alternates from
   chunk to chunk; bastion runs twice, with its defaults (``jit: auto``: the module traced and
   optimised for inference, trace time and probe check included) and with ``jit: false`` (the module
   run as it is), on the same noise draws. CPU seconds (process time) and wall
   seconds per tool; throughput = inputs certified per CPU second. Decisions: the two tools draw
   different noise (bastion from its seeded torch generators, ART from NumPy's global generator,
   seeded per chunk), so the abstention decisions are compared input by input and each
   disagreement is listed with both tools' lower bound p_A (recorded from inside each tool's
   Clopper-Pearson call) and its distance to 1/2.
2. **IBP** (Gowal et al. 2018): verified robust accuracy of the shipped demo CNN, the noise-trained
   one and one trained by the ``ibp`` training defense at ε = 0.05, at several L∞ ε on all 360 test
   images, with PGD's robust accuracy at the same ε (40 steps, 5 restarts) as the empirical upper
   bound; an input IBP verifies and PGD breaks would be a soundness bug (counted, must be 0).

Run in a venv with ART (never a bastion dependency; ART's Clopper-Pearson bound needs statsmodels)::

    python -m venv --system-site-packages .benchenv
    .benchenv/bin/pip install --no-deps -e .
    .benchenv/bin/pip install adversarial-robustness-toolbox==1.20.1 statsmodels
    OMP_NUM_THREADS=1 nice -n 15 .benchenv/bin/python benchmarks/certify.py --out benchmarks/results/certify.json

``--only-ibp`` reruns the IBP part and keeps the smoothing figures already in ``--out``; ``--skip-ibp``
reruns the smoothing part and keeps the IBP figures already there.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

EPS_IBP = [0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05]
EPS_IBP_TRAIN = 0.05


def ibp_trained(eps: float) -> Any:
    """The demo CNN trained by bastion's ``ibp`` training defense for ε (same recipe otherwise: 30
    epochs, 2 clean, ε ramped over 15)."""
    from bastion.certify.ibp_training import IBPTraining
    from bastion.core.demo import DIGITS_RECIPE, digits_cnn_module, demo_data
    from bastion.core.loader import load_target
    from bastion.core.targets.torch_target import TorchTarget
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam

    r, spec = DIGITS_RECIPE, load_target("demo:digits-cnn").input_spec
    train = demo_data("digits-train")
    t0 = time.process_time()
    procedure = IBPTraining(eps=eps, warmup_epochs=2, ramp_epochs=15).apply(TorchTrainingProcedure(
        model=digits_cnn_module, optimizer=adam(r["lr"]), epochs=r["epochs"], batch_size=r["batch"]))
    module = procedure.fit(TrainRequest(train.x, train.y, seed=r["seed"], input_spec=spec))
    print(f"trained the IBP ε={eps} CNN in {time.process_time() - t0:.1f} CPU s", flush=True)
    return TorchTarget(module, spec, name=f"digits-cnn-ibp-{eps}")


def base_models(sigma: float) -> dict[str, Any]:
    """The shipped demo CNN and the demo CNN trained on noisy copies at σ (same recipe otherwise)."""
    from bastion.certify.noise_training import GaussianNoiseTraining
    from bastion.core.demo import DIGITS_RECIPE, digits_cnn_module, demo_data
    from bastion.core.loader import load_target
    from bastion.core.targets.torch_target import TorchTarget
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam

    r = DIGITS_RECIPE
    train = demo_data("digits-train")
    t0 = time.process_time()
    procedure = GaussianNoiseTraining(sigma=sigma).apply(TorchTrainingProcedure(
        model=digits_cnn_module, optimizer=adam(r["lr"]), epochs=r["epochs"], batch_size=r["batch"]))
    module = procedure.fit(TrainRequest(train.x, train.y, seed=r["seed"]))
    print(f"trained the noise-σ={sigma} CNN in {time.process_time() - t0:.1f} CPU s", flush=True)
    demo = load_target("demo:digits-cnn")
    return {"demo": demo, "noise": TorchTarget(module, demo.input_spec, name=f"digits-cnn-noise-{sigma}")}


class Recorder:
    """Wraps a lower-bound function and keeps what it returned, in call order."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.values = fn, []

    def __call__(self, *args: Any) -> Any:
        out = self.fn(*args)
        self.values.extend(np.atleast_1d(np.asarray(out, np.float64)).tolist())
        return out


def bare_forward(module: torch.nn.Module, x: np.ndarray, n0: int, n: int, sigma: float, batch: int,
                 gen: torch.Generator) -> None:
    """The floor: ``n0 + n`` noisy copies of each input through the module, argmax and counts."""
    with torch.inference_mode():
        for xi in torch.from_numpy(x):
            for num in (n0, n):
                for start in range(0, num, batch):
                    b = min(batch, num - start)
                    noisy = torch.randn((b, *xi.shape), generator=gen).mul_(sigma).add_(xi)
                    torch.bincount(module(noisy).argmax(1), minlength=10)


def smoothing_benchmark(target: Any, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    import bastion.certify.smoothing as smoothing
    from bastion.core.run import RunContext

    cert = smoothing.RandomizedSmoothing(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                                         batch_size=args.batch)  # the defaults: jit auto
    cert_eager = smoothing.RandomizedSmoothing(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                                               batch_size=args.batch, jit=False)
    art = PyTorchRandomizedSmoothing(model=copy.deepcopy(target.module).eval(), loss=torch.nn.CrossEntropyLoss(),
                                     input_shape=tuple(x.shape[1:]), nb_classes=target.n_classes,
                                     clip_values=(0.0, 1.0), device_type="cpu", sample_size=args.n0,
                                     scale=args.sigma, alpha=args.alpha)
    b_bound = Recorder(smoothing.clopper_pearson_lower)
    smoothing.clopper_pearson_lower = b_bound  # _certify looks it up in the module: records p_A per input
    a_bound = Recorder(art._lower_confidence_bound)
    art._lower_confidence_bound = a_bound
    floor_gen = torch.Generator().manual_seed(args.seed)

    def run_bastion(xc: np.ndarray, yc: np.ndarray, k: int, eager: bool) -> Any:
        return (cert_eager if eager else cert).certify(target, xc, yc, RunContext(seed=args.seed).spawn(f"chunk{k}"))

    def run_art(xc: np.ndarray, batch: int, k: int) -> Any:
        np.random.seed(args.seed * 1000 + k)
        return art.certify(xc, n=args.n, batch_size=batch)

    tools = ["bastion", "bastion-eager", "art", "art-default-batch", "bare-forward"]
    cpu = {t: 0.0 for t in tools}
    wall = {t: 0.0 for t in tools}
    compared = ["bastion", "bastion-eager", "art", "art-default-batch"]
    out: dict[str, Any] = {t: ([], []) for t in compared}
    bounds: dict[str, list[float]] = {t: [] for t in compared}
    for k, start in enumerate(range(0, len(x), args.chunk)):
        xc, yc = x[start:start + args.chunk], y[start:start + args.chunk]
        order = tools if k % 2 == 0 else tools[::-1]
        for tool in order:
            a_bound.values, b_bound.values = [], []
            w0, c0 = time.perf_counter(), time.process_time()
            if tool.startswith("bastion"):
                res = run_bastion(xc, yc, k, tool == "bastion-eager")
                pred, radius = res.prediction, res.radius
            elif tool == "bare-forward":
                bare_forward(target.module, xc, args.n0, args.n, args.sigma, args.batch, floor_gen)
            else:
                pred, radius = run_art(xc, args.batch if tool == "art" else 32, k)
            cpu[tool] += time.process_time() - c0
            wall[tool] += time.perf_counter() - w0
            if tool != "bare-forward":
                out[tool][0].extend(np.asarray(pred).tolist())
                out[tool][1].extend(np.asarray(radius, np.float64).tolist())
                bounds[tool].extend((b_bound if tool.startswith("bastion") else a_bound).values)
        print(f"chunk {k}: {start + len(xc)} inputs; CPU s so far "
              + ", ".join(f"{t} {cpu[t]:.1f}" for t in tools), flush=True)
    n_in = len(x)
    result: dict[str, Any] = {
        "inputs": n_in, "sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha, "batch": args.batch,
        "cpu_s": cpu, "wall_s": wall,
        "inputs_per_cpu_s": {t: n_in / cpu[t] for t in tools},
        "speedup_cpu": {"vs_art_same_batch": cpu["art"] / cpu["bastion"],
                        "vs_art_default_batch": cpu["art-default-batch"] / cpu["bastion"],
                        "eager_vs_art_same_batch": cpu["art"] / cpu["bastion-eager"],
                        "eager_vs_art_default_batch": cpu["art-default-batch"] / cpu["bastion-eager"],
                        "bastion_eager_over_bare_forward": cpu["bastion-eager"] / cpu["bare-forward"],
                        "bastion_over_bare_forward": cpu["bastion"] / cpu["bare-forward"],
                        "art_over_bare_forward": cpu["art"] / cpu["bare-forward"],
                        "art_default_batch_over_bare_forward": cpu["art-default-batch"] / cpu["bare-forward"]},
        "speedup_wall": {"vs_art_same_batch": wall["art"] / wall["bastion"],
                         "vs_art_default_batch": wall["art-default-batch"] / wall["bastion"],
                         "eager_vs_art_same_batch": wall["art"] / wall["bastion-eager"],
                         "eager_vs_art_default_batch": wall["art-default-batch"] / wall["bastion-eager"]},
    }
    ep, er = np.array(out["bastion-eager"][0]), np.array(out["bastion-eager"][1])
    result["default_identical_to_eager"] = {"predictions": int((ep == np.array(out["bastion"][0])).sum()),
                                            "radii": int((er == np.array(out["bastion"][1])).sum())}
    bp, br = np.array(out["bastion"][0]), np.array(out["bastion"][1])
    for tool in ("art", "art-default-batch"):
        ap, ar = np.array(out[tool][0]), np.array(out[tool][1])
        pa_b, pa_a = np.array(bounds["bastion"]), np.array(bounds[tool])
        differ = np.flatnonzero((bp == -1) != (ap == -1))
        both = (bp != -1) & (ap != -1)
        result[f"decisions_{tool}"] = {
            "bastion_abstained": int((bp == -1).sum()), "art_abstained": int((ap == -1).sum()),
            "same_abstention_decision": int(n_in - len(differ)),
            "same_class_when_both_certify": int((bp[both] == ap[both]).sum()), "both_certify": int(both.sum()),
            "radius_mean": [float(br.mean()), float(ar.mean())],
            "radius_mean_abs_diff_when_both_certify": float(np.abs(br[both] - ar[both]).mean()) if both.any() else None,
            "certified_accuracy": {r: [float(np.mean((bp == y) & (br >= r))), float(np.mean((ap == y) & (ar >= r)))]
                                   for r in (0.0, 0.25, 0.5)},
            "disagreements": [{"input": int(i), "bastion": {"class": int(bp[i]), "pA_lower": float(pa_b[i])},
                               "art": {"class": int(ap[i]), "pA_lower": float(pa_a[i])},
                               "max_distance_to_half": float(max(abs(pa_b[i] - 0.5), abs(pa_a[i] - 0.5)))}
                              for i in differ],
            # how far from 1/2 the bounds of inputs on which they agree are (the disagreeing ones should be closest)
            "agreeing_min_distance_to_half": float(np.min(np.abs(np.delete(pa_b, differ) - 0.5)))
            if len(differ) < n_in else None,
        }
    return result


def ibp_benchmark(models: dict[str, Any], x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from bastion.attacks.evasion.pgd import PGD
    from bastion.certify.ibp import IntervalBoundPropagation
    from bastion.core.run import RunContext

    out: dict[str, Any] = {"eps": EPS_IBP, "inputs": len(x)}
    for name, target in models.items():
        c0 = time.process_time()
        res = IntervalBoundPropagation(eps=EPS_IBP).certify(target, x, y, RunContext(seed=seed))
        cpu = time.process_time() - c0
        rows = []
        for e in EPS_IBP:
            adv = PGD(eps=e, norm="linf", steps=40, restarts=5).run(target, x, y, ctx=RunContext(seed=seed))
            verified = (res.prediction == y) & (res.radius >= e)
            broken = adv.adv_pred != y
            rows.append({"eps": e, "verified_accuracy": float(verified.mean()),
                         "pgd_robust_accuracy": float(adv.robust_accuracy),
                         "verified_but_broken_by_pgd": int((verified & broken).sum())})
        out[name] = {"clean_accuracy": float(res.certified_accuracy(0.0)), "ibp_cpu_s": cpu, "rows": rows}
        print(f"IBP on {name}: " + ", ".join(f"ε={r['eps']}: {r['verified_accuracy']:.3f} verified, "
                                             f"{r['pgd_robust_accuracy']:.3f} PGD" for r in rows), flush=True)
    return out


def versions() -> dict[str, str]:
    import art
    import sklearn

    import bastion

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "adversarial-robustness-toolbox": art.__version__,
            "bastion": bastion.__version__, "machine": f"{platform.machine()}, {platform.processor() or '?'}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=100, help="first N test images (default 100)")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass (bastion's default)")
    ap.add_argument("--chunk", type=int, default=10, help="inputs per turn of each tool")
    ap.add_argument("--base", choices=["noise", "demo"], default="noise", help="base model of the smoothing part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-ibp", action="store_true")
    ap.add_argument("--only-ibp", action="store_true", help="run the IBP part only; keep the smoothing figures "
                                                          "of --out when it exists")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from bastion.core.data import align_labels
    from bastion.core.demo import demo_data

    test = demo_data("digits")
    models = base_models(args.sigma)
    y_all = align_labels(test, models["demo"])
    report: dict[str, Any] = {"versions": versions(), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.only_ibp:
        if args.out is not None and args.out.exists():
            report = {**json.loads(args.out.read_text(encoding="utf-8")), "ibp_versions": versions()}
        models["ibp-trained"] = ibp_trained(EPS_IBP_TRAIN)
        report["ibp"] = ibp_benchmark(models, test.x, y_all, args.seed)
        if args.out is not None:
            args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return
    sm = smoothing_benchmark(models[args.base], test.x[:args.inputs], y_all[:args.inputs], args)
    report["smoothing"] = {"base": args.base, **sm}
    print(json.dumps({k: sm[k] for k in ("inputs_per_cpu_s", "speedup_cpu", "speedup_wall")}, indent=1))
    for tool in ("art", "art-default-batch"):
        d = sm[f"decisions_{tool}"]
        print(f"decisions vs {tool}: same {d['same_abstention_decision']}/{sm['inputs']}, abstained "
              f"bastion {d['bastion_abstained']}, ART {d['art_abstained']}; disagreements: {d['disagreements']}")
    if not args.skip_ibp:
        models["ibp-trained"] = ibp_trained(EPS_IBP_TRAIN)
        report["ibp"] = ibp_benchmark(models, test.x, y_all, args.seed)
    elif args.out is not None and args.out.exists():  # keep the IBP figures already there
        old = json.loads(args.out.read_text(encoding="utf-8"))
        report.update({k: old[k] for k in ("ibp", "ibp_versions") if k in old})
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
