"""Archive, ONNX, safetensors, NumPy and link handling; errors per file; bounded resources."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from corpus import RCE_P0, _onnx_model_bytes, _safetensors, _zip, p2

from bastion.core.results import Severity
from bastion.supply import InspectConfig, scan_paths


def test_unreadable_entry_is_an_error_and_scan_goes_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "evil.pkl").write_bytes(RCE_P0)
    res = scan_paths([tmp_path, tmp_path / "missing.pt"])
    assert {Path(e.path).name for e in res.errors} == {"pipe", "missing.pt"}
    assert res.failed() and res.exit_code() == 1
    assert scan_paths([tmp_path / "pipe"]).exit_code() == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    p.write_bytes(p2(b"}"))
    p.chmod(0)
    res = scan_paths([p])
    assert res.errors and res.exit_code() == 2


def test_zip_bomb_ratio_and_member_limits(tmp_path: Path) -> None:
    p = tmp_path / "b.zip"
    p.write_bytes(_zip([("w", b"\x00" * (4 * 1024**2))]))
    res = scan_paths([p])
    assert any(f.metrics.get("limit") == "max_ratio" for f in res.findings)
    res = scan_paths([p], config=InspectConfig.from_dict({"limits": {"max_ratio": 1e9, "max_member_bytes": 1024}}))
    assert any(f.rule_id == "BASTION-SC-008" for f in res.findings)


def test_deep_nesting_limit(tmp_path: Path) -> None:
    data = p2(b"}")
    for i in range(4):
        data = _zip([(f"l{i}.zip", data)])
    (tmp_path / "n.zip").write_bytes(data)
    assert not scan_paths([tmp_path / "n.zip"]).findings
    res = scan_paths([tmp_path / "n.zip"], config=InspectConfig.from_dict({"limits": {"max_depth": 2}}))
    assert res.findings[0].metrics["limit"] == "max_depth"


def test_zip_member_offsets_and_members_are_reported(tmp_path: Path) -> None:
    p = tmp_path / "m.zip"
    p.write_bytes(_zip([("ok.txt", b"hello"), ("dir/evil.pkl", RCE_P0)]))
    res = scan_paths([p])
    f = next(f for f in res.findings if f.rule_id == "BASTION-SC-001")
    assert f.metrics["member"] == "dir/evil.pkl" and f.offset == 0


def test_safetensors_valid_and_invalid(tmp_path: Path) -> None:
    good = _safetensors({"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\x00" * 8)
    (tmp_path / "g.safetensors").write_bytes(good)
    assert scan_paths([tmp_path / "g.safetensors"]).findings == []
    gap = _safetensors({"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}}, b"\x00" * 8)
    (tmp_path / "b.safetensors").write_bytes(gap)
    res = scan_paths([tmp_path / "b.safetensors"])
    assert any("gap" in f.title for f in res.findings) and res.worst() is Severity.high
    dup = b'{"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}, "a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}'
    (tmp_path / "d.safetensors").write_bytes(len(dup).to_bytes(8, "little") + dup + b"\x00\x00")
    assert "duplicate" in scan_paths([tmp_path / "d.safetensors"]).findings[0].title


def test_onnx_custom_domain_and_hard_link(tmp_path: Path) -> None:
    (tmp_path / "c.onnx").write_bytes(_onnx_model_bytes(None, domain="com.acme"))
    res = scan_paths([tmp_path / "c.onnx"])
    assert [f.rule_id for f in res.findings] == ["BASTION-SC-031"] and res.worst() is Severity.medium
    d = tmp_path / "m"
    d.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\x00" * 8)
    os.link(tmp_path / "outside.bin", d / "w.bin")
    (d / "model.onnx").write_bytes(_onnx_model_bytes("w.bin"))
    res = scan_paths([d / "model.onnx"])
    assert any(f.rule_id == "BASTION-SC-060" and f.severity is Severity.high for f in res.findings)


def test_symlinks_in_directories(tmp_path: Path) -> None:
    (tmp_path / "evil.pkl").write_bytes(RCE_P0)
    d = tmp_path / "model"
    d.mkdir()
    os.symlink(tmp_path / "evil.pkl", d / "pytorch_model.bin")
    res = scan_paths([d])
    rules = {f.rule_id for f in res.findings}
    assert {"BASTION-SC-060", "BASTION-SC-001"} <= rules


def test_npy_trailing_and_truncated(tmp_path: Path) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    (tmp_path / "t.npy").write_bytes(buf.getvalue()[:-8])
    assert "truncated" in scan_paths([tmp_path / "t.npy"]).findings[0].title


def test_torch_checkpoint_storage_is_not_read(tmp_path: Path) -> None:
    """A checkpoint with a large storage scans by reading only its pickle (no member read in full)."""
    import torch

    p = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(8 * 1024**2 // 4)}, p)     # 8 MiB storage, stored uncompressed
    cfg = InspectConfig.from_dict({"limits": {"max_total_unpacked": 1024**2}})   # far below the storage size
    res = scan_paths([p], config=cfg)
    assert res.findings == [] and not res.errors


def test_zip_without_central_directory(tmp_path: Path) -> None:
    data = _zip([("a.pkl", p2(b"}"))])
    (tmp_path / "x.zip").write_bytes(data[: data.rindex(b"PK\x01\x02")])
    res = scan_paths([tmp_path / "x.zip"])
    assert res.worst() is Severity.high
    assert [e.kind for e in res.errors] == ["not-analysed"] and res.exit_code(Severity.critical) == 2


# ---------------------------------------------------------------- 7z (py7zr) and HDF5 (h5py), optional


def _seven(members: list[tuple[str, bytes]], **kw: object) -> bytes:
    pytest.importorskip("py7zr")
    from corpus import sevenzip

    return sevenzip(members, **kw)


def test_7z_members_are_scanned_in_memory_with_their_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "m.7z"
    p.write_bytes(_seven([("ok.txt", b"hello"), ("dir/evil.pkl", RCE_P0)]))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    res = scan_paths([p])
    f = next(f for f in res.findings if f.rule_id == "BASTION-SC-001")
    assert f.metrics["member"] == "dir/evil.pkl" and f.severity is Severity.critical
    assert res.formats[str(p)][:1] == ["7z"] and "pickle" in res.formats[str(p)]
    assert list(work.iterdir()) == []          # nothing extracted to disk


def test_7z_limits_member_size_total_depth_members(tmp_path: Path) -> None:
    p = tmp_path / "big.7z"
    p.write_bytes(_seven([("a.bin", os.urandom(4096)), ("evil.pkl", RCE_P0)]))
    res = scan_paths([p], config=InspectConfig.from_dict({"limits": {"max_member_bytes": 1024}}))
    assert any(f.metrics.get("limit") == "max_member_bytes" for f in res.findings)
    assert any(f.rule_id == "BASTION-SC-001" for f in res.findings)     # the small member is still scanned
    res = scan_paths([p], config=InspectConfig.from_dict({"limits": {"max_total_unpacked": 2048}}))
    assert [f.metrics.get("limit") for f in res.findings if f.rule_id == "BASTION-SC-008"] == ["max_total_unpacked"]
    res = scan_paths([p], config=InspectConfig.from_dict({"limits": {"max_members": 1}}))
    assert res.findings[0].metrics["limit"] == "max_members"
    nested = p2(b"}")
    for i in range(4):
        nested = _seven([(f"l{i}.7z", nested)])
    (tmp_path / "n.7z").write_bytes(nested)
    assert not scan_paths([tmp_path / "n.7z"]).findings
    res = scan_paths([tmp_path / "n.7z"], config=InspectConfig.from_dict({"limits": {"max_depth": 2}}))
    assert res.findings[0].metrics["limit"] == "max_depth"


def test_7z_bomb_ratio_is_judged_per_solid_block(tmp_path: Path) -> None:
    p = tmp_path / "b.7z"
    p.write_bytes(_seven([("w.bin", b"\x00" * (4 * 1024**2))]))
    res = scan_paths([p])
    bomb = [f for f in res.findings if f.metrics.get("limit") == "max_ratio"]
    assert bomb and bomb[0].metrics["ratio"] > 200 and res.worst() is Severity.high
    res = scan_paths([p], config=InspectConfig.from_dict({"limits": {"max_ratio": 1e9}}))
    assert res.findings == []                  # under the ratio limit the zeros are extracted and scanned


def test_7z_corrupt_stream_header_and_trailing_bytes(tmp_path: Path) -> None:
    good = _seven([("a.pkl", p2(b"}")), ("b.txt", b"x" * 2000)])
    (tmp_path / "ok.7z").write_bytes(good)
    assert scan_paths([tmp_path / "ok.7z"]).findings == []
    (tmp_path / "tail.7z").write_bytes(good + b"\x00" * 10)
    res = scan_paths([tmp_path / "tail.7z"])
    assert [(f.severity, f.offset) for f in res.findings] == [(Severity.medium, len(good))]
    bad = bytearray(good)
    bad[40] ^= 0xFF                            # inside the LZMA2 packed stream
    (tmp_path / "packed.7z").write_bytes(bytes(bad))
    res = scan_paths([tmp_path / "packed.7z"])
    assert res.worst() is Severity.high and {e.kind for e in res.errors} == {"not-analysed"}
    bad = bytearray(good)
    bad[-3] ^= 0xFF                            # inside the next header: its CRC no longer matches
    (tmp_path / "hdr.7z").write_bytes(bytes(bad))
    res = scan_paths([tmp_path / "hdr.7z"])
    assert res.findings[0].title.startswith("Broken 7z archive") and res.worst() is Severity.high


def test_7z_encrypted_is_high_and_plain_members_still_scanned(tmp_path: Path) -> None:
    (tmp_path / "e.7z").write_bytes(_seven([("a.pkl", p2(b"}"))], password="pw"))
    res = scan_paths([tmp_path / "e.7z"])
    assert [(f.rule_id, f.severity, f.metrics["encrypted"]) for f in res.findings] == [
        ("BASTION-SC-010", Severity.high, "content")]


def test_7z_without_py7zr_plain_archives_are_read_and_others_not_analysed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LZMA2/LZMA/stored archives (with BCJ or Delta) are read on the stdlib, encryption is recognised;
    other codecs need py7zr."""
    import py7zr

    plain = {"lzma2": _seven([("evil.pkl", RCE_P0)]),
             "lzma": _seven([("evil.pkl", RCE_P0)], filters=[{"id": py7zr.FILTER_LZMA}]),
             "stored": _seven([("evil.pkl", RCE_P0)], filters=[{"id": py7zr.FILTER_COPY}]),
             "delta": _seven([("evil.pkl", RCE_P0)], filters=[{"id": py7zr.FILTER_DELTA}, {"id": py7zr.FILTER_LZMA2}]),
             "solid": _seven([("a.txt", b"hello\n"), ("w/evil.pkl", RCE_P0), ("b.pkl", p2(b"}"))])}
    other = _seven([("evil.pkl", RCE_P0)], filters=[{"id": py7zr.FILTER_BZIP2}])
    encrypted = {"content": _seven([("evil.pkl", RCE_P0)], password="pw"),
                 "header": _seven([("evil.pkl", RCE_P0)], password="pw", header_encryption=True)}
    monkeypatch.setitem(__import__("sys").modules, "py7zr", None)   # import py7zr -> ImportError
    for what, data in encrypted.items():     # recognised without py7zr, reported as with it
        (tmp_path / f"{what}.7z").write_bytes(data)
        res = scan_paths([tmp_path / f"{what}.7z"])
        assert [(f.rule_id, f.severity, f.metrics["encrypted"]) for f in res.findings] == [
            ("BASTION-SC-010", Severity.high, what)]
        assert [e.kind for e in res.errors] == ["not-analysed"]
    for name, data in plain.items():
        (tmp_path / f"{name}.7z").write_bytes(data)
        res = scan_paths([tmp_path / f"{name}.7z"])
        assert [(f.rule_id, f.metrics.get("member")) for f in res.findings] == \
            [("BASTION-SC-001", "w/evil.pkl" if name == "solid" else "evil.pkl")], name
        assert res.complete, name
    (tmp_path / "x.7z").write_bytes(other)
    res = scan_paths([tmp_path / "x.7z"])
    assert [(f.rule_id, f.severity) for f in res.findings] == [("BASTION-SC-050", Severity.medium)]
    assert [e.kind for e in res.errors] == ["not-analysed"] and res.exit_code() == 2   # never clean


