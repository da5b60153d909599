"""Model files named in a spec are scanned before any loader opens them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.campaign.preflight import model_file, scan_model_file
from bastion.campaign.runner import scan
from bastion.errors import UnsafeFileError


def _evil_pickle(marker: Path) -> bytes:
    """A protocol-0 pickle calling os.system('touch MARKER') — written as opcodes, never loaded here."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


@pytest.mark.parametrize("spec, expected", [
    ("torchscript:m.pt", "m.pt"), ("onnx:dir/m.onnx", "dir/m.onnx"), ("sklearn:m.skops", "m.skops"),
    ("m.onnx", "m.onnx"), ("demo:digits-cnn", None), ("python:pkg.mod:f", None), ("http:http://h/p", None),
])
def test_model_file_of_spec(spec: str, expected: str | None) -> None:
    got = model_file(spec)
    assert (None if got is None else str(got)) == expected


def test_malicious_file_is_refused_before_loading(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    evil = tmp_path / "model.pt"
    evil.write_bytes(_evil_pickle(marker))
    with pytest.raises(UnsafeFileError, match="refusing to load"):
        scan_model_file(f"torchscript:{evil}")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((4, 3)).astype(np.float32), y=[0, 1, 0, 1])
    policy = {"version": 1, "target": {"model": f"torchscript:{evil}"}, "data": {"source": f"npz:{tmp_path / 'd.npz'}"},
              "checks": [{"name": "fgsm", "kind": "evasion", "attack": "fgsm"}],
              "output": {"dir": str(tmp_path / "out")}}
    with pytest.raises(UnsafeFileError):
        scan(policy)
    r = subprocess.run([sys.executable, "-m", "bastion", "attack", "--target", f"torchscript:{evil}",
                        "--data", f"npz:{tmp_path / 'd.npz'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "refusing to load" in r.stderr
    assert not marker.exists(), "the malicious payload ran"


def test_benign_files_pass(tmp_path: Path) -> None:
    import skops.io
    from sklearn.linear_model import LogisticRegression

    ts = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2))), str(ts))
    scan_model_file(f"torchscript:{ts}")
    est = LogisticRegression().fit(np.random.default_rng(0).random((20, 3)), [0, 1] * 10)
    sk = tmp_path / "m.skops"
    skops.io.dump(est, sk)
    scan_model_file(f"sklearn:{sk}")
