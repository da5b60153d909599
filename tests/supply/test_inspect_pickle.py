"""Symbolic pickle walk: opcodes, offsets, memo tricks, allow-list policy and configuration."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest

from bastion.core.results import Severity
from bastion.errors import PolicyError
from bastion.supply import InspectConfig, scan_paths
from corpus import BY, G, SG, SU, U, call, p2, p4


def _scan(tmp_path: Path, data: bytes, config: InspectConfig | None = None):
    p = tmp_path / "m.bin"
    p.write_bytes(data)
    return scan_paths([p], config=config)


def test_offset_points_at_the_global_opcode(tmp_path: Path) -> None:
    prefix = p2(b"}")[:-1] + b"0"  # PROTO 2, EMPTY_DICT, POP
    data = prefix + call(G("os", "system"), U("id")) + b"."
    res = _scan(tmp_path, data)
    (f,) = [f for f in res.findings if f.rule_id == "BASTION-SC-001"]
    assert f.offset == len(prefix)
    assert data[f.offset:f.offset + 1] == b"c"
    assert f.metrics["global_name"] == "os.system"
    assert f.atlas and f.owasp == ["ML06"]


@pytest.mark.parametrize("proto", range(6))
def test_real_pickles_of_allowed_objects_are_clean(tmp_path: Path, proto: int) -> None:
    import numpy as np

    obj = {"a": OrderedDict(x=1), "b": np.arange(4), "c": {1, 2}, "d": b"\x00" * 3, "e": (1.5, None, True)}
    res = _scan(tmp_path, pickle.dumps(obj, protocol=proto))
    assert res.findings == []


def test_memo_indirection_is_resolved(tmp_path: Path) -> None:
    body = SU("subprocess") + b"\x94" + b"0" + SU("run") + b"\x94" + b"0" + b"h\x00h\x01\x93" + b"(" + SU("x") + b"tR"
    res = _scan(tmp_path, p4(body))
    assert any(f.metrics.get("global_name") == "subprocess.run" and f.severity is Severity.critical
               for f in res.findings)


def test_unknown_class_called_is_high_and_only_referenced_is_medium(tmp_path: Path) -> None:
    called = _scan(tmp_path, p4(call(SG("acme.models", "Net"))))
    assert called.worst() is Severity.high
    referenced = _scan(tmp_path, p4(b"]" + SG("acme.models", "Net") + b"a"))
    assert referenced.worst() is Severity.medium


def test_nested_payload_is_analysed(tmp_path: Path) -> None:
    inner = p4(call(SG("acme.hidden", "Payload")))
    res = _scan(tmp_path, p4(call(SG("pickle", "loads"), BY(inner))))
    names = {f.metrics.get("global_name") for f in res.findings}
    assert "acme.hidden.Payload" in names
    nested = [f for f in res.findings if f.metrics.get("global_name") == "acme.hidden.Payload"]
    assert nested[0].metrics["member"].startswith("nested@")


def test_several_pickles_in_one_stream(tmp_path: Path) -> None:
    res = _scan(tmp_path, p2(b"}") + p2(b"]") + p4(call(SG("acme", "Thing"))))
    assert any(f.metrics.get("global_name") == "acme.Thing" for f in res.findings)


def test_user_allow_list_yaml_and_toml(tmp_path: Path) -> None:
    data = p4(call(SG("acme.models", "Net")))
    y = tmp_path / "cfg.yaml"
    y.write_text("allow: [acme.models.Net]\nlimits: {max_depth: 3}\n")
    assert _scan(tmp_path, data, InspectConfig.from_file(y)).findings == []
    t = tmp_path / "cfg.toml"
    t.write_text('allow_patterns = ["acme.*:[A-Z]*"]\n')
    assert _scan(tmp_path, data, InspectConfig.from_file(t)).findings == []


def test_deny_wins_over_user_allow(tmp_path: Path) -> None:
    cfg = InspectConfig.from_dict({"allow": ["os.system"], "allow_patterns": ["*:*"]})
    res = _scan(tmp_path, p2(call(G("os", "system"), U("id"))), cfg)
    assert res.worst() is Severity.critical


def test_bad_config_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="max_depth"):
        InspectConfig.from_dict({"limits": {"max_depth": -1}})
    with pytest.raises(PolicyError, match="unknown keys"):
        InspectConfig.from_dict({"alow": ["x"]})


def test_memo_bomb_hits_the_limit(tmp_path: Path) -> None:
    body = b"N" + b"".join(b"r" + i.to_bytes(4, "little") for i in range(5000))
    res = _scan(tmp_path, p2(body), InspectConfig.from_dict({"limits": {"max_memo": 1000}}))
    assert [f.metrics["limit"] for f in res.findings if f.rule_id == "BASTION-SC-008"] == ["max_memo"]


def test_opcode_limit_and_time_limit(tmp_path: Path) -> None:
    data = p2(b"N" + b"0N" * 100_000)
    res = _scan(tmp_path, data, InspectConfig.from_dict({"limits": {"max_opcodes": 1000}}))
    assert res.failed() and res.findings[0].metrics["limit"] == "max_opcodes"
    res = _scan(tmp_path, data, InspectConfig.from_dict({"limits": {"max_file_seconds": 1e-9}}))
    assert res.findings[0].metrics["limit"] == "max_file_seconds"


def test_truncated_benign_pickle_is_medium(tmp_path: Path) -> None:
    data = pickle.dumps({"a": list(range(50))}, protocol=4)
    res = _scan(tmp_path, data[: len(data) // 2])
    assert res.worst() is Severity.medium
    assert res.findings[0].rule_id == "BASTION-SC-007"
    assert not res.errors


def _frame(n: int) -> bytes:
    return b"\x95" + n.to_bytes(8, "little")


def test_opcode_crossing_its_frame_end_is_flagged(tmp_path: Path) -> None:
    hidden = SG("os", "system") + SU("id") + b"\x85R0"     # what a frame-trusting unpickler would run
    data = b"\x80\x05" + _frame(3) + BY(hidden) + b"0}."  # the frame ends inside BINBYTES' length field
    res = _scan(tmp_path, data)
    (f,) = res.findings
    assert f.severity is Severity.high and "crosses the end of its FRAME" in f.title and f.offset == 11


def test_frame_starting_inside_another_frame_is_flagged(tmp_path: Path) -> None:
    data = b"\x80\x05" + _frame(14) + b"N0" + _frame(3) + b"}0N."
    res = _scan(tmp_path, data)
    assert [f.title for f in res.findings] == ["Pickle FRAME starts before the previous frame ends"]


def test_frame_longer_than_the_data_is_not_analysed(tmp_path: Path) -> None:
    res = _scan(tmp_path, b"\x80\x05" + _frame(2**60) + b"}.")
    assert [e.kind for e in res.errors] == ["not-analysed"] and "declares 1152921504606846976" in res.errors[0].message
    assert res.exit_code(Severity.critical) == 2


@pytest.mark.parametrize("proto", [4, 5])
def test_real_framed_pickles_are_clean(tmp_path: Path, proto: int) -> None:
    obj = {"big": b"x" * 200_000, "s": "y" * 70_000, "l": list(range(10_000))}   # frames and large writes
    res = _scan(tmp_path, pickle.dumps(obj, protocol=proto))
    assert res.findings == [] and res.complete
