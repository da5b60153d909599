"""Tables read in chunks: CSV (the standard library, or pyarrow when installed) and Parquet
(pyarrow, the ``audit`` extra), one bounded chunk of rows at a time.

A :class:`Chunk` holds each column of a few thousand rows as a NumPy array: ``object`` arrays of
``str`` as read (missing values are ``""``; bytes that are not UTF-8 are kept as lone surrogates,
``errors="surrogateescape"``), or ``float64`` for Parquet's numeric columns. Column names are
always valid text: bytes of a header that are not UTF-8 become U+FFFD (:func:`column_name`).
Problems of the file itself — unreadable (binary or compressed files included), truncated,
malformed rows, a header that differs from the first file's — are :class:`ReadProblem`s: the
reader records them and goes on with what it can read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bastion.errors import UsageError

DEFAULT_CHUNK_ROWS = 65_536
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
MAX_FIELD_CHARS = 10_000_000  #: a CSV field longer than this is a malformed row (the stdlib default is 131072)
#: leading bytes of files that are not text tables: (magic, what the file is)
_BINARY_MAGIC = ((b"\x1f\x8b", "gzip-compressed data"), (b"BZh", "bzip2-compressed data"),
                 (b"\xfd7zXZ\x00", "xz-compressed data"), (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
                 (b"PK\x03\x04", "a ZIP archive (or an Excel .xlsx workbook)"), (b"PAR1", "a Parquet file"),
                 (b"\xd0\xcf\x11\xe0", "an OLE2 file (an Excel .xls workbook?)"),
                 (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"))


@dataclass(frozen=True)
class Source:
    """One file of one split (``data``, ``train`` or ``test``)."""

    path: Path
    split: str = "data"

    @property
    def format(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            return "parquet"
        if suffix in CSV_SUFFIXES:
            return "csv"
        raise UsageError(f"{self.path}: unknown table format '{suffix or '(no suffix)'}'",
                         hint="give a .csv, .tsv or .parquet file")


@dataclass
class ReadProblem:
    """A problem of a file (not of its values): ``kind`` is ``unreadable``, ``truncated``,
    ``malformed-rows``, ``schema``, ``encoding`` (of the header) or ``limit``; ``rows`` are 0-based
    data rows of the file."""

    source: Source
    kind: str
    message: str
    rows: list[int] = field(default_factory=list)
    count: int = 1


@dataclass
class Chunk:
    """Records ``start .. start + n`` read from ``source``; ``rows`` are their 0-based data rows in
    the file (header excluded), which differ from ``start + i`` once a malformed row was skipped."""

    source: Source
    start: int
    columns: dict[str, np.ndarray]
    rows: np.ndarray | None = None   #: None: ``start .. start + n``

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def data_rows(self) -> np.ndarray:
        """The 0-based data row in the file of each record of the chunk."""
        return self.rows if self.rows is not None else np.arange(self.start, self.start + len(self), dtype=np.int64)

    def head(self, k: int) -> Chunk:
        """The first ``k`` records."""
        return Chunk(self.source, self.start, {c: v[:k] for c, v in self.columns.items()},
                     None if self.rows is None else self.rows[:k])


def printable(text: str) -> str:
    """``text`` with the bytes that were not UTF-8 (lone surrogates of ``surrogateescape``)
    replaced by U+FFFD, so that every report format can print and encode it."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def column_name(raw: str) -> str:
    """A header cell as a column name: stripped and :func:`printable`."""
    return printable(raw.strip())


def header(source: Source) -> list[str]:
    """The column names of ``source``; a UsageError when the file cannot be opened, has none, or
    is not a text table (compressed, binary, UTF-16)."""
    try:
        if source.format == "parquet":
            pq = _pyarrow_parquet()
            return list(pq.ParquetFile(source.path).schema_arrow.names)
        _refuse_binary(source.path)
        with _open_text(source.path) as fh:
            row = next(csv.reader(fh, delimiter=_delimiter(source.path)), None)
    except UsageError:
        raise
    except Exception as exc:  # pyarrow, OSError, csv.Error
        raise UsageError(f"{source.path}: cannot read the header: {type(exc).__name__}: {exc}") from exc
    if not row or not any(c.strip() for c in row):
        raise UsageError(f"{source.path}: the file is empty or has no header row")
    return [column_name(c) for c in row]


