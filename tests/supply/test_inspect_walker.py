"""The byte-level opcode walker agrees with ``pickletools.genops`` and keeps its bounds.

The walker decodes binary arguments in place instead of through pickletools' readers (speed);
these tests check, on every stream of the generated corpus (benign files made by torch, sklearn,
joblib, numpy; malicious ones written opcode by opcode), that it sees exactly the opcodes and
offsets the reference tokenizer sees.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from corpus import SG, SU, G, U, call, p2

from bastion.supply import InspectConfig, pickle_scan, scan_paths
from bastion.supply.context import LimitExceeded, Malformed, ScanContext


def _reference(buf: bytes, start: int) -> tuple[list[tuple[int, str]], bool]:
    """(offset, name) of each opcode genops reads from ``start``; True when it reached STOP."""
    f = io.BytesIO(buf)
    f.seek(start)
    out: list[tuple[int, str]] = []
    try:
        for op, _arg, pos in pickletools.genops(f):
            out.append((pos, op.name))
    except Exception:   # noqa: BLE001 - any tokenizer failure ends the reference sequence
        return out, False
    return out, bool(out) and out[-1][1] == "STOP"


def _blobs(root: Path) -> list[tuple[str, bytes]]:
    """Every file, zip member and zlib/gzip content under ``root`` (one level of nesting)."""
    out: list[tuple[str, bytes]] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        data = p.read_bytes()
        out.append((p.name, data))
        if data[:2] == b"PK":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    out += [(f"{p.name}/{i.filename}", zf.read(i)) for i in zf.infolist()
                            if i.file_size < 1 << 20 and not i.flag_bits & 1]
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError):
                pass
        elif data[:1] == b"\x78" or data[:2] == b"\x1f\x8b":
            try:
                out.append((f"{p.name}!", zlib.decompress(data, 47)))
            except zlib.error:
                pass
    return out


def _check_blob(name: str, buf: bytes) -> bool:
    """Walk ``buf``; assert each walked segment is the genops sequence. True if a pickle completed."""
    trace: list[tuple[int, str]] = []
    walker = pickle_scan.PickleWalker(ScanContext(InspectConfig(), Path(name)), trace=trace)
    try:
        walker.walk_stream(buf)
    except (Malformed, LimitExceeded):
        pass
    segments: list[list[tuple[int, str]]] = []
    cur: list[tuple[int, str]] = []
    for pos, op in trace:
        if op == "<raw array>":        # joblib array bytes jumped over: a new segment starts after them
            segments.append(cur)
            cur = []
        else:
            cur.append((pos, op))
            if op == "STOP":
                segments.append(cur)
                cur = []
    segments.append(cur)
    completed = False
    for seg in filter(None, segments):
        ref, stopped = _reference(buf, seg[0][0])
        if seg[-1][1] == "?":          # unknown opcode: genops must fail at that very opcode
            assert not stopped and len(ref) == len(seg) - 1, f"{name}: walker misread before {seg[-1][0]}"
            seg = seg[:-1]
            if not seg:
                continue
        n = min(len(seg), len(ref))
        assert seg[:n] == ref[:n], f"{name}: walker and genops disagree after {seg[0][0]}"
        assert len(seg) - n <= 1, name   # the walker may record one opcode whose argument fails to read
        if seg[-1][1] == "STOP":
            assert stopped and len(ref) == len(seg), name
            completed = True
    return completed


def test_walker_tokenizes_like_pickletools_on_the_whole_corpus(malicious_corpus, benign_corpus) -> None:
    completed = 0
    total = 0
    for root, _ in (malicious_corpus, benign_corpus):
        for name, buf in _blobs(root):
            total += 1
            completed += _check_blob(name, buf)
    # the corpus holds dozens of complete pickles (torch data.pkl, sklearn, joblib, crafted ones)
    assert completed >= 60, (completed, total)


@pytest.mark.parametrize("proto", range(6))
def test_walker_tokenizes_real_pickles_of_every_protocol(proto: int) -> None:
    import numpy as np

    obj = {"s": "é" * 300, "b": b"\x00" * 300, "sb": b"ab", "n": 2**70, "m": -(2**3000), "f": 1.25,
           "i": [-1, 7, 300, 70000, 2**31], "t": (1,), "t2": (1, 2), "t3": (1, 2, 3), "t4": (1, 2, 3, 4),
           "fs": frozenset({1}), "set": {2}, "a": np.arange(3), "ba": bytearray(b"xy"), "none": None, "bool": True}
    assert _check_blob(f"p{proto}", pickle.dumps(obj, protocol=proto))


def test_truncated_arguments_fail_like_pickletools(tmp_path: Path) -> None:
    data = pickle.dumps({"key": "v" * 1000, "b": b"z" * 70000}, protocol=4)
    for cut in (3, 12, 15, 40, 1020, len(data) - 2):
        with pytest.raises(Malformed):
            pickle_scan.PickleWalker(ScanContext(InspectConfig(), tmp_path)).walk_stream(data[:cut])
        _check_blob(f"cut{cut}", data[:cut])


def test_pickle_byte_limit_applies_to_inline_and_text_arguments(tmp_path: Path) -> None:
    p = tmp_path / "m.pkl"
    cfg = InspectConfig.from_dict({"limits": {"max_pickle_bytes": 64}})
    for data in (pickle.dumps("x" * 500, protocol=4), pickle.dumps([str(i) * 20 for i in range(10)], protocol=4)):
        p.write_bytes(data)
        res = scan_paths([p], config=cfg)
        assert [f.metrics.get("limit") for f in res.findings] == ["max_pickle_bytes"], data[:20]


def test_large_streams_are_memory_mapped_with_the_same_findings(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # protocol 0 (text arguments read through the mapped file) then non-pickle bytes, as in legacy torch files
    rce = call(G("os", "system"), U("id"))
    data = p2(b"}" + b"0")[:-1] + rce + b"." + b"\x00" * 5000
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    in_memory = [(f.rule_id, f.offset, f.title) for f in scan_paths([p]).findings]
    monkeypatch.setattr(pickle_scan, "_IN_MEMORY", 1024)
    mapped = [(f.rule_id, f.offset, f.title) for f in scan_paths([p]).findings]
    assert mapped == in_memory
    assert ("BASTION-SC-001", 4, "Imports os.system: code-execution primitive") in mapped


_SYSTEM = [("os", "system")]


def _str_ops(s: str) -> list[bytes]:
    b = s.encode()
    return [b"\x8c" + bytes([len(b)]) + b, b"X" + struct.pack("<I", len(b)) + b,
            b"\x8d" + struct.pack("<Q", len(b)) + b, b"U" + bytes([len(b)]) + b, b"T" + struct.pack("<i", len(b)) + b]


@pytest.mark.parametrize("form", range(5))
def test_stack_global_names_from_every_string_opcode(tmp_path: Path, form: int) -> None:
    body = _str_ops("os")[form] + _str_ops("system")[form] + b"\x93" + _str_ops("id")[form] + b"\x85R"
    p = tmp_path / "m.pkl"
    p.write_bytes(b"\x80\x04" + body + b".")
    titles = [f.title for f in scan_paths([p]).findings]
    assert "Imports os.system: code-execution primitive" in titles


@pytest.mark.parametrize("form", range(4))
def test_nested_payload_from_every_bytes_opcode(tmp_path: Path, form: int) -> None:
    inner = p2(call(G("os", "system"), U("id")))
    n = len(inner)
    arg = [b"C" + bytes([n]) + inner, b"B" + struct.pack("<I", n) + inner,
           b"\x8e" + struct.pack("<Q", n) + inner, b"\x96" + struct.pack("<Q", n) + inner][form]
    p = tmp_path / "m.pkl"
    p.write_bytes(b"\x80\x05" + SG("pickle", "loads") + arg + b"\x85R.")
    res = scan_paths([p])
    nested = [f for f in res.findings if f.rule_id == "BASTION-SC-001" and "nested@" in (f.metrics.get("member") or "")]
    assert any(f.metrics["global_name"] == "os.system" for f in nested), [f.title for f in res.findings]


@pytest.mark.parametrize("args", [b")", SU("a") + b"\x85", SU("a") + SU("b") + b"\x86",
                                  SU("a") + SU("b") + SU("c") + b"\x87", b"(" + SU("a") + SU("b") + SU("c") + SU("d") + b"t",
                                  b"]" + SU("a") + b"a" + b"\x85", b"}" + SU("k") + SU("v") + b"s\x85"])
def test_calls_see_their_callable_whatever_builds_the_arguments(tmp_path: Path, args: bytes) -> None:
    p = tmp_path / "m.pkl"
    p.write_bytes(b"\x80\x04" + SG("mypkg", "f") + args + b"R.")
    res = scan_paths([p])
    assert [(f.rule_id, f.title) for f in res.findings] == [
        ("BASTION-SC-002", "Loading calls mypkg.f, which is not on the allow-list")]


_DESCRS = ["<f8", "|f8", ">f4", "=i8", "|b1", "<c16", "|u1", "<u2", "f2", "i4", "<U5", "|S10", "|V64", "V1",
           "U99999999", "<M8[ns]", ">m8[D]", "M8", "|O", "O", "O8", "<f16", "?", "S0", "U0", "<M8[10s]",
           "<M8[xs]", "float64", "V064", "<i3", "|O4", "d", "", "<", "S", "U123456789", "<c32", "V16 "]


@pytest.mark.parametrize("descr", _DESCRS)
def test_dtype_info_is_numpys_answer(descr: str) -> None:
    import numpy as np

    from bastion.supply.dtypes import dtype_info

    try:
        dt = np.dtype(descr)
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            dtype_info(descr)
        return
    assert dtype_info(descr) == (dt.itemsize, dt.hasobject)


def test_default_allow_list_reader_matches_pyyaml() -> None:
    import yaml

    from bastion.supply import allowlist

    from importlib import resources

    for name in allowlist._DEFAULT_FILES:
        text = resources.files("bastion.supply").joinpath(name).read_text("utf-8")
        assert allowlist.parse_plain_lists(text) == yaml.safe_load(text), name
    for other in ("allow:\n  - yes\n", "allow: [a.b]\n", "allow:\n  a: b\n", "allow:\n  - a\nallow:\n  - b\n",
                  "allow:\n", "allow:\n  - 'a'\n", "allow:\n  - \"a\\x41\"\n", "  - a\n"):
        assert allowlist.parse_plain_lists(other) is None, other   # left to PyYAML
    assert allowlist.parse_plain_lists('# c\nallow:  # c\n  - a.B_c  # c\n  - "m:*x"\n') == \
        yaml.safe_load('# c\nallow:  # c\n  - a.B_c  # c\n  - "m:*x"\n')


def test_joblib_void_dtype_whose_state_changes_the_item_size_is_flagged(tmp_path: Path) -> None:
    import io as _io

    import joblib
    import numpy as np

    buf = _io.BytesIO()
    joblib.dump(np.zeros(3, dtype=[("a", "f8"), ("b", "i8")]), buf)
    data = buf.getvalue()
    p = tmp_path / "a.joblib"
    p.write_bytes(data)
    assert not scan_paths([p]).failed()
    state = b"uK\x10K\x01K\x10t"        # ..., fields}, elsize 16, alignment 1, flags 16) of the V16 dtype
    assert data.count(state) == 1
    p.write_bytes(data.replace(state, b"uK\x18K\x01K\x10t"))   # numpy would size items 24, not 16
    res = scan_paths([p])
    assert res.failed() and any(f.rule_id == "BASTION-SC-050" for f in res.findings)
