"""The model-spec scheme table, bastion.load_target's pre-load scan, and the Target contract's
declared capabilities (label-only, remote, white-box)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import bastion
from bastion.core.schemes import MODEL_SCHEMES, model_file, parse_model_spec, resolve_model_spec
from bastion.core.spec import InputSpec
from bastion.core.targets.base import Capabilities, Target, TargetUnavailable
from bastion.errors import TargetError, UnsafeFileError, UsageError
from http_servers import QuietHandler

SRC = Path(bastion.__file__).parent


@pytest.mark.parametrize(("spec", "scheme", "rest"), [
    ("onnx:m.onnx", "onnx", "m.onnx"), ("m.skops", "sklearn", "m.skops"), ("net.pt", "torchscript", "net.pt"),
    ("https://host:8080/predict", "http", "https://host:8080/predict"), ("http://h/p", "http", "http://h/p"),
    ("http:https://h/p", "http", "https://h/p"), ("python:pkg.mod:make", "python", "pkg.mod:make"),
    ("C:/models/m.onnx", "onnx", "C:/models/m.onnx"),
])
def test_one_table_parses_every_spec(spec: str, scheme: str, rest: str) -> None:
    parsed, got = parse_model_spec(spec)
    assert parsed is MODEL_SCHEMES[scheme] and got == rest


def test_unknown_or_unrecognised_specs_name_the_schemes() -> None:
    with pytest.raises(UsageError, match="unknown model scheme 'tf'.*onnx"):
        parse_model_spec("tf:saved")
    with pytest.raises(UsageError, match="cannot tell what kind of model") as err:
        parse_model_spec("model.bin")
    assert "onnx:model.onnx" in str(err.value)


def test_model_file_and_path_resolution_follow_the_table(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    assert model_file("onnx:m.onnx") == Path("m.onnx") and model_file("https://h/p") is None
    assert model_file("demo:digits-cnn") is None and model_file("python:a:b") is None
    assert resolve_model_spec("onnx:m.onnx", tmp_path) == f"onnx:{tmp_path / 'm.onnx'}"
    assert resolve_model_spec("m.onnx", tmp_path) == str(tmp_path / "m.onnx")
    assert resolve_model_spec("https://h/p", tmp_path) == "https://h/p"
    assert resolve_model_spec("python:pkg:f", tmp_path) == "python:pkg:f"


def test_a_directory_given_as_a_model_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "deep" / "deeper").mkdir(parents=True)
    with pytest.raises(TargetError, match="is a directory, not a model file"):
        bastion.load_target(f"onnx:{tmp_path / 'deep'}")


def test_load_target_from_python_scans_the_file_before_opening_it(tmp_path: Path) -> None:
    """A TorchScript file holding a pickle that calls os.system: the Python API refuses it like
    the CLI does (before, bastion.load_target handed it to torch.jit.load unscanned)."""
    import zipfile

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (__import__("os").system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(UnsafeFileError, match="refusing to load the model"):
        bastion.load_target(f"torchscript:{path}", input_shape=(4,))


class _Labels(QuietHandler):
    def do_POST(self) -> None:  # noqa: N802
        import json

        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"])
        self._send(200, json.dumps({"labels": [0] * n}), {"Content-Type": "application/json"})


def test_a_bare_url_is_an_http_target_that_declares_its_capabilities() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Labels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = bastion.load_target(f"http://127.0.0.1:{server.server_port}/predict", classes=[0, 1],
                                     input_shape=(2,), bounds=(0.0, 1.0), label_path="labels")
        assert target.capabilities == Capabilities(white_box=False, label_only=True, remote=True)
        assert target.predict(np.zeros((3, 2), np.float32)).tolist() == [0, 0, 0]
    finally:
        server.shutdown()


class _FlakyRemote(Target):
    """A remote target of a third party (not bastion's HTTP adapter) whose service fails once,
    mid-attack."""

    remote = True

    def __init__(self, fail_at_call: int) -> None:
        super().__init__([0, 1], InputSpec(shape=(2,), lower=0.0, upper=1.0), name="flaky")
        self.fail_at_call, self.calls = fail_at_call, 0

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise TargetUnavailable("the service went away")
        p = np.clip(x[:, :1], 0.0, 1.0)
        return np.hstack([1 - p, p])


def test_blackbox_attacks_stop_on_any_target_that_declares_a_failure() -> None:
    from bastion.attacks import Square

    x = np.full((6, 2), 0.2, np.float32)
    res = Square(eps=0.1, max_queries=500, batch_size=3).run(_FlakyRemote(fail_at_call=5), x, np.zeros(6, int))
    assert not res.complete and "went away" in (res.reason or "")


def test_attacks_import_no_target_adapter() -> None:
    """Attacks meet targets through the contract (core.targets.base), never an adapter module."""
    offenders = []
    for path in (SRC / "attacks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bastion.core.targets.") \
                    and node.module not in ("bastion.core.targets.base", "bastion.core.targets.torch_target"):
                offenders.append(f"{path.name}: {node.module}")
    assert not offenders, offenders


def test_a_torch_target_leaves_the_callers_module_as_it_was() -> None:
    torch = pytest.importorskip("torch")
    from bastion.attacks import PGD
    from bastion.core.targets.torch_target import TorchTarget

    module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    module.train()
    target = TorchTarget(module, InputSpec(shape=(3,), lower=0.0, upper=1.0))
    x = np.random.default_rng(0).random((8, 3)).astype(np.float32)
    PGD(eps=0.1, steps=3).run(target, x, target.predict(x))
    assert module.training and all(m.training for m in module.modules())
    assert all(p.requires_grad and p.grad is None for p in module.parameters())
    assert not target.module.training and target.capabilities.white_box


def test_the_pre_load_scan_refuses_a_directory_instead_of_walking_it(tmp_path: Path) -> None:
    """Before, ``bastion scan``'s pre-load scan walked the directory recursively (a home folder: it hung)."""
    from bastion.campaign.preflight import scan_model_file

    (tmp_path / "models" / "sub").mkdir(parents=True)
    with pytest.raises(TargetError, match="models is a directory, not a model file"):
        scan_model_file(f"onnx:{tmp_path / 'models'}")
