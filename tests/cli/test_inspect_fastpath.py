"""``bastion inspect`` starts without typer, rich or pydantic (bastion.cli.fastpath) and behaves as the typer
command: a guard against a later import that would bring the start-up cost back (issue 7, CLI speed)."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.fastpath import InspectCall, parse
from bastion.cli.main import app

HEAVY = ("torch", "numpy", "pydantic", "typer", "click", "rich", "py7zr", "h5py", "yaml", "onnx", "google.protobuf",
         "psutil", "Cryptodome", "sklearn")
RCE = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."     # PROTO 2, GLOBAL os.system, 'id', TUPLE1, REDUCE, STOP

_RUN = ("import json, sys\nfrom bastion.cli.main import main\nsys.argv = ['bastion', *json.loads(sys.argv[1])]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('\\nMODULES', json.dumps(sorted(sys.modules)), code)\n")


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    """A directory of the everyday formats: pickle (one malicious), safetensors, a zip checkpoint, npy."""
    import numpy as np

    d = tmp_path / "models"
    d.mkdir()
    (d / "clean.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0], "name": "net"}, protocol=4))
    (d / "evil.pkl").write_bytes(RCE)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (d / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    with zipfile.ZipFile(d / "ckpt.pt", "w") as z:
        z.writestr("ckpt/data.pkl", pickle.dumps({"step": 3}, protocol=2))
    np.save(d / "a.npy", np.arange(3, dtype=np.float32))
    return d


def _run(*args: str) -> tuple[int, str, set[str]]:
    out = subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], capture_output=True, text=True,
                         timeout=120).stdout
    text, _, tail = out.rpartition("\nMODULES ")
    mods, code = tail.rsplit(" ", 1)
    return int(code), text, set(json.loads(mods))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or any(m.startswith(h + ".") for h in HEAVY))


def test_inspect_imports_no_heavy_library(models: Path) -> None:
    code, text, modules = _run("inspect", str(models))
    assert code == 1 and "os.system" in text and "5 file(s) scanned" in text
    assert _heavy(modules) == []
    assert "bastion.supply.inspect" in modules       # the check can fail: the scanner did run in this process


def test_inspect_reads_keras_hdf5_without_h5py(models: Path) -> None:
    """Legacy Keras .h5 files are read by bastion's own HDF5 reader: no h5py, NumPy or worker process."""
    pytest.importorskip("h5py")
    sys.path.insert(0, str(Path(__file__).parents[1] / "supply"))
    from corpus import _LAMBDA_CFG, keras_h5

    keras_h5(models / "lambda.h5", _LAMBDA_CFG)
    (models / "fake.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(120))     # no HDF5 library opens it
    code, text, modules = _run("inspect", str(models))
    assert code == 1 and "Lambda" in text and "7 file(s) scanned" in text and "cannot be opened" in text
    assert _heavy(modules) == [] and "bastion.supply.formats.hdf5_reader" in modules
    assert "bastion.supply.isolate" not in modules        # the h5py worker was never started


def test_the_guard_sees_a_heavy_import(models: Path) -> None:
    """A JSON report needs the pydantic result models: the same check flags them."""
    code, text, modules = _run("inspect", str(models), "--format", "json")
    assert code == 1 and json.loads(text)["verdict"] == "fail"
    assert "pydantic" in _heavy(modules) and "typer" not in _heavy(modules)


@pytest.mark.parametrize("args", [["--format", "json"], ["-f", "sarif", "--fail-on", "critical"], [],
                                  ["--fail-on=medium", "-o", "{out}"]])
def test_fast_path_prints_what_the_typer_command_prints(models: Path, tmp_path: Path, args: list[str]) -> None:
    args = [a.replace("{out}", str(tmp_path / "r.txt")) for a in args]
    code, fast, _ = _run("inspect", str(models), *args)
    fast_file = (tmp_path / "r.txt").read_text() if "-o" in args else ""
    slow = CliRunner().invoke(app, ["inspect", str(models), *args])
    slow_file = (tmp_path / "r.txt").read_text() if "-o" in args else ""

    def norm(s: str) -> str:   # timings and timestamps differ from run to run
        s = re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)?", "T", s)
        return re.sub(r'("seconds": )[0-9.e-]+|, [0-9.]+ s\)', r"\1X", s)

    assert code == slow.exit_code and norm(fast) == norm(slow.output) and norm(fast_file) == norm(slow_file)


def test_parse_takes_the_plain_forms() -> None:
    env: dict[str, str] = {}
    assert parse(["inspect", "a", "b"], env) == InspectCall([Path("a"), Path("b")])
    assert parse(["-v", "--threads", "2", "inspect", "m.pt", "--format=json", "-c", "c.yaml", "--output", "o",
                  "--fail-on", "low", "-f", "sarif"], env) == \
        InspectCall([Path("m.pt")], "sarif", "low", Path("c.yaml"), Path("o"), verbose=True, threads=2)
    assert parse(["inspect", "m.pt"], {"BASTION_THREADS": "3"}) == InspectCall([Path("m.pt")], threads=3)


@pytest.mark.parametrize("argv", [[], ["inspect"], ["--version"], ["inspect", "--help"], ["inspect", "m", "-h"],
                                  ["scan", "p.yaml"], ["inspect", "m", "--format", "xml"], ["inspect", "m", "-fjson"],
                                  ["inspect", "m", "--format"], ["inspect", "--", "-m"], ["inspect", "m", "-o", "-"],
                                  ["inspect", "m", "--fail-on="], ["inspect", ""], ["--threads", "0", "inspect", "m"],
                                  ["inspect", "m", "--verbose"], ["-x", "inspect", "m"]])
def test_parse_leaves_everything_else_to_typer(argv: list[str]) -> None:
    assert parse(argv, {}) is None


def test_an_invalid_thread_count_in_the_environment_goes_to_typer() -> None:
    assert parse(["inspect", "m"], {"BASTION_THREADS": "zero"}) is None