def test_7z_plain_reader_flags_a_bad_crc_and_a_corrupt_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import py7zr

    stored = bytearray(_seven([("data.pkl", RCE_P0), ("b.pkl", p2(b"}"))], filters=[{"id": py7zr.FILTER_COPY}]))
    at = bytes(stored).index(b"system")
    stored[at:at + 6] = b"sysTem"
    packed = bytearray(_seven([("a.pkl", p2(b"}") * 50), ("evil.pkl", RCE_P0)]))
    packed[40:48] = b"\xff" * 8                          # inside the LZMA2 stream, header CRCs intact
    monkeypatch.setitem(__import__("sys").modules, "py7zr", None)
    (tmp_path / "crc.7z").write_bytes(bytes(stored))
    res = scan_paths([tmp_path / "crc.7z"])
    assert any(f.title == "CRC-32 mismatch in member 'data.pkl'" for f in res.findings)
    assert any(f.rule_id == "BASTION-SC-001" or f.rule_id == "BASTION-SC-003" for f in res.findings)
    (tmp_path / "bad.7z").write_bytes(bytes(packed))
    res = scan_paths([tmp_path / "bad.7z"])
    assert [f.title for f in res.findings] == ["7z extraction failed (LZMAError: Corrupt input data); 2 member(s) "
                                               "not analysed"]
    assert [e.kind for e in res.errors] == ["not-analysed"] and res.exit_code() == 1


