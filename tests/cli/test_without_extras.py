"""bastion without its optional libraries: what needs only the core install runs, and what needs an
extra says which one in one line. A library is made unimportable by a directory on PYTHONPATH
whose ``NAME/__init__.py`` raises ImportError (as a broken or absent install would)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import run_cli

SLIM_BLOCKED = ("numpy", "torch", "sklearn", "scipy", "skops", "onnxruntime", "onnx", "matplotlib", "jinja2", "PIL",
                "httpx", "h5py", "py7zr", "fastapi", "uvicorn", "jsonschema")


def _blocked_env(cli_env: dict[str, str], tmp_path: Path, names: tuple[str, ...]) -> dict[str, str]:
    block = tmp_path / "blocked"
    for name in names:
        (block / name).mkdir(parents=True, exist_ok=True)
        (block / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
    return {**cli_env, "PYTHONPATH": os.pathsep.join(p for p in (str(block), cli_env.get("PYTHONPATH")) if p)}


def _sklearn_files(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((60, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 1).astype(np.int64)
    sio.dump(LogisticRegression().fit(x, y), tmp_path / "model.skops")
    np.savez(tmp_path / "data.npz", x=x[:20], y=y[:20])
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nname: no torch\ntarget: {model: sklearn:model.skops}\ndata: {source: npz:data.npz}\n"
        "checks:\n"
        "  - {name: sq, kind: evasion, attack: square, eps: [0.2], params: {max_queries: 30}}\n"
        "  - {name: hsj, kind: evasion, attack: hopskipjump, eps: [0.5], params: {max_queries: 30}}\n"
        "gates: ['clean_accuracy[sq] >= 0.5']\noutput: {dir: out}\n")


def test_attacks_inspect_and_a_blackbox_scan_run_without_torch(cli_env: dict[str, str], tmp_path: Path) -> None:
    _sklearn_files(tmp_path)
    env = _blocked_env(cli_env, tmp_path, ("torch",))
    listed = run_cli(["attacks", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["square"]["available"] and rows["hopskipjump"]["family"] == "evasion-blackbox"
    assert not rows["pgd"]["available"] and "bastion[torch]" in rows["pgd"]["description"]
    assert run_cli(["attacks"], env).returncode == 0
    inspected = run_cli(["inspect", str(tmp_path / "model.skops")], env)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    scanned = run_cli(["scan", "policy.yaml", "--json"], env, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    checks = {c["name"]: c for c in json.loads(scanned.stdout)["checks"]}
    assert checks["sq"]["status"] == "complete" and checks["hsj"]["status"] == "complete"


def test_a_whitebox_attack_without_torch_names_the_extra(cli_env: dict[str, str], tmp_path: Path) -> None:
    _sklearn_files(tmp_path)
    env = _blocked_env(cli_env, tmp_path, ("torch",))
    proc = run_cli(["attack", "-t", "sklearn:model.skops", "-d", "npz:data.npz", "-a", "pgd"], env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'bastion[torch]'" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_sign_verify_and_the_registry_run_on_the_core_install(cli_env: dict[str, str], tmp_path: Path) -> None:
    """What `pip install bastion` (no extras) promises: numpy and every optional library blocked."""
    env = _blocked_env(cli_env, tmp_path, SLIM_BLOCKED)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    steps = [["inspect", str(model)], ["keygen", "-o", str(tmp_path / "key")],
             ["sign", str(model), "--key", str(tmp_path / "key.key")],
             ["verify", str(model), "--key", str(tmp_path / "key.pub")],
             ["registry", "add", "m", str(model), "--key", str(tmp_path / "key.pub"), "--db", db],
             ["registry", "promote", "m", "v1", "--db", db], ["registry", "list", "--db", db]]
    for args in steps:
        proc = run_cli(args, env)
        assert proc.returncode == 0, (args, proc.stdout + proc.stderr)
    assert "v1" in proc.stdout


def test_commands_that_need_an_extra_name_it_in_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = _blocked_env(cli_env, tmp_path, SLIM_BLOCKED)
    for args in (["attacks"], ["demo", "-o", str(tmp_path / "demo")]):
        proc = run_cli(args, env)
        assert proc.returncode == 2 and "pip install 'bastion[" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_a_scan_without_the_reports_extra_refuses_html_before_running(cli_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    """Without jinja2/matplotlib a scan asking for HTML stops before any check runs, naming the
    extra (it used to run every check and then stop, leaving no JUnit or SARIF); without HTML in
    its formats the same scan writes the other reports."""
    _sklearn_files(tmp_path)
    env = _blocked_env(cli_env, tmp_path, ("torch", "jinja2", "matplotlib"))
    refused = run_cli(["scan", "policy.yaml"], env, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "bastion[reports]" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "out").exists()
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy.read_text().replace("output: {dir: out}", "output: {dir: out, formats: [json, junit, sarif]}"))
    scanned = run_cli(["scan", "policy.yaml"], env, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["junit.xml", "report.json", "report.sarif"]
