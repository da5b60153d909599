"""Model extraction: bastion's Knockoff Nets and Copycat CNN against ART's KnockoffNets and CopycatCNN
at equal query budgets, side by side in one run; equation solving's exactness; the extraction
detectors' delay per attack and false alarms on benign clients (issue 11).

Target: the demo digits CNN (`demo:digits-cnn`, trained on scikit-learn's digits training split,
1,437 images 8x8 in [0, 1]). Fidelity (agreement with the target's labels) and accuracy are measured
on the 360 held-out test digits, which no attack ever queries. Query sets:
- ``ood``: natural-image patches (scikit-learn's two sample photographs, random square crops of 8-64
  pixels, grey, resized to 8x8): out-of-distribution natural data, Knockoff's and Copycat's setting;
- ``in``: the digits training split (an attacker who owns data of the model's own distribution).
At each budget both tools query the same inputs (the first ``budget`` of one seeded order) and train
the same architecture (bastion's default surrogate CNN) with the same optimiser (Adam, lr 2e-3),
batch size (64) and epochs (40). ART's victim answers probabilities (softmax of the CNN's logits).

Equation solving: a multinomial logistic regression on the flattened digits (64 features, 10
classes), recovered from d+1 = 65 queries; the largest parameter error against its identifiable
parameters (w_j - w_0, b_j - b_0) and the fidelity on the test digits.

Detectors (one instance per client, windows of 10 queries; rows = input and the model's
probabilities): PRADA, the query-distribution signal and query coverage (calibrated for benign
sessions of 200 queries), fitted on the training digits. Delay = queries sent before the first alert
(none: no alert in the attack's whole stream). Benign traffic: 10,000 queries from 50 clients of
200, each replaying test digits in its own random order. Two more streams: an in-distribution
attacker with data the detectors were not fitted on (all 360 test digits, one client), and a benign
client with a long, narrow session (2,000 queries among the test digits of 3 predicted classes).

Run in the benchmark virtualenv (ART installed there, never a bastion dependency):

    OMP_NUM_THREADS=1 nice -n 15 .benchenv/bin/python benchmarks/extraction.py --budgets 250,500,1000,2000 \
        --seeds 2 --jacobian-budget 1600 --out benchmarks/results/extraction.json

``--detection-only`` measures the detectors alone (seed 0's attack streams, bastion's attacks only, no
ART needed): ``--out benchmarks/results/extraction-detectors.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

EPOCHS, BATCH, LR = 40, 64, 2e-3


def natural_patches(n: int, seed: int) -> np.ndarray:
    """Grey natural-image patches (random squares of 8-64 pixels from scikit-learn's two sample
    photographs) resized to 8x8 in [0, 1]: (n, 1, 8, 8)."""
    from sklearn.datasets import load_sample_images

    images = [im.mean(axis=2) / 255.0 for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 8, 8), np.float32)
    for i in range(n):
        im = images[rng.integers(len(images))]
        s = int(rng.integers(8, 65))
        r, c = rng.integers(0, im.shape[0] - s), rng.integers(0, im.shape[1] - s)
        idx = np.arange(8) * s // 8
        out[i] = im[r:r + s, c:c + s][np.ix_(idx, idx)]
    return out[:, None]


class Recorder:
    """Wraps a Target: every input it is asked about by the attacker (not bastion's own measurements)."""

    def __init__(self, target: Any) -> None:
        self.target, self.sent = target, []

    def __enter__(self) -> Recorder:
        t, sent = self.target, self.sent
        self._orig_pp, self._orig_unc = t.predict_proba, t.uncounted
        measuring = [False]

        def predict_proba(x: np.ndarray) -> np.ndarray:
            if not measuring[0]:
                sent.append(np.asarray(x, np.float32))
            return self._orig_pp(x)

        @contextmanager
        def uncounted() -> Iterator[None]:
            measuring[0] = True
            try:
                with self._orig_unc():
                    yield
            finally:
                measuring[0] = False

        t.predict_proba, t.uncounted = predict_proba, uncounted
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.target.predict_proba, self.target.uncounted

    def stream(self) -> np.ndarray:
        return np.concatenate(self.sent)


def agreement(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(pred == ref))


def bastion_extract(name: str, target: Any, test_x: np.ndarray, query_set: Any, seed: int,
                    **params: Any) -> tuple[Any, float, np.ndarray]:
    from bastion.attacks.extraction import get_extraction_attack
    from bastion.core.run import RunContext

    attack = get_extraction_attack(name, rounds=1, epochs=EPOCHS, batch_size=BATCH, lr=LR, **params)
    t0 = time.process_time()
    with Recorder(target) as rec:
        res = attack.run(target, test_x, ctx=RunContext(seed=seed), query_set=query_set)
    return res, time.process_time() - t0, rec.stream()


def art_extract(kind: str, victim: Any, queries: np.ndarray, seed: int, mean: np.ndarray, std: np.ndarray,
                groups: np.ndarray | None = None, budget: int | None = None) -> tuple[Any, float]:
    """ART's attack; with ``groups`` (the actions), KnockoffNets' adaptive strategy spending ``budget``."""
    import torch
    from art.attacks.extraction import CopycatCNN, KnockoffNets
    from art.estimators.classification import PyTorchClassifier

    from bastion.core.surrogate import surrogate_module
    from bastion.core.training import init_weights

    np.random.seed(seed)  # ART draws its selection from numpy's global generator,
    torch.manual_seed(seed)  # and its batches from torch's
    module = surrogate_module((1, 8, 8), 10, mean, std)
    init_weights(module, torch.Generator().manual_seed(seed))
    thief = PyTorchClassifier(model=module, loss=torch.nn.CrossEntropyLoss(),
                              optimizer=torch.optim.Adam(module.parameters(), lr=LR), input_shape=(1, 8, 8),
                              nb_classes=10, clip_values=(0.0, 1.0))
    t0 = time.process_time()
    if groups is not None:
        attack = KnockoffNets(classifier=victim, batch_size_fit=BATCH, batch_size_query=BATCH, nb_epochs=EPOCHS,
                              nb_stolen=budget, sampling_strategy="adaptive", reward="all", use_probability=True,
                              verbose=False)
        return attack.extract(queries, y=groups, thieved_classifier=thief), time.process_time() - t0
    if kind == "knockoff":
        attack = KnockoffNets(classifier=victim, batch_size_fit=BATCH, batch_size_query=BATCH, nb_epochs=EPOCHS,
                              nb_stolen=len(queries), sampling_strategy="random", use_probability=True)
    else:
        attack = CopycatCNN(classifier=victim, batch_size_fit=BATCH, batch_size_query=BATCH, nb_epochs=EPOCHS,
                            nb_stolen=len(queries), use_probability=False)
    stolen = attack.extract(queries, thieved_classifier=thief)
    return stolen, time.process_time() - t0


def art_victim(module: Any) -> Any:
    import torch
    from art.estimators.classification import PyTorchClassifier

    api = torch.nn.Sequential(module, torch.nn.Softmax(dim=1)).eval()  # the API answers probabilities
    return PyTorchClassifier(model=api, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                             clip_values=(0.0, 1.0))


def equation_solving() -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from bastion.attacks.extraction import get_extraction_attack
    from bastion.core.spec import InputSpec
    from bastion.core.targets.sklearn_target import SklearnTarget

    d = load_digits()
    x = d.data / 16.0
    model = LogisticRegression(max_iter=2000).fit(x[:1437], d.target[:1437])
    target = SklearnTarget(model, InputSpec(shape=(64,), lower=0.0, upper=1.0))
    res = get_extraction_attack("equation-solving").run(target, x[1437:])
    w, b = res.surrogate.module.weight.detach().numpy(), res.surrogate.module.bias.detach().numpy()
    err = max(np.abs(w - (model.coef_[1:] - model.coef_[0])).max(),
              np.abs(b - (model.intercept_[1:] - model.intercept_[0])).max())
    with target.uncounted():
        fid = agreement(res.surrogate.predict(x[1437:].astype(np.float32)), target.predict(x[1437:]))
    return {"queries": res.queries, "max_parameter_error": float(err), "fidelity_test": fid,
            "classes": 10, "features": 64}


def jacobian_run(target: Any, train_x: np.ndarray, test: Any, ref: np.ndarray, seed: int,
                 budget: int) -> tuple[dict[str, Any], np.ndarray]:
    """Jacobian augmentation: 100 seed digits from the training split, doubled each round up to the
    budget; its figures and the queries it sent."""
    from bastion.attacks.extraction import get_extraction_attack
    from bastion.core.run import RunContext
    from bastion.core.threat import ThreatModel

    t0 = time.process_time()
    with Recorder(target) as rec:
        rounds = int(np.ceil(np.log2(budget / 100))) + 1  # 100, 200, 400, ... up to the budget
        res = get_extraction_attack("jacobian", seed_size=100, rounds=rounds, step=0.1, epochs=EPOCHS,
                                    batch_size=BATCH, lr=LR).run(target, test.x, ThreatModel(query_budget=budget),
                                                                 RunContext(seed=seed), query_set=train_x)
    pred = res.surrogate.predict(test.x)
    return {"seed": seed, "queries": res.curve.queries, "curve_fidelity_holdout": res.curve.fidelity,
            "fidelity": agreement(pred, ref), "accuracy": agreement(pred, test.y),
            "cpu_s": round(time.process_time() - t0, 2)}, rec.stream()


def detection_streams(target: Any, train: Any, test: Any, ref: np.ndarray, budgets: list[int],
                      jacobian_budget: int) -> dict[str, np.ndarray]:
    """The attack streams the full run records (seed 0, largest budgets), from bastion's attacks alone."""
    ood = natural_patches(max(budgets), seed=1234)
    in_budget = max(b for b in budgets if b <= len(train.x))
    queries = {"ood natural patches": ood[np.random.default_rng(0).permutation(len(ood))[:max(budgets)]],
               "in-distribution digits": train.x[np.random.default_rng(0).permutation(len(train.x))[:in_budget]]}
    streams = {f"{kind} ({qset})": bastion_extract(kind, target, test.x, q, 0)[2]
               for qset, q in queries.items() for kind in ("knockoff", "copycat")}
    streams["jacobian (100 seeds + synthetic)"] = jacobian_run(target, train.x, test, ref, 0, jacobian_budget)[1]
    return streams


def detection(target: Any, train_x: np.ndarray, test_x: np.ndarray, streams: dict[str, np.ndarray],
              seed: int, window: int = 10) -> dict[str, Any]:
    from bastion.monitor.extraction import Prada, QueryCoverage, QueryDistribution

    def rows(x: np.ndarray) -> np.ndarray:
        with target.uncounted():
            return np.concatenate([x.reshape(len(x), -1), target.predict_proba(x)], axis=1)

    def delay(det: Any, stream: np.ndarray) -> int | None:
        det.reset()
        for i in range(0, len(stream), window):
            if det.update(stream[i:i + window]):
                return min(i + window, len(stream))
        return None

    rng = np.random.default_rng(seed)
    ref = rows(train_x)
    benign = [rows(test_x[rng.permutation(len(test_x))[:200]]) for _ in range(50)]
    streams = dict(streams)
    streams["in-distribution, fresh data (360 test digits)"] = test_x[rng.permutation(len(test_x))]
    narrow = np.flatnonzero(np.isin(rows(test_x)[:, -10:].argmax(1), [0, 1, 2]))
    streams["benign, long and narrow (2,000 queries, 3 classes)"] = test_x[rng.choice(narrow, 2000)]
    orders = {"in-distribution, 20 orders of 1,000 training digits": [
                  rows(train_x[rng.permutation(len(train_x))[:1000]]) for _ in range(20)],
              "in-distribution, fresh data, 20 orders of the 360 test digits": [
                  rows(test_x[rng.permutation(len(test_x))]) for _ in range(20)]}
    out: dict[str, Any] = {}
    for det in (Prada(outputs=10), QueryDistribution(outputs=10), QueryCoverage(outputs=10, session=200)):
        t0 = time.process_time()
        det.fit(ref)
        fit_cpu, t0 = time.process_time() - t0, time.process_time()
        delays = {name: delay(det, rows(s)) for name, s in streams.items()}
        spread = {name: [delay(det, s) for s in group] for name, group in orders.items()}
        alarmed, windows, alarms = 0, 0, 0
        for s in benign:
            det.reset()
            hit = False
            for i in range(0, len(s), window):
                windows += 1
                n = len(det.update(s[i:i + window]))
                alarms += n
                hit = hit or n > 0
            alarmed += hit
        out[det.label] = {"delay": delays, "delay_orders": spread, "benign_clients": len(benign), "benign_queries": sum(map(len, benign)),
                          "benign_clients_alarmed": alarmed, "benign_windows": windows, "benign_alarms": alarms,
                          "fit_cpu_s": round(fit_cpu, 2), "cpu_s": round(time.process_time() - t0, 2)}
    return out


def markdown(out: dict[str, Any]) -> str:
    """The tables of benchmarks/results/extraction.md from a run's JSON (medians over seeds)."""
    if "fidelity" not in out:  # a --detection-only run
        return "\n".join(detector_table(out["detectors"]))
    rows = out["fidelity"]
    lines = ["| query set | attack | queries | bastion fidelity | ART fidelity | bastion accuracy | ART accuracy | "
             "bastion ≥ ART (seeds) | bastion / ART CPU |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = sorted({(r["query_set"], r["attack"], r["budget"]) for r in rows}, key=lambda k: (k[0] != "ood", k[1], k[2]))
    for q, a, b in keys:
        sel = [r for r in rows if (r["query_set"], r["attack"], r["budget"]) == (q, a, b)]
        med = lambda k: float(np.median([r[k] for r in sel]))  # noqa: E731
        wins = sum(r["bastion_fidelity"] >= r["art_fidelity"] for r in sel)
        cpu = sum(r["bastion_cpu_s"] for r in sel) / max(sum(r["art_cpu_s"] for r in sel), 1e-9)
        lines.append(f"| {q} | {a} | {b} | {med('bastion_fidelity'):.3f} | {med('art_fidelity'):.3f} | "
                     f"{med('bastion_accuracy'):.3f} | {med('art_accuracy'):.3f} | {wins}/{len(sel)} | {cpu:.2f}× |")
    jac = out["jacobian"]
    lines += ["", "| Jacobian augmentation | queries | fidelity (360 test digits) | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| seed {j['seed']} | {j['queries'][-1]} | {j['fidelity']:.3f} | {j['accuracy']:.3f} |" for j in jac]
    eq = out["equation_solving"]
    lines += ["", f"Equation solving (logistic regression, {eq['features']} features, {eq['classes']} classes): "
              f"{eq['queries']} queries, largest parameter error {eq['max_parameter_error']:.1e}, fidelity "
              f"{eq['fidelity_test']:.3f}.", ""]
    return "\n".join(lines + detector_table(out["detectors"]))


def detector_table(det: dict[str, Any]) -> list[str]:
    """Delay per attack stream and benign false alarms, one column per detector."""
    names = list(next(iter(det.values()))["delay"])
    lines = ["| attack stream | " + " | ".join(det) + " |", "| --- |" + " --- |" * len(det)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join("no alarm" if d["delay"][n] is None else f"{d['delay'][n]} queries"
                                             for d in det.values()) + " |")
    for n in next(iter(det.values())).get("delay_orders", {}):
        cells = []
        for d in det.values():
            hit = [v for v in d["delay_orders"][n] if v is not None]
            cells.append(f"{len(hit)}/{len(d['delay_orders'][n])} alarmed" + (
                f", {min(hit)} / {int(np.median(hit))} / {max(hit)} queries" if hit else ""))
        lines.append(f"| {n} (min / median / max) | " + " | ".join(cells) + " |")
    lines.append("| benign: clients alarmed / alarms in windows | " + " | ".join(
        f"{d['benign_clients_alarmed']}/{d['benign_clients']} clients, {d['benign_alarms']}/{d['benign_windows']} windows "
        f"({d['benign_queries']} queries)" for d in det.values()) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="250,500,1000,2000")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jacobian-budget", type=int, default=1600)
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown", default=None, help="print the tables of a run's JSON and exit")
    ap.add_argument("--detection-only", action="store_true", help="only the detectors (seed 0's streams, no ART)")
    args = ap.parse_args()
    if args.markdown:
        with open(args.markdown, encoding="utf-8") as f:
            print(markdown(json.load(f)))
        return
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import bastion
    from bastion.core.demo import demo_data, digits_cnn
    from bastion.core.surrogate import input_statistics

    budgets = [int(b) for b in args.budgets.split(",")]
    target = digits_cnn()
    train, test = demo_data("digits-train"), demo_data("digits")
    with target.uncounted():
        ref = target.predict(test.x)
    machine = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
               "bastion": bastion.__version__, "numpy": np.__version__}
    if args.detection_only:
        streams = detection_streams(target, train, test, ref, budgets, args.jacobian_budget)
        det = detection(target, train.x, test.x, streams, seed=0)
        print(json.dumps(det), flush=True)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump({"machine": machine, "settings": {"budgets": budgets, "jacobian_budget": args.jacobian_budget},
                           "detectors": det}, f, indent=1)
        return
    import art

    machine["art"] = art.__version__
    victim = art_victim(target.module)
    ood_all = natural_patches(max(budgets), seed=1234)
    rows: list[dict[str, Any]] = []
    streams: dict[str, np.ndarray] = {}
    for seed in range(args.seeds):
        order_in = np.random.default_rng(seed).permutation(len(train.x))
        order_ood = np.random.default_rng(seed).permutation(len(ood_all))
        for qset in ("ood", "in"):
            for budget in budgets:
                if qset == "in" and budget > len(train.x):
                    continue
                q = ood_all[order_ood[:budget]] if qset == "ood" else train.x[order_in[:budget]]
                mean, std = input_statistics(q, target.input_spec)
                for kind in ("knockoff", "copycat"):
                    res, b_cpu, sent = bastion_extract(kind, target, test.x, q, seed)
                    b_pred = res.surrogate.predict(test.x)
                    stolen, a_cpu = art_extract(kind, victim, q, seed, mean, std)
                    a_pred = stolen.predict(test.x).argmax(1)
                    row = {"seed": seed, "query_set": qset, "budget": budget, "attack": kind,
                           "bastion_queries": int(res.queries), "bastion_fidelity": agreement(b_pred, ref),
                           "bastion_accuracy": agreement(b_pred, test.y), "bastion_cpu_s": round(b_cpu, 2),
                           "art_fidelity": agreement(a_pred, ref), "art_accuracy": agreement(a_pred, test.y),
                           "art_cpu_s": round(a_cpu, 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if seed == 0 and budget == max(budgets) and qset == "ood":
                        streams[f"{kind} (ood natural patches)"] = sent
                    if seed == 0 and budget == max(b for b in budgets if b <= len(train.x)) and qset == "in":
                        streams[f"{kind} (in-distribution digits)"] = sent
    jac = []
    for seed in range(args.seeds):
        record, sent = jacobian_run(target, train.x, test, ref, seed, args.jacobian_budget)
        jac.append(record)
        print(json.dumps(record), flush=True)
        if seed == 0:
            streams["jacobian (100 seeds + synthetic)"] = sent
    eq = equation_solving()
    print(json.dumps(eq), flush=True)
    det = detection(target, train.x, test.x, streams, seed=0)
    print(json.dumps(det), flush=True)
    out = {"machine": machine,
           "settings": {"epochs": EPOCHS, "batch": BATCH, "lr": LR, "budgets": budgets, "seeds": args.seeds},
           "fidelity": rows, "jacobian": jac, "equation_solving": eq, "detectors": det}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
