"""Archive, ONNX, safetensors, NumPy and link handling; errors per file; bounded resources."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from bastion.core.results import Severity
from bastion.supply import InspectConfig, scan_paths
from corpus import RCE_P0, _onnx_model_bytes, _safetensors, _zip, p2


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
    assert res.worst() is Severity.high and not res.errors
