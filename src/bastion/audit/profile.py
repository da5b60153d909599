"""One streaming pass over a table that keeps what the audits need, never the raw rows.

:func:`profile_table` reads the files chunk by chunk (:mod:`bastion.audit.table`) and keeps, per
record, a few numbers: stable hashes of the record and of its inputs, the label's code, its split
and file row, the numeric columns scaled by the first chunk's spread (float32), the normalised
categorical values as one hash, and a MinHash signature of its text. Memory grows by
``8 * (4 + numeric columns / 2 + bins / 2)`` bytes or so per record; each chunk's raw values are
dropped once processed. Sensitive values are scanned in the same pass (only counts, record
numbers and masked samples are kept), and so are the problems of the values: mixed types,
non-UTF-8 text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from bastion.audit import hashing
from bastion.audit.sensitive import CREDENTIAL_COLUMN, Hits, scan_values
from bastion.audit.table import DEFAULT_CHUNK_ROWS, Chunk, ReadProblem, Source, header, read_chunks

log = logging.getLogger(__name__)
SPLITS = ("data", "train", "test")
MAX_CODES = 1000  #: distinct values coded per categorical column; the rest share one code
#: a text or categorical column whose first chunk is at least this share of numbers mixes types
MIXED_NUMBERS_SHARE = 0.5


class ColumnKind(str, Enum):
    numeric = "numeric"
    categorical = "categorical"
    text = "text"
    identifier = "identifier"  #: digits only, 12 or more: ids, card or account numbers (compared as text)


@dataclass
class ColumnInfo:
    name: str
    kind: ColumnKind
    center: float = 0.0
    scale: float = 1.0
    missing: int = 0
    mixed: list[np.ndarray] = field(default_factory=list)   #: records of a numeric column that are not numbers
    mixed_sample: str = ""
    #: a text or categorical column of mostly numbers (MIXED_NUMBERS_SHARE): ``mixed`` lists its other values
    mostly_numbers: bool = False
    non_utf8: list[np.ndarray] = field(default_factory=list)

    @staticmethod
    def count(parts: list[np.ndarray]) -> int:
        return int(sum(len(p) for p in parts))


@dataclass
class Profile:
    """What the audits read: one entry per record (in the order read: files in the order given)."""

    sources: list[Source]
    columns: list[str]                      #: every column of the first file, label included
    inputs: list[str]                       #: the columns that are not the label (nor the key)
    info: dict[str, ColumnInfo]
    label: str | None
    key: str | None                         #: the column that identifies a record (manifests), if any
    label_names: list[str]
    n: int
    split: np.ndarray                       #: uint8 index into SPLITS
    file: np.ndarray                        #: int32 index into sources
    row: np.ndarray                         #: int64 data row of the record in its file (0-based)
    record_hash: np.ndarray                 #: uint64 of every column as read
    input_hash: np.ndarray                  #: uint64 of the input columns as read
    key_hash: np.ndarray | None             #: uint64 of the key column, when one is given
    labels: np.ndarray                      #: int32 code into label_names, -1 when missing
    cat_hash: np.ndarray                    #: uint64 of the normalised categorical and identifier values
    numeric: list[str]
    z: np.ndarray                           #: float32 (n, numeric), NaN when missing or not a number
    text: list[str]
    sig: np.ndarray                         #: uint32 (n, bins) MinHash of the text columns
    categorical: list[str]
    cat_codes: np.ndarray                   #: int32 (n, categorical): value codes (MAX_CODES: any other value)
    sensitive: dict[str, dict[str, Hits]]
    problems: list[ReadProblem]
    kept: dict[str, tuple[np.ndarray, list[str]]]  #: column -> (codes, values) of columns kept for slices
    extra: dict[str, Any] = field(default_factory=dict)   #: per-record arrays from chunk hooks

    def __len__(self) -> int:
        return self.n

    def where(self, record: int) -> str:
        """``file:row`` of a record (row 1 is the first data row)."""
        return f"{self.sources[int(self.file[record])].path.name}:{int(self.row[record]) + 1}"

    @property
    def label_found(self) -> bool:
        return self.label is not None and self.label in self.columns


#: a hook called on every chunk with (chunk, kinds, first record index) -> {name: per-row array}
ChunkHook = Callable[[Chunk, dict[str, ColumnKind], int], dict[str, np.ndarray]]


def parse_numbers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64, not-a-number mask) of an object array of str; "" is missing (NaN, not flagged)."""
    if values.dtype != object:
        return values.astype(np.float64), np.zeros(len(values), bool)
    empty = values == ""
    filled = values.copy()
    filled[empty] = "nan"
    try:
        return filled.astype(np.float64), np.zeros(len(values), bool)
    except ValueError:
        out = np.full(len(values), np.nan)
        bad = np.zeros(len(values), bool)
        for i, v in enumerate(filled):
            try:
                out[i] = float(v)
            except ValueError:
                bad[i] = True
        return out, bad