def _refuse_binary(path: Path) -> None:
    """A UsageError when ``path`` starts like a compressed or binary file, or holds NUL bytes early
    on: a CSV reader would return garbage rows from it, not an error."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    what = next((name for magic, name in _BINARY_MAGIC if head.startswith(magic)), None)
    if what is None and b"\x00" in head:
        what = "binary data (it holds NUL bytes; UTF-16 text?)"
    if what is not None:
        raise UsageError(f"{path}: not a text table: it looks like {what}",
                         hint="give an uncompressed CSV/TSV in UTF-8, or a .parquet file")


def read_chunks(source: Source, problems: list[ReadProblem], *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                engine: str = "auto") -> Iterator[Chunk]:
    """The chunks of ``source``; problems of the file go to ``problems`` and reading stops at the
    first one it cannot read past (what was read before it is kept)."""
    try:
        if source.format == "parquet":
            yield from _parquet_chunks(source, chunk_rows, problems)
        elif engine == "pyarrow" or (engine == "auto" and _has_pyarrow()):
            yield from _arrow_csv_chunks(source, chunk_rows, problems)
        else:
            yield from _stdlib_csv_chunks(source, chunk_rows, problems)
    except (OSError, UnicodeError, csv.Error, ValueError) as exc:
        problems.append(ReadProblem(source, "unreadable", f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid & co.; the rest of the audit goes on
        if type(exc).__module__.startswith("pyarrow"):
            problems.append(ReadProblem(source, "unreadable", f"{type(exc).__name__}: {exc}"))
        else:
            raise


# --- CSV, standard library --------------------------------------------------------------------------
def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _open_text(path: Path) -> io.TextIOWrapper:
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115


def _stdlib_csv_chunks(source: Source, chunk_rows: int, problems: list[ReadProblem]) -> Iterator[Chunk]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    with _open_text(source.path) as fh:
        reader = csv.reader(fh, delimiter=_delimiter(source.path))
        names = [column_name(c) for c in next(reader, [])]
        width, bad, n_bad, start, rows, row_nos = len(names), [], 0, 0, [], []
        row_no = 0
        while True:
            try:
                row = next(reader, None)
            except csv.Error as exc:
                problems.append(ReadProblem(source, "malformed-rows", f"data row {row_no + 1}: {exc}; stopped reading "
                                            "the file there", rows=[row_no]))
                break
            if row is None:
                break
            if len(row) != width:
                if row or width == 0:  # csv gives [] for a blank line: skip those silently
                    n_bad += 1
                    if len(bad) < 1000:
                        bad.append(row_no)
                row_no += 1
                continue
            rows.append(row)
            row_nos.append(row_no)
            row_no += 1
            if len(rows) == chunk_rows:
                yield Chunk(source, start, _columns(names, rows), np.array(row_nos, np.int64) if n_bad else None)
                start, rows, row_nos = start + len(rows), [], []
        if rows:
            yield Chunk(source, start, _columns(names, rows), np.array(row_nos, np.int64) if n_bad else None)
        if n_bad:
            problems.append(_malformed(source, n_bad, bad, width, row_no))


def _malformed(source: Source, n_bad: int, rows: list[int], width: int, n_rows: int) -> ReadProblem:
    last = rows and rows[-1] == n_rows - 1
    kind = "truncated" if last and n_bad == 1 else "malformed-rows"
    what = ("the last row is cut short: the file looks truncated" if kind == "truncated" else
            f"{n_bad} row(s) do not have the header's {width} fields; they were skipped")
    return ReadProblem(source, kind, what, rows=rows, count=n_bad)


def _columns(names: list[str], rows: list[list[str]]) -> dict[str, np.ndarray]:
    cols = list(zip(*rows))
    out = {}
    for name, values in zip(names, cols):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        out[name] = arr
    return out


# --- CSV and Parquet, pyarrow ---------------------------------------------------------------------------
def _has_pyarrow() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def _pyarrow_parquet():  # noqa: ANN202 - a module
    from bastion.errors import require

    return require("pyarrow.parquet", "audit")


def _arrow_csv_chunks(source: Source, chunk_rows: int, problems: list[ReadProblem]) -> Iterator[Chunk]:
    from bastion.errors import require

    pa = require("pyarrow", "audit")
    pcsv = require("pyarrow.csv", "audit")
    names = header(source)
    skipped: list[int] = []   # 0-based data rows of the malformed rows, as they come (in file order)
    counter = {"n": 0}

    def on_invalid(row) -> str:  # noqa: ANN001 - pyarrow.csv.InvalidRow
        counter["n"] += 1
        if row.number is not None:
            skipped.append(int(row.number) - 2)  # 1-based line of the file -> 0-based data row
        return "skip"

    def rows_of(start: int, n: int) -> np.ndarray | None:
        """Data rows of records ``start .. start + n``: each one moves down by the skipped rows before it."""
        if not skipped:
            return None
        pos = np.arange(start, start + n, dtype=np.int64)
        before = np.asarray(skipped, np.int64) - np.arange(len(skipped))   # records read before each skipped row
        return pos + np.searchsorted(before, pos, side="right")

    # every column as raw bytes: types are inferred per chunk by bastion, so a column whose type changes
    # after the first block is a finding, not a reader crash; bytes keep text that is not UTF-8. Columns
    # are named by position (f0, f1, ...; the header is read as the first row and dropped): a header that
    # is not UTF-8, repeats a name or has a quoted line break reads like any other
    positional = [f"f{i}" for i in range(len(names))]
    reader = pcsv.open_csv(
        source.path,
        read_options=pcsv.ReadOptions(block_size=1 << 24, use_threads=False, autogenerate_column_names=True),
        parse_options=pcsv.ParseOptions(delimiter=_delimiter(source.path), invalid_row_handler=on_invalid,
                                        newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types={n: pa.binary() for n in positional},
                                            strings_can_be_null=False, quoted_strings_can_be_null=False,
                                            null_values=[]))
    start, pending, pending_n, first = 0, [], 0, True
    for batch in reader:
        if first and batch.num_rows:
            batch, first = batch.slice(1), False   # the header row
        pending.append(batch)
        pending_n += batch.num_rows
        while pending_n >= chunk_rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            head, rest = table.slice(0, chunk_rows), table.slice(chunk_rows)
            yield Chunk(source, start, _arrow_columns(head, names), rows_of(start, head.num_rows))
            start += head.num_rows
            pending, pending_n = rest.to_batches(), rest.num_rows
    if pending_n:
        yield Chunk(source, start, _arrow_columns(pa.Table.from_batches(pending), names), rows_of(start, pending_n))
    if counter["n"]:
        problems.append(_malformed(source, counter["n"], skipped[:1000], len(names), start + pending_n + counter["n"]))


def _arrow_columns(table, names: list[str]) -> dict[str, np.ndarray]:  # noqa: ANN001 - pyarrow.Table
    """The columns of ``table`` (read by position) under the header's ``names``."""
    import pyarrow as pa

    out = {}
    for name, col in zip(names, table.columns):
        try:  # UTF-8 checked and decoded in C++; Python decodes only a column that is not valid UTF-8
            out[name] = col.cast(pa.string()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, UnicodeDecodeError):
            out[name] = _decode(col.to_pylist())
    return out


