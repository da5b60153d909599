"""The ``defense-eval`` table for every input-transformation defense on the digits demo CNN, and the
``detector-eval`` figures of both detectors of adversarial inputs.

For each defense (its default parameters, plus a coarse 2-bit depth), the ``defense-eval`` check
runs the same PGD-L∞ (``--steps`` steps, one random start, seed 0) on the 360 test digits at each
ε: on the undefended model, on the defended model non-adaptively (its own gradients) and through
its declared BPDA/EOT path. The issue's targets: for every deterministic defense the adaptive
robust accuracy comes within 5 points of the undefended one (read: at most 5 points above it; a
defense that costs clean accuracy falls below), and the obfuscation finding (BASTION-EV-110) is
raised. Then the ``detector-eval`` check measures feature squeezing (2-bit depth) and the
Mahalanobis detector: false alarms, detection rate of FGSM and PGD inputs, and the evasion rate of
the adaptive attack on classifier and detector together. Last, a gradient-free check of the 2-bit
depth row (``--only-coarse`` runs it alone).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/defense_eval.py --out benchmarks/results/defense-eval.json

CPU seconds are process time with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFENSES: list[tuple[str, dict[str, Any]]] = [
    ("bit-depth", {}),
    ("bit-depth", {"bits": 2}),
    ("median-smoothing", {}),
    ("spatial-smoothing", {}),
    ("jpeg", {}),
    ("rescale", {}),
    ("transform-chain", {"steps": [{"kind": "rescale", "scale": 0.75}, {"kind": "jpeg", "quality": 75},
                                   {"kind": "bit-depth", "bits": 4}]}),
    ("inference-noise", {}),
]
DETECTORS: list[tuple[str, dict[str, Any]]] = [
    ("feature-squeezing", {"squeezers": [{"kind": "bit-depth", "bits": 2}]}),
    ("mahalanobis", {}),
]


def defense_rows(eps: list[float], steps: int) -> list[dict[str, Any]]:
    from bastion.campaign.checks.base import CheckContext
    from bastion.campaign.checks.defense_eval import DefenseEvalCheck, DefenseEvalParams
    from bastion.campaign.rules import OBFUSCATION_RULE
    from bastion.core.defense import DEFENSES as REGISTRY
    from bastion.core.demo import demo_data, digits_cnn

    target, data = digits_cnn(), demo_data("digits")
    rows = []
    for name, params in DEFENSES:
        defense = REGISTRY[name](**params)
        defended = defense.wrap(target, seed=0)
        check = DefenseEvalCheck(name, DefenseEvalParams(eps=eps, params={"steps": steps}))
        t0 = time.process_time()
        res = check.run(CheckContext(target=defended, data=data, y=data.y, seed=0))
        cpu = time.process_time() - t0
        for row in res.metrics["table"]:
            clean = res.metrics["clean_accuracy"]
            rows.append({"defense": name, "params": defense.params.model_dump(), "randomised": defense.randomized,
                         "adaptive_path": res.metrics["adaptive_path"], "clean_undefended": clean["undefended"],
                         "clean_defended": clean["adaptive"], **row,
                         "obfuscation_finding": any(f.rule_id == OBFUSCATION_RULE for f in res.findings),
                         "cpu_s": cpu})
        print(f"{name} {params}: {res.metrics['table']} ({cpu:.1f} CPU s)", flush=True)
    return rows


def detector_rows(eps: list[float], steps: int) -> list[dict[str, Any]]:
    from bastion.campaign.checks.base import CheckContext
    from bastion.campaign.checks.detector_eval import DetectorEvalCheck, DetectorEvalParams
    from bastion.core.demo import demo_data, digits_cnn

    target, data = digits_cnn(), demo_data("digits")
    rows = []
    for name, params in DETECTORS:
        check = DetectorEvalCheck(name, DetectorEvalParams(detector=name, detector_params=params, eps=eps,
                                                           attack_params={"pgd": {"steps": steps}}))
        t0 = time.process_time()
        res = check.run(CheckContext(target=target, data=data, y=data.y, seed=0))
        cpu = time.process_time() - t0
        m = res.metrics
        for row in m["table"]:
            rows.append({"detector": name, "params": m["detector_params"], "false_alarm_rate": m["false_alarm_rate"],
                         "clean_inputs": m["clean_inputs"], **row, "bypassed": res.findings[0].severity != "info",
                         "cpu_s": cpu})
        print(f"{name}: FAR {m['false_alarm_rate']:.3f}, {m['table']} ({cpu:.1f} CPU s)", flush=True)
    return rows


def coarse_check(steps: int) -> dict[str, float]:
    """2-bit depth at ε = 0.1 without BPDA's help: Square (2,000 queries, black box) and PGD through
    BPDA with 5 restarts on the defended model, alone and together (robust accuracy)."""
    from bastion.attacks.base import get_attack
    from bastion.core.defense import DEFENSES as REGISTRY
    from bastion.core.demo import demo_data, digits_cnn
    from bastion.core.run import RunContext

    target, data = digits_cnn(), demo_data("digits")
    defended = REGISTRY["bit-depth"](bits=2).wrap(target, seed=0)
    sq = get_attack("square", eps=0.1, max_queries=2000).run(defended, data.x, data.y, ctx=RunContext(seed=0))
    pgd = get_attack("pgd", eps=0.1, steps=steps, restarts=5).run(defended, data.x, data.y, ctx=RunContext(seed=1))
    both = (sq.clean_pred == sq.y) & ~sq.success & ~pgd.success
    out = {"square_2000": sq.robust_accuracy, "pgd_bpda_5_restarts": pgd.robust_accuracy,
           "either": float(both.mean())}
    print(f"2-bit depth, eps 0.1: {out}", flush=True)
    return out


def markdown(defenses: list[dict[str, Any]], detectors: list[dict[str, Any]]) -> str:
    out = ["| defense (parameters) | adaptive path | ε | clean (undef. / defended) | undefended | non-adaptive | "
           "adaptive | adaptive − undefended | EV-110 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in defenses:
        path = r["adaptive_path"]
        how = f"EOT {path['eot_samples']}" if path["eot_samples"] > 1 else f"BPDA {path['bpda']}"
        params = "rescale 0.75, jpeg 75, 4 bits" if r["defense"] == "transform-chain" else \
            ", ".join(f"{k}={v}" for k, v in r["params"].items())
        out.append(f"| {r['defense']} ({params}) | {how} | {r['eps']:g} | {r['clean_undefended']:.3f} / "
                   f"{r['clean_defended']:.3f} | {r['undefended']:.3f} | {r['non-adaptive']:.3f} | {r['adaptive']:.3f} | "
                   f"{r['adaptive'] - r['undefended']:+.3f} | {'raised' if r['obfuscation_finding'] else '—'} |")
    out += ["", "| detector | ε | false alarms | attack | attack success | detected | evasion (misclassified, not "
            "flagged) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in detectors:
        det = "—" if r["detection_rate"] is None else f"{r['detection_rate']:.3f}"
        out.append(f"| {r['detector']} | {r['eps']:g} | {r['false_alarm_rate']:.3f} | {r['attack']} | "
                   f"{r['attack_success_rate']:.3f} | {det} | {r['evasion_rate']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--steps", type=int, default=100, help="PGD steps (every setting, and the detectors' PGD)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the raw figures")
    ap.add_argument("--only-coarse", action="store_true", help="only the gradient-free check of 2-bit depth")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.process_time()
    if args.only_coarse:
        coarse_check(args.steps)
        return
    defenses = defense_rows(args.eps, args.steps)
    detectors = detector_rows(args.eps, args.steps)
    coarse = coarse_check(args.steps)
    print(markdown(defenses, detectors))
    if args.out is not None:
        env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
               "machine": platform.machine(), "cpu_s_total": time.process_time() - t0}
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "env": env,
                                        "defenses": defenses, "detectors": detectors,
                                        "coarse_bit_depth_check": coarse}, indent=1, default=str))


if __name__ == "__main__":
    main()
