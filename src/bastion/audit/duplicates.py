"""Exact and near duplicates within a split, leaks across train/test, conflicting labels.

Exact duplicates and conflicts group records by their stable hashes (a sort, ``O(n log n)``).
Near duplicates are never searched pair by pair: each record gets ``grids * bands`` blocking keys,
and only records that share a key and lie within ``window`` places of each other, once sorted by
key and a random projection, are compared — the sorted-neighbourhood method (Hernández & Stolfo
1995, "The merge/purge problem for large databases") over locality-sensitive keys (Indyk &
Motwani 1998). A key hashes together:

- the normalised categorical values (exactly);
- the numeric values, scaled by their column's spread and cut into cells of width ``cell`` on a
  grid shifted by a random offset per grid and column, so that two values closer than
  ``tolerance`` share a cell on at least one of ``grids`` grids with high probability;
- one band of ``bins / bands`` bins of the text's MinHash signature (banding, Leskovec, Rajaraman
  & Ullman, "Mining of Massive Datasets", ch. 3), so texts with Jaccard similarity ``s`` share a
  band with probability ``1 - (1 - s^r)^bands``.

A candidate pair is a near duplicate when its categorical values are equal, every numeric value
lies within ``tolerance`` (in the column's spread) and the text similarity is at least
``text_similarity``. The cost is ``O(n log n)`` per key, whatever the data.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from bastion.audit import hashing
from bastion.audit.base import AuditFinding, DataAudit
from bastion.audit.profile import SPLITS, Profile
from bastion.core.params import Params
from bastion.core.results import Severity
from bastion.core.run import RunContext

TRAIN, TEST = SPLITS.index("train"), SPLITS.index("test")


class DuplicateParams(Params):
    near: bool = Field(True, description="Search near duplicates too (not only exact ones).")
    tolerance: float = Field(1e-3, gt=0, description="Numeric values closer than this, in units of the column's "
                                                     "standard deviation, are equal.")
    text_similarity: float = Field(0.8, gt=0, le=1, description="Least estimated Jaccard similarity of the "
                                                                "character 3-grams of two texts.")
    cell: float = Field(0.5, gt=0, description="Width of a blocking cell, in standard deviations.")
    grids: int = Field(3, ge=1, le=16, description="Shifted grids of numeric cells.")
    bands: int = Field(8, ge=1, le=64, description="MinHash bands (the signature's bins are split among them).")
    window: int = Field(4, ge=1, le=64, description="Neighbours compared after sorting by each key.")


class DuplicateAudit(DataAudit):
    """Exact and near duplicates, train/test leakage and conflicting labels of a profiled table."""

    name = "duplicates"
    Params = DuplicateParams

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        p: DuplicateParams = self.params  # type: ignore[assignment]
        if data.n == 0:
            return []
        out = []
        inputs = data.inputs
        # exact duplicates: same record (label included) in the same split
        gid = _groups(hashing.combine(data.record_hash, data.split.astype(np.uint64)))
        size = np.bincount(gid)
        dup = size[gid] > 1
        if dup.any():
            extra = int(dup.sum() - (size > 1).sum())
            out.append(AuditFinding(
                rule_id="BASTION-DA-001", title=f"{extra} exact duplicate record(s) in {int((size > 1).sum())} group(s)",
                severity=Severity.low if extra < 0.01 * data.n else Severity.medium,
                records=np.flatnonzero(dup).tolist(), columns=inputs,
                measurements={"duplicate_records": extra, "duplicate_groups": int((size > 1).sum())},
                samples=_examples(data, gid, dup)))
        # conflicting labels: same inputs, different labels (anywhere)
        if data.label_found:
            out += _conflicts(data, inputs)
        # exact leaks: inputs of a test record also in the training split
        has_splits = (data.split == TRAIN).any() and (data.split == TEST).any()
        if has_splits:
            igid = _groups(data.input_hash)
            in_train = np.zeros(igid.max() + 1, bool)
            in_train[igid[data.split == TRAIN]] = True
            in_test = np.zeros_like(in_train)
            in_test[igid[data.split == TEST]] = True
            both = in_train & in_test
            leaked = both[igid]
            if leaked.any():
                n_test = int((leaked & (data.split == TEST)).sum())
                out.append(AuditFinding(
                    rule_id="BASTION-DA-003", title=f"{n_test} test record(s) have their exact inputs in the training "
                                                    "data", severity=Severity.high,
                    records=np.flatnonzero(leaked).tolist(), columns=inputs,
                    measurements={"leaked_test_records": n_test, "leaked_share": n_test / max(1, (data.split == TEST).sum())},
                    samples=_examples(data, igid, leaked)))
        if p.near:
            a, b = near_pairs(data, p, ctx)
            near = data.input_hash[a] != data.input_hash[b]
            a, b = a[near], b[near]
            cross = data.split[a] != data.split[b]
            within = ~cross
            if within.any():
                recs = np.unique(np.concatenate([a[within], b[within]]))
                comp = _components(a[within], b[within], data.n)
                n_groups = len(np.unique(comp[recs]))
                out.append(AuditFinding(
                    rule_id="BASTION-DA-002", title=f"{len(recs) - n_groups} near-duplicate record(s) in {n_groups} "
                                                    "group(s)", severity=Severity.low,
                    records=recs.tolist(), columns=inputs,
                    measurements={"near_duplicate_records": len(recs) - n_groups, "near_duplicate_groups": n_groups},
                    samples=[f"{data.where(int(x))} ~ {data.where(int(y))}" for x, y in zip(a[within][:5], b[within][:5])]))
            if has_splits and cross.any():
                trainish = (data.split[a] == TRAIN) & (data.split[b] == TEST) | (data.split[a] == TEST) & (data.split[b] == TRAIN)
                a, b = a[cross & trainish], b[cross & trainish]
                if len(a):
                    recs = np.unique(np.concatenate([a, b]))
                    n_test = int((data.split[recs] == TEST).sum())
                    out.append(AuditFinding(
                        rule_id="BASTION-DA-004", title=f"{n_test} test record(s) are near copies of training records",
                        severity=Severity.medium, records=recs.tolist(), columns=inputs,
                        measurements={"near_leaked_test_records": n_test},
                        samples=[f"{data.where(int(x))} ~ {data.where(int(y))}" for x, y in zip(a[:5], b[:5])]))
        return out


def _groups(h: np.ndarray) -> np.ndarray:
    """A group id per record: equal hashes, equal ids."""
    return np.unique(h, return_inverse=True)[1].reshape(-1)


def _examples(data: Profile, gid: np.ndarray, flagged: np.ndarray, k: int = 5) -> list[str]:
    """Up to ``k`` groups as 'file:row = file:row ...' (record positions, never values)."""
    out = []
    idx = np.flatnonzero(flagged)
    order = idx[np.argsort(gid[idx], kind="stable")]
    starts = np.flatnonzero(np.r_[True, gid[order][1:] != gid[order][:-1]])
    for s, e in zip(starts[:k], list(starts[1:k + 1]) + [len(order)]):
        out.append(" = ".join(data.where(int(r)) for r in order[s:e][:4]) + (" ..." if e - s > 4 else ""))
    return out


def _conflicts(data: Profile, inputs: list[str]) -> list[AuditFinding]:
    labelled = data.labels >= 0
    igid = _groups(data.input_hash)
    pairs = np.unique(np.stack([igid[labelled], data.labels[labelled]], axis=1), axis=0)
    n_labels = np.bincount(pairs[:, 0], minlength=igid.max() + 1)
    bad = (n_labels > 1)[igid] & labelled
    if not bad.any():
        return []
    n_groups = int((n_labels > 1).sum())
    return [AuditFinding(rule_id="BASTION-DA-005",
                         title=f"{n_groups} input(s) appear with different labels ({int(bad.sum())} records)",
                         severity=Severity.medium, records=np.flatnonzero(bad).tolist(), columns=inputs + [data.label],
                         measurements={"conflicting_groups": n_groups, "conflicting_records": int(bad.sum())},
                         samples=_examples(data, igid, bad))]


def near_pairs(data: Profile, p: DuplicateParams, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate pairs ``(a, b)``, ``a < b`` (exact copies included)."""
    n, d = data.z.shape
    rng = ctx.rng("near-duplicates")
    z = data.z
    has_text = bool(data.text)
    bands = p.bands if has_text else 1
    bins = data.sig.shape[1]
    r = max(1, bins // bands)
    proj = np.nan_to_num(z, nan=0.0) @ rng.standard_normal(d).astype(np.float32) if d else np.zeros(n, np.float32)
    band_h = []
    for b in range(bands):
        h = np.zeros(n, np.uint64)
        if has_text:
            for j in range(b * r, min(bins, (b + 1) * r)):
                h = hashing.combine(h, data.sig[:, j])
        band_h.append(h)
    cand_a, cand_b = [], []
    for g in range(p.grids if d else 1):
        base = data.cat_hash.copy()
        offsets = rng.random(d)
        for j in range(d):
            q = np.floor(z[:, j] / p.cell + offsets[j])
            q = np.where(np.isnan(q), -(2.0 ** 62), q).astype(np.int64)
            base = hashing.combine(base, q.view(np.uint64))
        for h in band_h:
            key = hashing.combine(base, h)
            order = np.lexsort((proj, key))
            ks = key[order]
            for w in range(1, p.window + 1):
                same = ks[:-w] == ks[w:]
                if same.any():
                    cand_a.append(order[:-w][same])
                    cand_b.append(order[w:][same])
    if not cand_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate(cand_a), np.concatenate(cand_b)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair = np.unique(lo.astype(np.int64) * n + hi)
    a, b = pair // n, pair % n
    ok = data.cat_hash[a] == data.cat_hash[b]
    a, b = a[ok], b[ok]
    keep = np.ones(len(a), bool)
    for s in range(0, len(a), 1 << 16):  # verify in slices: bounded memory
        za, zb = z[a[s:s + (1 << 16)]], z[b[s:s + (1 << 16)]]
        nan_a, nan_b = np.isnan(za), np.isnan(zb)
        close = (np.abs(za - zb) <= p.tolerance) | (nan_a & nan_b)
        k = close.all(axis=1)
        if has_text:
            k &= hashing.similarity(data.sig[a[s:s + (1 << 16)]], data.sig[b[s:s + (1 << 16)]]) >= p.text_similarity
        keep[s:s + (1 << 16)] = k
    return a[keep], b[keep]


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the graph with edges ``(a, b)``: a component id per node
    (min-label propagation with pointer jumping)."""
    lab = np.arange(n)
    while True:
        m = np.minimum(lab[a], lab[b])
        new = lab.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, lab):
            return lab
        lab = new
