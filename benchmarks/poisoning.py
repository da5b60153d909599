"""Poisoning and backdoors on digits (issue 12): damage against the poisoned share, detectors'
precision and recall with the model retrained on what they leave, STRIP, online learning, a
clean-label attack, and ART 1.20.1's poison detectors at their defaults beside bastion's.

Data: scikit-learn's digits (1,797 images 8x8 in [0, 1]), one seeded split: 1,200 training
records, 597 test records. Victim: a torch MLP (64-128-10, Adam 0.01, 20 epochs, batch 64)
trained through bastion's TorchTrainingProcedure; every training of a simulation runs in worker
processes (2) and is cached by content hash under a fresh cache folder (nothing reused from
earlier runs).

- label-flip random, label-flip targeted (1 -> 7), badnets (3x3 patch, target 0), blended
  (alpha 0.2, target 0) at fractions 0, 1, 2, 5, 10, 20 %: clean accuracy, accuracy on class 1,
  attack success; detectors spectral-signatures, activation-clustering, knn, oof-loss (3 folds)
  with poison_rate = the fraction simulated: precision, recall, the retrained model's figures;
  STRIP (16 overlays, FRR 1 %) on each backdoored model;
- ART 1.20.1 ActivationDefence and SpectralSignatureDefense at their defaults (and SS with
  expected_pp_poison = the true rate) on the same BadNets-10 % model: records flagged, precision,
  recall, beside bastion's detectors on that model;
- online: SGDClassifier (log loss) updated in 12 rounds of 100 records, 10 % of each poisoned;
- feature collision (clean label): 5 target 3s, each with 50 poisons from 8s, the victim
  fine-tuning the last layer of the surrogate's pre-trained network.

Run in the benchmark virtualenv (ART installed there, never a bastion dependency):

    OMP_NUM_THREADS=1 nice -n 15 .benchenv/bin/python benchmarks/poisoning.py --out benchmarks/results/poisoning.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

FRACTIONS = [0.01, 0.02, 0.05, 0.1, 0.2]
N_TRAIN = 1200


def net() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def procedure() -> Any:
    from bastion.core.training import Adam, TorchTrainingProcedure

    return TorchTrainingProcedure(net, optimizer=Adam(0.01), epochs=20, batch_size=64, name="digits-mlp")


@dataclass(frozen=True)
class FineTuneLastLayer:
    """A TrainFn: the pre-trained network (weights as arrays), only its last layer trained further."""

    weights: tuple[tuple[str, Any], ...]

    def __call__(self, request: Any) -> Any:
        import torch

        from bastion.core.targets.torch_target import TorchTarget

        module = net()
        module.load_state_dict({k: torch.as_tensor(v) for k, v in self.weights})
        for p in module[1].parameters():
            p.requires_grad_(False)
        module = procedure().fit(request, module=module, epochs=10)
        return TorchTarget(module, request.spec, classes=request.class_list)


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:N_TRAIN], order[N_TRAIN:]
    return x[tr], y[tr], x[te], y[te]


def simulations(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, spec: Any,
                workers: int) -> dict[str, Any]:
    from bastion.attacks.poisoning import get_poisoning_attack
    from bastion.attacks.poisoning.detectors import get_poison_detector
    from bastion.attacks.poisoning.simulate import simulate
    from bastion.campaign.checks.poisoning import strip_probe
    from bastion.campaign.executors import LocalExecutor
    from bastion.core.data import Dataset
    from bastion.core.run import RunContext

    detectors = [get_poison_detector("spectral-signatures"), get_poison_detector("activation-clustering"),
                 get_poison_detector("knn"), get_poison_detector("oof-loss", folds=3)]
    attacks = {"label-flip random": get_poisoning_attack("label-flip"),
               "label-flip 1->7": get_poisoning_attack("label-flip", mode="targeted", source=1, target=7),
               "badnets": get_poisoning_attack("badnets", target_class=0, size=3),
               "blended": get_poisoning_attack("blended", target_class=0, alpha=0.2)}
    out = {}
    for name, attack in attacks.items():
        t0, c0 = time.perf_counter(), time.process_time()
        sim = simulate(attack, Dataset(x, y), Dataset(xt, yt), FRACTIONS, procedure(), detectors=detectors, spec=spec,
                       ctx=RunContext(seed=0, executor=LocalExecutor(workers)),
                       probe=strip_probe if attack.backdoor else None)
        out[name] = {"simulation": sim.model_dump(mode="json"), "wall_s": time.perf_counter() - t0,
                     "parent_cpu_s": time.process_time() - c0}
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def art_comparison(x: np.ndarray, y: np.ndarray, spec: Any) -> dict[str, Any]:
    """bastion's and ART's detectors on one BadNets-10 % model."""
    import torch

    from bastion.attacks.poisoning import get_poisoning_attack
    from bastion.attacks.poisoning.detectors import get_poison_detector
    from bastion.core.data import Dataset
    from bastion.core.threat import ThreatModel
    from bastion.core.training import TrainRequest

    res = get_poisoning_attack("badnets", target_class=0, size=3).poison(
        Dataset(x, y), ThreatModel(poisoning_fraction=0.1), spec=spec)
    model = procedure()(TrainRequest(res.x, res.y, seed=0, input_spec=spec, classes=list(range(10))))
    truth = np.zeros(len(res.x), bool)
    truth[res.poison_indices] = True

    def score(flagged: np.ndarray, seconds: float) -> dict[str, Any]:
        hits = int((flagged & truth).sum())
        return {"flagged": int(flagged.sum()), "precision": hits / max(int(flagged.sum()), 1),
                "recall": hits / int(truth.sum()), "seconds": seconds}

    rows = {}
    for name in ("spectral-signatures", "activation-clustering", "knn"):
        t0 = time.process_time()
        found = get_poison_detector(name, poison_rate=0.1).detect(res.x, res.y, model=model)
        flagged = np.zeros(len(truth), bool)
        flagged[found.flagged] = True
        rows[f"bastion {name} (poison_rate 0.1)"] = score(flagged, time.process_time() - t0)
    try:
        from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        rows["ART"] = {"error": "adversarial-robustness-toolbox is not installed in this environment"}
        return {"poisoned": int(truth.sum()), "n": len(truth), "rows": rows}
    module = model.module
    clf = PyTorchClassifier(module, torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    onehot = np.eye(10, dtype=np.float32)[res.y]
    for label, make, kwargs in [
            ("ART ActivationDefence (defaults)", lambda: ActivationDefence(clf, res.x, onehot), {}),
            ("ART SpectralSignatureDefense (defaults: expected_pp_poison 0.33)",
             lambda: SpectralSignatureDefense(clf, res.x, onehot), {}),
            ("ART SpectralSignatureDefense (expected_pp_poison 0.1)",
             lambda: SpectralSignatureDefense(clf, res.x, onehot, expected_pp_poison=0.1), {})]:
        t0 = time.process_time()
        _, is_clean = make().detect_poison(**kwargs)
        rows[label] = score(np.asarray(is_clean) == 0, time.process_time() - t0)
    return {"poisoned": int(truth.sum()), "n": len(truth), "rows": rows}


def online(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, spec: Any) -> dict[str, Any]:
    from sklearn.linear_model import SGDClassifier

    from bastion.attacks.poisoning import get_poisoning_attack
    from bastion.attacks.poisoning.online import simulate_online
    from bastion.core.data import Dataset

    out = {}
    for name, attack in {"badnets": get_poisoning_attack("badnets", target_class=0, size=3),
                         "label-flip 1->7": get_poisoning_attack("label-flip", mode="targeted", source=1,
                                                                 target=7)}.items():
        sim = simulate_online(attack, Dataset(x, y), Dataset(xt, yt), SGDClassifier(loss="log_loss", random_state=0),
                              fraction=0.1, batch_size=100, spec=spec)
        out[name] = sim.model_dump(mode="json")
    return out


def feature_collision(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, spec: Any) -> dict[str, Any]:
    import torch

    from bastion.attacks.poisoning.feature_collision import FeatureCollision, _features
    from bastion.attacks.poisoning.simulate import simulate
    from bastion.core.data import Dataset
    from bastion.core.threat import ThreatModel
    from bastion.core.training import TrainRequest

    surrogate = procedure()(TrainRequest(x, y, seed=0, input_spec=spec, classes=list(range(10))))
    victim = FineTuneLastLayer(tuple((k, v.numpy().copy()) for k, v in surrogate.module.state_dict().items()))
    right = np.flatnonzero((surrogate.predict_proba(xt).argmax(1) == yt) & (yt == 3))[:5]
    f = _features(surrogate)
    rows = []
    for i in right:
        attack = FeatureCollision(surrogate, xt[i:i + 1], base_class=8, max_poisons=50, steps=300, lr=0.05)
        sim = simulate(attack, Dataset(x, y), Dataset(xt, yt), [0.05], victim, spec=spec, cache=False)
        poisoned = attack.poison(Dataset(x, y), ThreatModel(poisoning_fraction=0.05), spec=spec)
        with torch.no_grad():
            p = torch.as_tensor(poisoned.x[poisoned.poison_indices])
            b = torch.as_tensor(x[poisoned.poison_indices])
            t = torch.as_tensor(xt[i:i + 1])
            collision = float((f(p) - f(t)).norm(dim=1).mean() / (f(b) - f(t)).norm(dim=1).mean())
        rows.append({"test_index": int(i), "attack_success": sim.outcomes[1].model.attack_success,
                     "clean_accuracy": sim.outcomes[1].model.clean_accuracy,
                     "feature_distance_ratio": collision,
                     "input_l2_to_base": float((p - b).flatten(1).norm(dim=1).mean())})
    return {"rows": rows, "successes": sum(r["attack_success"] == 1.0 for r in rows)}


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def render(result: dict[str, Any], figure: str | None) -> str:
    """The details page (markdown) of a result, and the curves as a PNG at ``figure``."""
    m = result["machine"]
    lines = [f"Machine: {m['platform']}, {m['cpus']} CPUs (shared), Python {m['python']}, torch {m['torch']}, "
             f"scikit-learn {m['sklearn']}, ART {m.get('art', '—')}, {m['workers']} worker processes.", ""]
    sims = result.get("simulations", {})
    for name, entry in sims.items():
        sim = entry["simulation"]
        lines += [f"### {name} ({entry['wall_s']:.0f} s wall)", "",
                  "| fraction | poisoned | clean accuracy | class-1 accuracy | attack success | STRIP detection / false alarms |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for o in sim["outcomes"]:
            mo = o["model"] or {}
            pr = o.get("probe") or {}
            strip = (f"{_pct(pr.get('strip_detection_rate'))} / {_pct(pr.get('strip_false_alarm_rate'))}"
                     if pr else "—")
            lines.append(f"| {o['fraction']:g} | {o['poisoned']} | {_pct(mo.get('clean_accuracy'))} | "
                         f"{_pct(mo.get('source_accuracy'))} | {_pct(mo.get('attack_success'))} | {strip} |"
                         + (f" error: {o['error']}" if o.get("error") else ""))
        lines += ["", "| fraction | detector | flagged | precision | recall | retrained: clean accuracy | "
                      "retrained: attack success |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for o in sim["outcomes"]:
            for d in o["detectors"]:
                r = d.get("retrained") or {}
                lines.append(f"| {o['fraction']:g} | {d['detector']} | {d['flagged']} | {_pct(d['precision'])} | "
                             f"{_pct(d['recall'])} | {_pct(r.get('clean_accuracy'))} | {_pct(r.get('attack_success'))} |")
        lines.append("")
    if "art" in result:
        a = result["art"]
        lines += [f"### Detectors on one BadNets model ({a['poisoned']} of {a['n']} training records poisoned)", "",
                  "| detector | flagged | precision | recall | CPU s |", "| --- | --- | --- | --- | --- |"]
        for label, r in a["rows"].items():
            lines.append(f"| {label} | {r.get('flagged', '—')} | {_pct(r.get('precision'))} | {_pct(r.get('recall'))} | "
                         f"{r.get('seconds', 0):.2f} |" if "error" not in r else f"| {label} | {r['error']} | | | |")
        lines.append("")
    if "online" in result:
        lines += ["### Online learning (SGDClassifier, rounds of 100 records, 10 % of each poisoned)", "",
                  "| attack | round | poisoned learner: accuracy | attack success | clean-stream learner: accuracy | "
                  "attack success |", "| --- | --- | --- | --- | --- | --- |"]
        for name, sim in result["online"].items():
            for r in sim["rounds"]:
                if r["round"] in (1, 3, 6, 9, 12):
                    lines.append(f"| {name} | {r['round']} | {_pct(r['attacked']['clean_accuracy'])} | "
                                 f"{_pct(r['attacked']['attack_success'])} | {_pct(r['clean']['clean_accuracy'])} | "
                                 f"{_pct(r['clean']['attack_success'])} |")
        lines.append("")
    if "feature_collision" in result:
        fc = result["feature_collision"]
        lines += ["### Feature collision (clean label): one target 3 read as an 8, 50 poisons, last layer fine-tuned", "",
                  "| test record | attack success | clean accuracy | feature distance after / before | "
                  "L2 poison to base |", "| --- | --- | --- | --- | --- |"]
        for r in fc["rows"]:
            lines.append(f"| {r['test_index']} | {_pct(r['attack_success'])} | {_pct(r['clean_accuracy'])} | "
                         f"{r['feature_distance_ratio']:.3f} | {r['input_l2_to_base']:.2f} |")
        lines.append("")
    if figure and sims:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(sims), figsize=(4 * len(sims), 3.2), sharey=True)
        for ax, (name, entry) in zip(np.atleast_1d(axes), sims.items(), strict=True):
            outs = entry["simulation"]["outcomes"]
            fr = [o["fraction"] for o in outs]
            for key, label, color in (("clean_accuracy", "clean accuracy", "C0"),
                                      ("source_accuracy", "class-1 accuracy", "C1"),
                                      ("attack_success", "attack success", "C3")):
                ys = [(o["model"] or {}).get(key) for o in outs]
                if any(v is not None for v in ys):
                    ax.plot(fr, [np.nan if v is None else v for v in ys], marker="o", label=label, color=color)
            ax.set_title(name)
            ax.set_xlabel("poisoned share of training records")
            ax.legend(fontsize=8)
        np.atleast_1d(axes)[0].set_ylabel("share of test records")
        fig.tight_layout()
        fig.savefig(figure, dpi=90)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/poisoning.json")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["simulations", "art", "online", "collision"], action="append")
    ap.add_argument("--render", metavar="JSON", help="print the details page of a result file (and --figure PNG)")
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            print(render(json.load(fh), args.figure))
        return
    warnings.filterwarnings("ignore")
    os.environ["BASTION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bastion-poison-bench-")
    import sklearn
    import torch

    import bastion
    from bastion.core.spec import InputSpec

    x, y, xt, yt = data()
    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    parts = args.only or ["simulations", "art", "online", "collision"]
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                                          "cpus": os.cpu_count(), "torch": torch.__version__,
                                          "sklearn": sklearn.__version__, "bastion": bastion.__version__,
                                          "workers": args.workers}}
    try:
        import art

        result["machine"]["art"] = art.__version__
    except ImportError:
        pass
    t0 = time.perf_counter()
    if "simulations" in parts:
        result["simulations"] = simulations(x, y, xt, yt, spec, args.workers)
    if "art" in parts:
        result["art"] = art_comparison(x, y, spec)
    if "online" in parts:
        result["online"] = online(x, y, xt, yt, spec)
    if "collision" in parts:
        result["feature_collision"] = feature_collision(x, y, xt, yt, spec)
    result["wall_s"] = time.perf_counter() - t0
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "simulations"}, indent=1)[:4000])


if __name__ == "__main__":
    main()