def _h5(tmp_path: Path, name: str, cfg: dict | None, training: dict | None = None,
        links: dict | None = None) -> Path:
    pytest.importorskip("h5py")
    from corpus import keras_h5

    p = tmp_path / name
    keras_h5(p, cfg, training, links)
    return p


def test_hdf5_read_builtin_then_h5py_then_byte_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bastion's own reader first; a file it does not read goes to h5py, and without h5py to a byte search."""
    from bastion.supply.formats import hdf5_reader
    from corpus import _LAMBDA_CFG

    def _lambdas() -> set[str]:
        res = scan_paths([p])
        lam = [f for f in res.findings if f.severity is Severity.critical]
        assert lam and {f.metrics.get("attribute", "model_config") for f in lam} == {"model_config"}
        return {f.metrics["hdf5_reader"] for f in lam}

    p = _h5(tmp_path, "m.h5", _LAMBDA_CFG)
    assert _lambdas() == {"builtin"} and scan_paths([p]).formats[str(p)] == ["keras-h5"]

    def _declines(*args: object, **kwargs: object) -> None:
        raise hdf5_reader.Unsupported("test")

    monkeypatch.setattr(hdf5_reader, "read_hdf5", _declines)
    assert _lambdas() == {"h5py"}
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    assert _lambdas() == {"byte-search"}


