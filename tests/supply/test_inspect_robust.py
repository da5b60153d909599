"""The scanner never crashes and never drops what it found (issue 7): truncated and malformed containers,
impossible headers, unknown formats, memory and time bombs, capped findings, nothing scanned."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from bastion.core.results import Severity
from bastion.supply import InspectConfig, scan_paths
from bastion.supply.context import LimitExceeded, ScanContext
from corpus import RCE_P0, _torch_zip, _zip, p2
from fuzzing import tar_gz

# A legacy Keras HDF5 file (written by h5py) with a few mutated bytes: the HDF5 library loops forever on it.
_HDF5_HANG = zlib.decompress(base64.b64decode(
    "eNrtWkFP2zAUTlqgEQJUtEnANkSW7YC0qhS2E5cFDbZOQgPBDpMQKiY1bUSadnEKYwjBkd32Ezhy234CR4477siR4467Mdux0zjQ"
    "FgGakOoPRY7tzy/O6/MX55Fv+dm3/b2PehUCTVO6lLQSxQWDmRXrvH+NlSorD1l5nODtPbRvmLWnmX09GdTP2MCPS3NzhH0RQzgR"
    "ZkBTJDoR+bmZRVJ+EsNBOU2IvEq1CJ3CNrRLZR9F4tK84XUHWbzG47pPybP4HlAe4qjchB5AhS3oIbvq4vYRVaUj0+EcNGGd9ESC"
    "WaX2THauUXvrwNqEbrGtnd6InYQwr35qJ/CHVXU37JJyjXktqQ17SWrvN+tP42ZN8T1gu7Zb4iYfYP6PyPhdw6kiZEzrRgVBI4ML"
    "6Hu2RVpWDGBZdQ9YO8Yq7qjWfLtif4UeM4UZuwaebt2BZDh1aDYkIWLLcgBCBRdUKGOmCCq0tTHcgcCjs/OATzi5bC43uYc5HizZ"
    "yIceLPLhbt1x9vbwvJOiPu2zeBsR9a2dPplPpD5JfWroE3+KllMirwhdBCPrJX/L66r0rxG/XK+OWfyePm49/t2bhXk1MmFBnzCm"
    "spMvs5OBtoR6g+Hj+6h6G051u6EVoX5QHRAX6zL8XIeubwMntmQ5AQkEB+yQNY9F47ImsL5LevDerdX9edIZu8Q68K1ywSbdBVQG"
    "NcJeIes/o79abaEOGf2qi0euOEt+zCb3U+R9ddf2yZ1M4XNg+fYW8PEjglA86NSNFtdfxfokYHFALjQJCQkJiVugS7pAQkJCQkJC"
    "IoblDwuzKs1FMnSL2YFxVs+npK9agWdj4v5qZHv7sI+HFZrSoO/+iLaTrCoZoqqq4Hde8ixSu6xkXg9KmZXsTDTLSp7HsoJ3nZWM"
    "68dJSozf62YnOx3Nsrs/R4P6r7GgbKcDR0ZQ6tKlUgfI84iVf8ZE3ib0XOhM53h93QaI1JAFHIhP+PrN3VAHDkdFHYjHsUQzHegO"
    "fKbyevALqomggedz+H9p4vUkVhDCHNTHWJ+uDGnK0H64vdNofyIRGNSY4iTV82dXK8eXe7A/TYa6eP6iNZ/H3/enrXn8Lv9mOim6"
    "Dl4r9AMJEx8H+DjCxwk+zky58iQkJCQkJDphXxnsqHjeKXFn+0jtubgT4zi8Z/7oaekPviEyQ3+kKTX+NWXcDym8X1cZh74PZa/2"
    "hhnuV7nfwu+vY8y1//reOKyI723jWZE3AX1rogYQ2i7S+j+BSXRj"
))


def test_truncated_tar_gz_keeps_the_pickle_found_before_the_cut(tmp_path: Path) -> None:
    data = tar_gz([("a/evil.pkl", RCE_P0), ("a/pad.bin", bytes(range(256)) * 64)])
    (tmp_path / "m.tar.gz").write_bytes(data[:-40])
    res = scan_paths([tmp_path / "m.tar.gz"])
    rules = {(f.rule_id, f.severity) for f in res.findings}
    assert ("BASTION-SC-001", Severity.critical) in rules          # os.system before the cut
    assert ("BASTION-SC-010", Severity.high) in rules              # the member cut short
    assert any(f.title.startswith("Truncated gzip stream") for f in res.findings)
    assert res.exit_code() == 1 and not [e for e in res.errors if e.kind == "error"]


def test_safetensors_header_with_huge_shapes_is_a_finding_fast(tmp_path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [10**18] * 20_000, "data_offsets": [0, 4]},
                         "u": {"dtype": "F32", "shape": [1], "data_offsets": [4, 10**400]}}).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    t0 = time.perf_counter()
    res = scan_paths([tmp_path / "x.safetensors"])
    assert time.perf_counter() - t0 < 2
    titles = [f.title for f in res.findings]
    assert any("more elements than a 64-bit size" in t for t in titles), titles
    assert any("invalid offsets" in t for t in titles) and not res.errors


@pytest.mark.parametrize(("data", "why"), [
    (struct.pack("<Q", 2**60) + b'{"a": 1}', "safetensors header length"),      # impossible header length
    (bytes(range(256)) * 4, "unknown format"),                                   # not a format bastion reads
], ids=["safetensors-length", "unknown"])
def test_files_not_understood_are_not_analysed_never_clean(tmp_path: Path, data: bytes, why: str) -> None:
    (tmp_path / "model.bin").write_bytes(data)
    res = scan_paths([tmp_path / "model.bin"])
    assert [e.kind for e in res.errors] == ["not-analysed"] and why in res.errors[0].message
    assert res.exit_code(Severity.critical) == 2 and not res.complete
    assert res.to_scan_result([tmp_path]).status == "incomplete"


def test_text_files_and_onnx_external_data_are_not_reported(benign_corpus) -> None:
    root, _ = benign_corpus
    res = scan_paths([root / "README.md", root / "onnx_external"])
    assert res.complete and res.exit_code() == 0, res.errors


def test_nothing_scanned_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("# a model card\n")
    for d in ("empty", "docs"):
        res = scan_paths([tmp_path / d])
        assert res.nothing_scanned and res.exit_code() == 2
        assert res.to_scan_result([tmp_path / d]).summary.startswith("nothing scanned")


def test_findings_of_one_archive_are_grouped_and_capped(tmp_path: Path) -> None:
    (tmp_path / "many.zip").write_bytes(_zip([(f"m{i}.pkl", RCE_P0) for i in range(1_000)]))
    res = scan_paths([tmp_path / "many.zip"], config=InspectConfig(max_findings_per_rule=20))
    crit = [f for f in res.findings if f.rule_id == "BASTION-SC-001"]
    assert len(crit) == 21 and all(f.severity is Severity.critical for f in crit)
    assert crit[-1].metrics["suppressed"] == 980 and "980 more" in crit[-1].title


def test_zip_member_flagged_encrypted_but_readable_is_analysed(tmp_path: Path) -> None:
    data = bytearray(_torch_zip(RCE_P0))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.index(sig)          # the first member, data.pkl, in both headers
        data[pos + flag_at] |= 0x01
    (tmp_path / "m.pt").write_bytes(bytes(data))
    res = scan_paths([tmp_path / "m.pt"])
    rules = {f.rule_id for f in res.findings}
    assert "BASTION-SC-001" in rules and "BASTION-SC-010" in rules
    assert not res.errors


def test_really_encrypted_zip_member_is_not_analysed(tmp_path: Path) -> None:
    data = bytearray(_zip([("a.pkl", p2(b"}"))], zipfile.ZIP_STORED))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(sig) + flag_at] |= 0x01
    pos = data.index(b"PK\x03\x04") + 30 + len("a.pkl")
    data[pos:pos + 4] = bytes(b ^ 0x5A for b in data[pos:pos + 4])     # ciphertext: CRC no longer matches
    (tmp_path / "e.zip").write_bytes(bytes(data))
    res = scan_paths([tmp_path / "e.zip"])
    assert [e.kind for e in res.errors] == ["not-analysed"] and "encrypted" in res.errors[0].message


def _zeros_gzip(n_mib: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024**2)
    return b"".join(comp.compress(block) for _ in range(n_mib)) + comp.flush()


# VmHWM (peak resident memory of this process image; ru_maxrss would carry over the parent's across exec)
_PEAK = ("import sys; from bastion.supply.inspect import scan_file; r = scan_file(sys.argv[1]); "
         "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
         "print(int(hwm) // 1024, r.not_analysed)")


def _peak_mib(path: Path) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split(maxsplit=1)
    return int(out[0]), out[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_gzip_bomb_memory_is_bounded(tmp_path: Path) -> None:
    bomb = _zeros_gzip(256)                          # about 250 KB that inflates to 256 MiB
    assert len(bomb) < 300_000
    (tmp_path / "bomb.gz").write_bytes(bomb)
    peak, why = _peak_mib(tmp_path / "bomb.gz")
    assert peak < 150 and "max_ratio" in why     # before the bound: the whole 256 MiB, twice


def test_hdf5_parse_runs_bounded_in_a_child(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    (tmp_path / "hang.h5").write_bytes(_HDF5_HANG)
    t0 = time.perf_counter()
    res = scan_paths([tmp_path / "hang.h5"], config=InspectConfig(max_file_seconds=1))
    assert time.perf_counter() - t0 < 10
    assert any(f.rule_id == "BASTION-SC-008" for f in res.findings)
    assert [e.kind for e in res.errors] == ["not-analysed"]


def _greedy(sub: ScanContext, fh: object, size: int) -> None:
    sub.add("BASTION-SC-020", Severity.critical, "found before the bomb")
    sub.blob = bytearray(512 * 1024**2)   # type: ignore[attr-defined]


def _sleepy(sub: ScanContext, fh: object, size: int) -> None:
    time.sleep(30)


def _fine(sub: ScanContext, fh: object, size: int) -> None:
    sub.add("BASTION-SC-020", Severity.high, f"read {len(fh.read())} bytes")   # type: ignore[attr-defined]


def test_isolated_parser_over_its_memory_limit_is_reported(tmp_path: Path) -> None:
    from bastion.supply.isolate import run_isolated

    if not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork on this platform")
    (tmp_path / "x.h5").write_bytes(b"12345")
    cfg = InspectConfig(max_parser_memory=32 * 1024**2)
    ctx = ScanContext(cfg, tmp_path / "x.h5")
    ctx.formats.append("hdf5")
    with open(tmp_path / "x.h5", "rb") as fh:
        run_isolated(ctx, fh, 5, _greedy, "HDF5")
        assert [f.title for f in ctx.findings][0] == "found before the bomb"
        assert any(f.metrics.get("limit") == "max_parser_memory" for f in ctx.findings)
        assert ctx.not_analysed == ["HDF5 parser exceeded max_parser_memory"]
        for _ in range(2):              # the same worker answers again (a fresh one after the bomb)
            ok = ScanContext(cfg, tmp_path / "x.h5")
            ok.formats.append("hdf5")
            run_isolated(ok, fh, 5, _fine, "HDF5")
            assert [f.title for f in ok.findings] == ["read 5 bytes"] and not ok.not_analysed
    slow = ScanContext(InspectConfig(max_file_seconds=0.5), tmp_path / "x.h5")
    with pytest.raises(LimitExceeded), open(tmp_path / "x.h5", "rb") as fh:
        run_isolated(slow, fh, 5, _sleepy, "HDF5")


@pytest.mark.parametrize("value", [".nan", ".inf", "-1", "0"])
def test_nan_and_non_positive_limits_are_refused(tmp_path: Path, value: str) -> None:
    from bastion.errors import PolicyError

    (tmp_path / "c.yaml").write_text(f"limits: {{max_ratio: {value}}}\n")
    with pytest.raises(PolicyError, match="limits.max_ratio"):
        InspectConfig.from_file(tmp_path / "c.yaml")


def test_reader_failure_keeps_earlier_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.supply.formats import safetensors

    def boom(*_a: object) -> None:
        raise OSError(5, "parser bug")

    monkeypatch.setattr(safetensors, "scan_safetensors", boom)
    header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    st = struct.pack("<Q", len(header)) + header + b"\0" * 4
    (tmp_path / "m.zip").write_bytes(_zip([("evil.pkl", RCE_P0), ("w.safetensors", st)]))
    res = scan_paths([tmp_path / "m.zip"])
    assert any(f.rule_id == "BASTION-SC-001" for f in res.findings)
    assert [e.kind for e in res.errors] == ["not-analysed"]
    assert "cannot read" not in res.errors[0].message and "parser bug" in res.errors[0].message


def test_zip_member_with_an_empty_name_is_a_finding_and_still_scanned(tmp_path: Path) -> None:
    buf = io.BytesIO()                          # found by benchmarks/supply_fuzz.py (zipfile's is_dir fails)
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(""), RCE_P0)
    (tmp_path / "m.zip").write_bytes(buf.getvalue())
    res = scan_paths([tmp_path / "m.zip"])
    assert not res.errors, res.errors
    assert {f.title for f in res.findings} >= {"Member with an empty name",
                                               "Imports os.system: code-execution primitive"}