def infer_kinds(chunk: Chunk, columns: list[str], mixed_share: float = 0.05) -> dict[str, ColumnKind]:
    """Each column's kind, from the first chunk: numeric when at most ``mixed_share`` of its
    filled values are not numbers (those are then findings), identifier when every value is a
    run of 12 or more digits, text when values are long or mostly distinct, else categorical."""
    kinds = {}
    for name in columns:
        values = chunk.columns.get(name)
        if values is None:
            kinds[name] = ColumnKind.categorical
            continue
        if values.dtype != object:
            kinds[name] = ColumnKind.numeric
            continue
        filled = values[values != ""]
        if not len(filled):
            kinds[name] = ColumnKind.categorical
            continue
        _, bad = parse_numbers(filled)
        if bad.mean() <= mixed_share and bad.mean() < 1:
            digits = all(v.isdigit() and len(v) >= 12 for v in filled[~bad][:1000])
            kinds[name] = ColumnKind.identifier if digits and not bad.any() else ColumnKind.numeric
            continue
        lengths = np.fromiter(map(len, filled), np.int64, count=len(filled))
        distinct = len(set(filled.tolist()))
        kinds[name] = (ColumnKind.text if lengths.mean() >= 20 or distinct > max(50, 0.02 * len(filled))
                       else ColumnKind.categorical)
    return kinds


def profile_table(sources: list[Source], *, label: str | None = None, key: str | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, bins: int = 32, max_rows: int | None = None,
                  engine: str = "auto", keep: tuple[str, ...] = (), hooks: tuple[ChunkHook, ...] = ()) -> Profile:
    """Read ``sources`` once and build their :class:`Profile`. Unreadable files and bad rows become
    ``problems``; the pass goes on with the rest."""
    problems: list[ReadProblem] = []
    headers: list[list[str] | None] = []
    for s in sources:
        try:
            headers.append(header(s))
        except Exception as exc:  # noqa: BLE001 - every unreadable file is a finding, the rest is audited
            problems.append(ReadProblem(s, "unreadable", str(exc).split("\n")[0].removeprefix(f"{s.path}: ")))
            headers.append(None)
            continue
        bad = [c for c in headers[-1] if "\ufffd" in c]
        if bad:
            problems.append(ReadProblem(s, "encoding", f"column name(s) {bad[:5]} are not valid UTF-8 (shown with "
                                                       "U+FFFD)"))
    first = next((h for h in headers if h is not None), [])
    for s, h in zip(sources, headers):
        if h is not None and h != first:
            gone, new = sorted(set(first) - set(h)), sorted(set(h) - set(first))
            problems.append(ReadProblem(s, "schema", f"the header differs from {sources[headers.index(first)].path.name}'s"
                                        f"{f': missing {gone}' if gone else ''}{f', extra {new}' if new else ''}"
                                        f"{'' if gone or new else ': columns in another order'}"))
    inputs = [c for c in first if c not in (label, key)]
    acc = _Accumulator(sources, first, inputs, label, key, bins, keep, hooks)
    total = 0
    for i, (s, h) in enumerate(zip(sources, headers)):
        if h is None:
            continue
        for chunk in read_chunks(s, problems, chunk_rows=chunk_rows, engine=engine):
            if max_rows is not None and total + len(chunk) > max_rows:
                chunk = chunk.head(max_rows - total)
            if len(chunk):
                acc.add(i, chunk)
                total += len(chunk)
            if max_rows is not None and total >= max_rows:
                problems.append(ReadProblem(s, "limit", f"stopped after {max_rows} records (max_rows); the rest of "
                                            "the data was not audited"))
                break
        if max_rows is not None and total >= max_rows:
            break
    return acc.finish(problems)