def test_hdf5_that_cannot_be_opened_falls_back_to_byte_search(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    from corpus import _LAMBDA_CFG

    fake = b"\x89HDF\r\n\x1a\n" + b"\x00" * 120 + b"model_config\x00" + json.dumps(_LAMBDA_CFG).encode() + b"\x00"
    (tmp_path / "f.h5").write_bytes(fake)
    res = scan_paths([tmp_path / "f.h5"])
    rules = {(f.rule_id, f.severity, f.metrics.get("hdf5_reader")) for f in res.findings}
    assert ("BASTION-SC-007", Severity.medium, "byte-search") in rules
    assert ("BASTION-SC-020", Severity.critical, "byte-search") in rules


def test_hdf5_byte_search_is_linear_in_nested_configs(tmp_path: Path) -> None:
    """The byte search decodes each NUL-free run once, not once per '{"class_name"' inside it: 80,000 nested
    layer configs (3.2 MB) whose outer config does not parse took 11 s (quadratic), now under a second."""
    layers = b'{"class_name": "Dense", "config": {}}, ' * 80_000
    data = (b"\x89HDF\r\n\x1a\n" + bytes(120) + b'{"class_name": "Sequential", "config": {"layers": [' + layers
            + b'{"class_name": "Lambda"}' + bytes(8))
    (tmp_path / "f.h5").write_bytes(data)
    res = scan_paths([tmp_path / "f.h5"], config=InspectConfig(max_file_seconds=5))
    assert sorted((f.rule_id, f.metrics.get("hdf5_reader")) for f in res.findings) == [
        ("BASTION-SC-007", "byte-search"), ("BASTION-SC-020", "byte-search")]      # not SC-008 (time limit)


def test_keras_registered_names(tmp_path: Path) -> None:
    from corpus import _DENSE_CFG

    cfg = json.loads(json.dumps(_DENSE_CFG))
    cfg["config"]["layers"][1]["registered_name"] = "keras_hub>TokenAndPositionEmbedding"   # Keras' own family
    assert not [f for f in scan_paths([_h5(tmp_path, "ok.h5", cfg)]).findings if f.severity.rank >= 2]
    cfg["config"]["layers"][1]["registered_name"] = "acme_layers>Custom"
    res = scan_paths([_h5(tmp_path, "custom.h5", cfg)])
    f = next(f for f in res.findings if f.rule_id == "BASTION-SC-020")
    assert f.severity is Severity.high and "acme_layers>Custom" in f.title
    assert f.metrics["config_path"] == "model_config$.config.layers[1]"


def test_hdf5_links_inside_directory_pass_outside_fail(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    import numpy as np
    from corpus import _DENSE_CFG

    src = tmp_path / "shard.h5"
    with h5py.File(src, "w") as f:
        f["w"] = np.ones(4, dtype="<f4")
    inside = _h5(tmp_path, "in.h5", _DENSE_CFG, links={"ext": h5py.ExternalLink("shard.h5", "/w"),
                                                       "origin": h5py.ExternalLink("${ORIGIN}/shard.h5", "/w")})
    assert scan_paths([inside]).findings == []
    layout = h5py.VirtualLayout(shape=(4,), dtype="<f4")
    layout[:] = h5py.VirtualSource("/tmp/elsewhere.h5", "w", shape=(4,))
    p = _h5(tmp_path, "vds.h5", _DENSE_CFG)
    with h5py.File(p, "a") as f:
        f.create_virtual_dataset("model_weights/v", layout)
    res = scan_paths([p])
    assert [(f.rule_id, f.severity, f.metrics["hdf5_object"]) for f in res.findings] == [
        ("BASTION-SC-030", Severity.critical, "/model_weights/v")]


def _rename_in_7z_header(data: bytes, old: str, new: str) -> bytes:
    """Rename a member in a 7z whose header is not encoded (names are UTF-16LE), fixing both CRCs."""
    import struct
    import zlib

    off, size, _ = struct.unpack_from("<QQI", data, 12)
    hdr = bytearray(data[32 + off: 32 + off + size])
    o, n = old.encode("utf-16-le"), new.encode("utf-16-le")
    i = hdr.index(o)
    hdr[i: i + len(o)] = n
    start = struct.pack("<QQI", off, size, zlib.crc32(hdr))
    return data[:8] + struct.pack("<I", zlib.crc32(start)) + start + data[32: 32 + off] + bytes(hdr)


def test_7z_escaping_member_is_reported_and_the_others_still_scanned(tmp_path: Path) -> None:
    py7zr = pytest.importorskip("py7zr")
    from corpus import SG, SU, call, p4

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.set_encoded_header_mode(False)
        z.writestr(RCE_P0, "xx/evil.pkl")
        z.writestr(p4(call(SG("subprocess", "Popen"), SU("id"))), "ok.pkl")
    (tmp_path / "t.7z").write_bytes(_rename_in_7z_header(buf.getvalue(), "xx/evil", "../evil"))
    res = scan_paths([tmp_path / "t.7z"])
    assert not res.errors
    got = {(f.rule_id, f.metrics.get("member")) for f in res.findings}
    assert ("BASTION-SC-011", None) in got and ("BASTION-SC-001", "ok.pkl") in got
    assert not any(f.metrics.get("member", "").endswith("evil.pkl") for f in res.findings)
