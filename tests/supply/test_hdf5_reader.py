"""bastion's own HDF5 reader (``bastion.supply.formats.hdf5_reader``) against the h5py path: on every HDF5
seed (the corpus, and files written by h5py with every superblock version, group storage, attribute type and
link kind the reader knows or declines) and on mutated seeds, a file the reader reads gives exactly the
findings h5py gives (only ``metrics.hdf5_reader`` differs); every other file is left to h5py (issue 7,
inspect speed: h5py and NumPy are imported only for the files the reader declines)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

import fuzzing
from bastion.supply import InspectConfig, scan_paths
from bastion.supply.context import LimitExceeded, ScanContext
from bastion.supply.rules import ScanFinding
from corpus import hdf5_variants
from bastion.supply.formats import HDF5_MAGIC, keras
from bastion.supply.formats import hdf5_reader
from bastion.supply.formats.hdf5_reader import Unsupported, lookup3, read_hdf5

h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")

_CFG = InspectConfig(max_file_seconds=5)
# variants the reader must read itself (the others go to h5py: dense storage, a virtual dataset, attributes
# that are not one string)
_READ = {"lib_earliest.h5", "lib_v108.h5", "lib_v110.h5", "lib_latest.h5", "track_order.h5",
         "track_order_early.h5", "many_links.h5", "hard_links.h5", "string_types.h5", "one_element.h5",
         "big_config.h5", "committed_type.h5", "chunked.h5", "names.h5", "inner_nul.h5"}
_DECLINED = {"dense_links.h5", "virtual.h5", "not_text.h5", "empty.h5", "nullterm.h5"}


@pytest.fixture(scope="module")
def seeds(malicious_corpus, benign_corpus, tmp_path_factory) -> dict[str, bytes]:
    out = {name: data for name, data in fuzzing.seed_files([malicious_corpus[0], benign_corpus[0]]).items()
           if data.startswith(HDF5_MAGIC)}
    out.update({name: p.read_bytes() for name, p in hdf5_variants(tmp_path_factory.mktemp("h5var")).items()})
    return out


def _findings(ctx: ScanContext) -> tuple[list[tuple[object, ...]], str, list[str]]:
    """Findings without the reader's name, the format, what was not analysed. "Cannot be opened" is
    compared without the reason (h5py's message or the reader's)."""
    def row(f: ScanFinding) -> tuple[object, ...]:
        if f.title.startswith("HDF5 file cannot be opened"):
            return (f.rule_id, f.severity.value, "cannot be opened")
        return (f.rule_id, f.severity.value, f.title, f.offset, f.description,
                json.dumps({k: v for k, v in f.metrics.items() if k != "hdf5_reader"}, sort_keys=True))

    return sorted(map(row, ctx.findings)), ctx.formats[-1], ctx.not_analysed


def _both(path: Path) -> tuple[object, object] | None:
    """(builtin, h5py) findings on ``path``; None when the reader declines it or h5py runs out of time."""
    from bastion.supply.isolate import run_isolated

    size = path.stat().st_size
    ours = ScanContext(_CFG, path, formats=["hdf5"])
    with open(path, "rb") as fh:
        if not keras._scan_hdf5_builtin(ours, fh, size):
            assert not ours.findings and not ours.not_analysed
            return None
    theirs = ScanContext(_CFG, path, formats=["hdf5"])
    try:
        with open(path, "rb") as fh:
            run_isolated(theirs, fh, size, keras._scan_hdf5_h5py, "HDF5", setup=keras._import_h5py)
    except LimitExceeded:
        return None
    assert {f.metrics["hdf5_reader"] for f in ours.findings} <= {"builtin", "byte-search"}
    assert {f.metrics["hdf5_reader"] for f in theirs.findings} <= {"h5py", "byte-search"}
    return _findings(ours), _findings(theirs)


def test_reader_gives_the_h5py_findings_on_every_seed(seeds: dict[str, bytes], tmp_path: Path) -> None:
    read: set[str] = set()
    for name, data in seeds.items():
        path = tmp_path / Path(name).name
        path.write_bytes(data)
        pair = _both(path)
        if pair is not None:
            read.add(Path(name).name)
            assert pair[0] == pair[1], name
    names = {Path(n).name for n in seeds}
    assert _READ <= read and not _DECLINED & read
    corpus_h5 = {n for n in names if n.endswith("h5py.h5") or n in ("hdf5_external_link.h5", "model.h5")}
    assert corpus_h5 and corpus_h5 <= read           # every h5py-written corpus file is read without h5py


def test_reader_gives_the_h5py_findings_on_mutated_seeds(seeds: dict[str, bytes], tmp_path: Path) -> None:
    """Mutated files: each one the reader reads gives h5py's findings (structures it finds odd go to h5py)."""
    rng = random.Random(7)
    names = sorted(seeds)
    read = 0
    for i in range(1200):
        path = tmp_path / f"m{i}.h5"
        path.write_bytes(fuzzing.mutate(seeds[names[i % len(names)]], rng))
        pair = _both(path)
        if pair is not None:
            read += 1
            assert pair[0] == pair[1], (i, names[i % len(names)])
    assert read >= 150                      # the comparison did run on many files


def test_reader_reads_from_memory_and_without_h5py(seeds: dict[str, bytes], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An HDF5 member of an archive is read from memory; without h5py installed the reader still reads
    links and storage (a byte search could not)."""
    import zipfile

    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("model.weights.h5", seeds["hard_links.h5"])
    res = scan_paths([tmp_path / "m.keras"])
    got = sorted((f.severity.value, f.metrics["hdf5_object"], f.metrics["member"]) for f in res.findings
                 if f.rule_id == "BASTION-SC-030")
    assert got == [("critical", "/a/x", "model.weights.h5"), ("critical", "/ds", "model.weights.h5"),
                   ("critical", "/ds2", "model.weights.h5")]
    assert {f.metrics["hdf5_reader"] for f in res.findings if "hdf5_reader" in f.metrics} == {"builtin"}


def test_reader_bounds(seeds: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits: links past max_links, values past max_value_bytes, a truncated file, the bytes read in all are
    never read further (declined, or TooLarge for a fixed-length string)."""
    def read(data: bytes, **kw: int) -> object:
        opts = {"max_value_bytes": 10**6, "max_links": 10**5, **kw}
        return read_hdf5(io.BytesIO(data), len(data), ("model_config", "training_config"),
                         check_time=lambda: None, **opts)

    data = seeds["many_links.h5"]
    assert read(data).links == 306
    with pytest.raises(Unsupported, match="max_members"):
        read(data, max_links=305)
    strings = seeds["string_types.h5"]                 # fixed-length model_config, variable-length training_config
    small = read(strings, max_value_bytes=200).attributes
    assert type(small["model_config"]).__name__ == "TooLarge" and len(small["training_config"]) == 175
    with pytest.raises(Unsupported, match="over the limit"):                 # variable-length: h5py reports it
        read(strings, max_value_bytes=100)
    with pytest.raises(Unsupported, match="truncated"):
        read(seeds["lib_earliest.h5"][:-100])
    monkeypatch.setattr(hdf5_reader, "_MAX_TOTAL", 4096)                   # bytes read in all
    with pytest.raises(Unsupported, match="too large"):
        read(data)


def test_lookup3_matches_published_values() -> None:
    """Bob Jenkins' lookup3.c self-test values for hashlittle."""
    assert lookup3(b"", 0) == 0xDEADBEEF
    assert lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert lookup3(b"Four score and seven years ago", 0) == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161