class _Accumulator:
    """Per-record arrays of one profiling pass, gathered chunk by chunk."""

    def __init__(self, sources: list[Source], columns: list[str], inputs: list[str], label: str | None,
                 key: str | None, bins: int, keep: tuple[str, ...], hooks: tuple[ChunkHook, ...]) -> None:
        self.sources, self.columns, self.inputs, self.label, self.key = sources, columns, inputs, label, key
        self.bins, self.keep, self.hooks = bins, keep, hooks
        self.kinds: dict[str, ColumnKind] | None = None
        self.info: dict[str, ColumnInfo] = {}
        self.parts: dict[str, list[np.ndarray]] = {}
        self.label_codes: dict[str, int] = {}
        self.kept_codes: dict[str, dict[str, int]] = {c: {} for c in keep}
        self.cat_tables: dict[str, dict[str, int]] = {}
        self.sensitive: dict[str, dict[str, Hits]] = {}
        self.n = 0

    def _put(self, name: str, arr: np.ndarray) -> None:
        self.parts.setdefault(name, []).append(arr)

    def add(self, file_index: int, chunk: Chunk) -> None:
        n, offset = len(chunk), self.n
        cols = chunk.columns
        blank = np.empty(n, dtype=object)
        blank[:] = ""
        if self.kinds is None:
            self.kinds = infer_kinds(chunk, self.columns)
            if not any(self.kinds[c] is ColumnKind.text for c in self.inputs):
                self.bins = 1  # no text: one empty bin per record, not 32
            for c in self.columns:
                self.info[c] = ColumnInfo(c, self.kinds[c])
                if self.kinds[c] is ColumnKind.numeric and c in cols:
                    x, _ = parse_numbers(cols[c])
                    finite = x[np.isfinite(x)]
                    if len(finite):
                        self.info[c].center = float(np.median(finite))
                        sd = float(finite.std())
                        self.info[c].scale = sd if sd > 0 else 1.0
                elif self.kinds[c] in (ColumnKind.text, ColumnKind.categorical) and c in cols and c in self.inputs:
                    filled = cols[c][cols[c] != ""]
                    # more than 5% are not numbers (else the column would be numeric), but most are
                    self.info[c].mostly_numbers = bool(len(filled)) and bool(
                        (~parse_numbers(filled)[1]).mean() >= MIXED_NUMBERS_SHARE)
        kinds = self.kinds
        record_hash = np.zeros(n, np.uint64)
        input_hash = np.zeros(n, np.uint64)
        cat_hash = np.zeros(n, np.uint64)
        numeric = [c for c in self.inputs if kinds[c] is ColumnKind.numeric]
        z = np.empty((n, len(numeric)), np.float32)
        categorical = [c for c in self.inputs if kinds[c] is ColumnKind.categorical]
        cat_codes = np.empty((n, len(categorical)), np.int32)
        sig = np.full((n, self.bins), hashing.EMPTY_BIN, np.uint32)
        for j, c in enumerate(self.columns):
            values = cols.get(c, blank)
            info, kind = self.info[c], kinds[c]
            raw = hashing.hash_floats(values) if values.dtype != object else None
            if values.dtype == object:
                codes, lengths, _ = hashing.codepoints(values)
                raw = hashing.hash_strings(values)
                info.missing += int((lengths == 0).sum())
                bad = ((codes >= 0xDC80) & (codes <= 0xDCFF)).any(axis=1)
                if bad.any():
                    info.non_utf8.append(np.flatnonzero(bad) + offset)
            else:
                info.missing += int(np.isnan(values).sum())
            record_hash = hashing.combine(record_hash, raw)
            if c == self.label:
                self._put("labels", self._label_codes(values))
                continue
            if c == self.key:
                self._put("key_hash", raw)
                continue
            input_hash = hashing.combine(input_hash, raw)
            if kind is ColumnKind.numeric:
                z[:, numeric.index(c)] = (self._mixed(info, values, offset) - info.center) / info.scale
            elif values.dtype == object:
                if info.mostly_numbers:
                    self._mixed(info, values, offset)
                norm, nlen = hashing.normalise_codes(codes)
                if kind is ColumnKind.text:
                    hashing.minhash_update(sig, norm, nlen, salt=j)
                else:
                    cat_hash = hashing.combine(cat_hash, hashing.hash_codes(norm, nlen))
                if kind is ColumnKind.categorical:
                    codes_c = self._codes(self.cat_tables.setdefault(c, {}), values, limit=MAX_CODES)
                    cat_codes[:, categorical.index(c)] = codes_c
                scan_values(values, offset, self.sensitive.setdefault(c, {}),
                            credential_column=bool(CREDENTIAL_COLUMN.search(c)))
            else:  # a numeric Parquet column inferred as an identifier cannot happen; keep it exact
                cat_hash = hashing.combine(cat_hash, raw)
        for c in self.keep:
            self._put(f"kept:{c}", self._codes(self.kept_codes[c], cols.get(c, blank)))
        for hook in self.hooks:
            for name, arr in hook(chunk, kinds, offset).items():
                self._put(f"extra:{name}", arr)
        self._put("record_hash", record_hash)
        self._put("input_hash", input_hash)
        self._put("cat_hash", cat_hash)
        self._put("z", z)
        self._put("sig", sig)
        self._put("cat_codes", cat_codes)
        self._put("split", np.full(n, SPLITS.index(chunk.source.split), np.uint8))
        self._put("file", np.full(n, file_index, np.int32))
        self._put("row", chunk.data_rows())
        self.n += n

    @staticmethod
    def _mixed(info: ColumnInfo, values: np.ndarray, offset: int) -> np.ndarray:
        """The values as numbers (NaN when not one); the records whose values are not numbers go to
        ``info.mixed``."""
        x, bad = parse_numbers(values)
        if bad.any():
            info.mixed.append(np.flatnonzero(bad) + offset)
            info.mixed_sample = info.mixed_sample or _shape_of(values[np.flatnonzero(bad)[0]])
        return x

    @staticmethod
    def _codes(table: dict[str, int], values: np.ndarray, limit: int | None = None) -> np.ndarray:
        strs = values.astype(str) if values.dtype != object else values
        uniq, inv = np.unique(strs.astype(str), return_inverse=True)
        if limit is not None:
            mapped = np.array([table.setdefault(u, len(table)) if u in table or len(table) < limit else limit
                               for u in uniq.tolist()], dtype=np.int32)
        else:
            mapped = np.array([table.setdefault(u, len(table)) for u in uniq.tolist()], dtype=np.int32)
        return mapped[inv.reshape(-1)] if len(uniq) else np.zeros(0, np.int32)

    def _label_codes(self, values: np.ndarray) -> np.ndarray:
        strs = np.array([v.strip() for v in values], dtype=object) if values.dtype == object else values
        if values.dtype != object:
            strs = np.array([("" if np.isnan(v) else (str(int(v)) if v == int(v) else str(v))) for v in values],
                            dtype=object)
        codes = self._codes(self.label_codes, strs)
        missing = self.label_codes.get("")
        if missing is not None:
            codes[codes == missing] = -1
        return codes

    def finish(self, problems: list[ReadProblem]) -> Profile:
        def cat(name: str, empty: np.ndarray) -> np.ndarray:
            parts = self.parts.get(name)
            return np.concatenate(parts) if parts else empty

        kinds = self.kinds or {c: ColumnKind.categorical for c in self.columns}
        if not self.info:
            self.info = {c: ColumnInfo(c, kinds[c]) for c in self.columns}
        numeric = [c for c in self.inputs if kinds[c] is ColumnKind.numeric]
        text = [c for c in self.inputs if kinds[c] is ColumnKind.text]
        categorical = [c for c in self.inputs if kinds[c] is ColumnKind.categorical]
        names = sorted(self.label_codes, key=self.label_codes.__getitem__)
        kept = {}
        for c in self.keep:
            table = self.kept_codes[c]
            kept[c] = (cat(f"kept:{c}", np.zeros(0, np.int32)), sorted(table, key=table.__getitem__))
        extra = {k.removeprefix("extra:"): np.concatenate(v) for k, v in self.parts.items() if k.startswith("extra:")}
        u64 = np.zeros(0, np.uint64)
        return Profile(
            sources=self.sources, columns=self.columns, inputs=self.inputs, info=self.info, label=self.label, key=self.key,
            label_names=names, n=self.n, split=cat("split", np.zeros(0, np.uint8)), file=cat("file", np.zeros(0, np.int32)),
            row=cat("row", np.zeros(0, np.int64)), record_hash=cat("record_hash", u64), input_hash=cat("input_hash", u64),
            key_hash=cat("key_hash", u64) if self.key in self.columns else None,
            labels=cat("labels", np.full(self.n, -1, np.int32)), cat_hash=cat("cat_hash", u64), numeric=numeric,
            z=cat("z", np.zeros((0, len(numeric)), np.float32)), text=text,
            sig=cat("sig", np.zeros((0, self.bins), np.uint32)), categorical=categorical,
            cat_codes=cat("cat_codes", np.zeros((0, len(categorical)), np.int32)), sensitive=self.sensitive, problems=problems,
            kept=kept, extra=extra)


def _shape_of(value: str) -> str:
    """What a value that is not a number looks like, without showing it: letters become 'a', digits '9'."""
    out = "".join("9" if ch.isdigit() else "a" if ch.isalpha() else ch for ch in value[:24])
    return out + ("..." if len(value) > 24 else "")
