"""Stable, vectorised 64-bit hashes of values and rows, and MinHash signatures of text.

Hashes are the same in every process and on every machine (a manifest written today is compared
tomorrow), unlike Python's salted ``hash``. Strings are hashed from their code points, a column
of a chunk at a time: a polynomial hash over the positions, finished by the splitmix64 mixer
(Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators"). Values longer than
:data:`LONG` characters are hashed one by one with BLAKE2b.

Text similarity uses one-permutation MinHash over character 3-grams (Broder 1997, "On the
resemblance and containment of documents"; one permutation with bins: Li, Owen & Zhang 2012,
"One permutation hashing"): each 3-gram's hash picks one of ``bins`` bins and the bin keeps the
smallest value, so a signature costs one hash per 3-gram whatever the number of bins.
"""

from __future__ import annotations

import hashlib

import numpy as np

LONG = 256  #: strings longer than this are hashed individually (a fixed-width array would be huge)
_M = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
EMPTY_BIN = np.uint32(0xFFFFFFFF)  #: a MinHash bin that no 3-gram fell into


def mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    h = np.asarray(h, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def combine(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Order-dependent combination of two hash arrays."""
    with np.errstate(over="ignore"):
        return mix64(np.asarray(h, np.uint64) * _M + np.asarray(v, np.uint64))


def codepoints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes (n, width) uint32, lengths (n,), long (n,) bool)`` of an object array of str;
    strings longer than :data:`LONG` are cut to it and marked ``long``."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    long = lengths > LONG
    vals = values
    if long.any():
        vals = values.copy()
        vals[long] = [v[:LONG] for v in values[long]]
    width = int(min(lengths.max(initial=0), LONG))
    if width == 0:
        return np.zeros((len(values), 1), np.uint32), lengths, long
    fixed = np.asarray(vals.tolist(), dtype=f"<U{width}")
    return fixed.view(np.uint32).reshape(len(values), width), lengths, long


def hash_codes(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Polynomial hash of each row of code points (the first ``lengths`` of each row): the same
    whatever the width of the array."""
    h = np.full(len(codes), 0xCBF29CE484222325, dtype=np.uint64)
    lengths = np.minimum(lengths, codes.shape[1])
    with np.errstate(over="ignore"):
        for j in range(codes.shape[1]):  # positions past a value's length leave its hash alone
            h = np.where(j < lengths, h * _M + codes[:, j].astype(np.uint64), h)
    return mix64(h ^ mix64(lengths.astype(np.uint64)))


def hash_strings(values: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each str of an object array."""
    codes, lengths, long = codepoints(values)
    h = hash_codes(codes, lengths)
    for i in np.flatnonzero(long):
        digest = hashlib.blake2b(values[i].encode("utf-8", "surrogatepass"), digest_size=8).digest()
        h[i] = np.frombuffer(digest, np.uint64)[0]
    return h


def hash_floats(x: np.ndarray) -> np.ndarray:
    """A stable hash of each float64 (every NaN hashes alike; 0.0 and -0.0 too)."""
    x = np.where(np.isnan(x), np.nan, x + 0.0).astype(np.float64)
    return mix64(x.view(np.uint64))


def normalise_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Text normalised for near-duplicate search: ASCII letters lower-cased, whitespace and ASCII
    punctuation removed, the remaining code points moved left. Returns (codes, lengths)."""
    c = codes.copy()
    upper = (c >= 65) & (c <= 90)
    c[upper] += 32
    drop = (c <= 32) | ((c >= 33) & (c <= 47)) | ((c >= 58) & (c <= 64)) | ((c >= 91) & (c <= 96)) \
        | ((c >= 123) & (c <= 127))
    c[drop] = 0
    order = np.argsort(drop, axis=1, kind="stable")
    c = np.take_along_axis(c, order, axis=1)
    return c, (~drop).sum(axis=1)


def minhash_update(sig: np.ndarray, codes: np.ndarray, lengths: np.ndarray, salt: int) -> None:
    """Fold the character 3-grams of each row of ``codes`` (normalised, left-aligned) into the
    one-permutation MinHash signatures ``sig`` (n, bins) uint32, in place."""
    n, width = codes.shape
    bins = sig.shape[1]
    if width < 3:
        return
    c = codes.astype(np.uint64)
    with np.errstate(over="ignore"):
        grams = mix64((c[:, :-2] << np.uint64(42)) ^ (c[:, 1:-1] << np.uint64(21)) ^ c[:, 2:]
                      ^ mix64(np.uint64(salt + 1)))
    valid = np.arange(width - 2)[None, :] < (lengths[:, None] - 2)
    rows = np.broadcast_to(np.arange(n)[:, None], valid.shape)[valid]
    g = grams[valid]
    b = (g >> np.uint64(58)).astype(np.int64) % bins
    v = (g & np.uint64(0xFFFFFFFE)).astype(np.uint32)  # never EMPTY_BIN
    np.minimum.at(sig.reshape(-1), rows * bins + b, v)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard similarity estimated from two arrays of signatures (m, bins), over the bins that are
    filled in either (1.0 for two empty texts)."""
    filled = (a != EMPTY_BIN) | (b != EMPTY_BIN)
    same = (a == b) & filled
    n = filled.sum(axis=1)
    return np.where(n > 0, same.sum(axis=1) / np.maximum(n, 1), 1.0)