def _decode(values: list) -> np.ndarray:
    """bytes -> str (invalid UTF-8 kept as lone surrogates), None -> ""."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = [v.decode("utf-8", "surrogateescape") if v is not None else "" for v in values]
    return arr


def _parquet_chunks(source: Source, chunk_rows: int, problems: list[ReadProblem]) -> Iterator[Chunk]:
    pa = __import__("pyarrow")
    pq = _pyarrow_parquet()
    start = 0
    for batch in pq.ParquetFile(source.path).iter_batches(batch_size=chunk_rows):
        cols = {}
        for name, col in zip(batch.schema.names, batch.columns):
            t = col.type
            if pa.types.is_floating(t) or (pa.types.is_integer(t) and not _long_integers(col)):
                cols[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
            elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
                cols[name] = _decode(col.to_pylist())
            else:
                strings = col.cast(pa.string()) if not pa.types.is_string(t) else col
                arr = np.empty(len(strings), dtype=object)
                arr[:] = [v if v is not None else "" for v in strings.to_pylist()]
                cols[name] = arr
        yield Chunk(source, start, cols)
        start += batch.num_rows


def _long_integers(col) -> bool:  # noqa: ANN001 - pyarrow.Array
    """Integers of 12 digits or more (ids, card numbers) lose digits as float64: keep them as text."""
    values = col.drop_null().to_numpy(zero_copy_only=False)
    return bool(len(values)) and bool(np.abs(values.astype(np.float64)).max() >= 1e11)
