"""The model registry: real SQLite files, real signed directories, real scans, real parallel processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.supply.registry import (
    PromotionRefused,
    Registry,
    RegistryError,
    default_registry_url,
)
from bastion.supply.signing import generate_keypair, sign_directory

# A protocol-0 pickle that would call os.system on load. Written as bytes, never loaded.
MALICIOUS_PICKLE = b"cos\nsystem\n(S'echo pwned'\ntR."

needs_scanner = pytest.mark.skipif(
    __import__("importlib").util.find_spec("bastion.supply.inspect") is None,
    reason="bastion.supply.inspect (the model-file scanner) is not available",
)


@pytest.fixture()
def keys(tmp_path: Path):
    return generate_keypair(tmp_path / "release")


def make_model(base: Path, name: str, seed: int, keys=None) -> Path:
    """A small benign model directory (NumPy weights + JSON config), signed if ``keys``."""
    root = base / name
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    np.save(root / "weights.npy", rng.normal(size=(16, 8)).astype(np.float32))
    (root / "config.json").write_text(json.dumps({"seed": seed, "layers": [16, 8]}))
    if keys is not None:
        sign_directory(root, keys.private_path)
    return root


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    yield registry
    registry.close()


def test_add_records_checks_and_provenance(tmp_path: Path, reg: Registry, keys) -> None:
    signed = make_model(tmp_path, "signed", 1, keys)
    v1 = reg.add("fraud", signed, key=keys.public_path, source="https://hub.example/fraud",
                 dataset_hash="sha256:abc", code_revision="9f2c1e0", notes="first cut")
    assert (v1.version, v1.signature_status, v1.key_id) == ("v1", "valid", keys.key_id)
    assert (v1.source, v1.dataset_hash, v1.code_revision, v1.notes) == (
        "https://hub.example/fraud", "sha256:abc", "9f2c1e0", "first cut")
    manifest = json.loads((signed / "bastion-manifest.json").read_text())
    assert v1.content_digest == manifest["content_digest"]
    v2 = reg.add("fraud", make_model(tmp_path, "unsigned", 2))
    v3 = reg.add("fraud", signed, version="2024-06-rc1")  # signed but no key given
    assert (v2.version, v2.signature_status) == ("v2", "unsigned")
    assert (v3.version, v3.signature_status) == ("2024-06-rc1", "unverified")
    assert [v.version for v in reg.versions("fraud")] == ["v1", "v2", "2024-06-rc1"]
    with pytest.raises(RegistryError, match="already has a version"):
        reg.add("fraud", signed, version="v1")
    [model] = reg.list_models()
    assert (model.name, model.versions, model.deployed, model.latest) == ("fraud", 3, None, "2024-06-rc1")
    assert [e.action for e in reg.history("fraud")] == ["add", "add", "add"]


def test_unknown_names_and_bad_urls_are_usage_errors(tmp_path: Path, reg: Registry) -> None:
    with pytest.raises(RegistryError, match="no model named"):
        reg.versions("nope")
    reg.add("m", make_model(tmp_path, "a", 1))
    with pytest.raises(RegistryError, match="has no version"):
        reg.get("m", "v9")
    with pytest.raises(RegistryError, match="not found"):
        reg.add("m", tmp_path / "missing")
    with pytest.raises(RegistryError, match="not a database URL"):
        Registry("not a url")
    with pytest.raises(RegistryError, match="no database driver"):
        Registry("nosuchdb://localhost/x")


def test_default_url_from_env_and_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BASTION_REGISTRY_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_registry_url() == f"sqlite:///{tmp_path / 'xdg' / 'bastion' / 'registry.db'}"
    monkeypatch.setenv("BASTION_REGISTRY_URL", f"sqlite:///{tmp_path / 'env.db'}")
    Registry().close()
    assert (tmp_path / "env.db").exists()


@needs_scanner
def test_promote_and_rollback(tmp_path: Path, reg: Registry, keys) -> None:
    dirs = [make_model(tmp_path, f"m{i}", i, keys) for i in range(3)]
    labels = [reg.add("clf", d, key=keys.public_path).version for d in dirs]
    assert reg.deployed("clf") is None
    for label in labels:
        result = reg.promote("clf", label)
        assert result.changed and result.version.deployed
    assert reg.promote("clf", "v3").changed is False  # already deployed: no new stack entry
    assert reg.deployed("clf").version == "v3"
    # v2's files are tampered with after registration: rollback re-checks and skips it
    (dirs[1] / "config.json").write_text('{"seed": 666}')
    back = reg.rollback("clf")
    assert (back.from_version, back.to_version.version) == ("v3", "v1")
    assert [v for v, _ in back.skipped] == ["v2"] and "tampered" in back.skipped[0][1]
    assert reg.deployed("clf").version == "v1"
    with pytest.raises(PromotionRefused, match="no previous good version"):
        reg.rollback("clf")
    assert reg.deployed("clf").version == "v1"  # a refused rollback changes nothing
    actions = [e.action for e in reg.history("clf")]
    assert actions.count("promote") == 3 and actions.count("rollback") == 1


@needs_scanner
def test_promote_refuses_what_fails_its_checks(tmp_path: Path, reg: Registry, keys) -> None:
    good = make_model(tmp_path, "good", 1, keys)
    reg.add("m", good, key=keys.public_path)
    reg.promote("m", "v1")
    unsigned = reg.add("m", make_model(tmp_path, "unsigned", 2)).version
    with pytest.raises(PromotionRefused, match="signature unsigned"):
        reg.promote("m", unsigned)
    evil = make_model(tmp_path, "evil", 3)
    (evil / "extra.pkl").write_bytes(MALICIOUS_PICKLE)
    sign_directory(evil, keys.private_path)  # a validly signed malicious model: the scan must stop it
    evil_v = reg.add("m", evil, key=keys.public_path)
    assert evil_v.signature_status == "valid" and evil_v.scan_verdict == "fail"
    with pytest.raises(PromotionRefused, match="scan fail"):
        reg.promote("m", evil_v.version)
    # a version that passed at add time but was changed (and re-signed) since
    later = make_model(tmp_path, "later", 4, keys)
    later_v = reg.add("m", later, key=keys.public_path).version
    (later / "config.json").write_text('{"seed": 5}')
    sign_directory(later, keys.private_path)
    with pytest.raises(PromotionRefused, match="content changed since it was registered"):
        reg.promote("m", later_v)
    other = generate_keypair(tmp_path / "other")
    with pytest.raises(PromotionRefused, match="wrong key"):
        reg.promote("m", "v1", key=other.public_path)
    assert reg.deployed("m").version == "v1"
    refused = [e for e in reg.history("m") if e.action == "promote-refused"]
    assert [e.version for e in refused] == [unsigned, evil_v.version, later_v, "v1"]


def test_promote_refuses_without_scanner_or_signature(tmp_path: Path, keys) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", scan=False)
    reg.add("m", make_model(tmp_path, "a", 1, keys), key=keys.public_path)
    with pytest.raises(PromotionRefused, match="scan not-scanned"):
        reg.promote("m", "v1")
    assert reg.deployed("m") is None


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@needs_scanner
def test_cli_registry_end_to_end(tmp_path: Path, keys) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    a, b = make_model(tmp_path, "a", 1, keys), make_model(tmp_path, "b", 2, keys)
    for d in (a, b):
        code, out = _cli("registry", "add", "clf", str(d), "--key", str(keys.public_path), "--source",
                         f"file://{d}", "--code-revision", "abc123", "--db", db, "--json")
        assert code == 0, out
    code, out = _cli("registry", "list", "--db", db, "--json")
    assert json.loads(out) == [{"name": "clf", "created_at": json.loads(out)[0]["created_at"], "versions": 2,
                                "deployed": None, "latest": "v2"}]
    assert _cli("registry", "promote", "clf", "v1", "--db", db)[0] == 0
    assert _cli("registry", "promote", "clf", "v2", "--db", db)[0] == 0
    code, out = _cli("registry", "rollback", "clf", "--db", db, "--json")
    assert code == 0 and json.loads(out)["to"]["version"] == "v1"
    (b / "weights.npy").unlink()
    code, out = _cli("registry", "promote", "clf", "v2", "--db", db, "--json")
    assert code == 1 and "removed: weights.npy" in json.loads(out)["error"]
    code, out = _cli("registry", "show", "clf", "--db", db, "--json")
    doc = json.loads(out)
    assert doc["deployed"] == "v1" and [e["action"] for e in doc["history"]] == [
        "add", "add", "promote", "promote", "rollback", "promote-refused"]
    code, out = _cli("registry", "show", "clf", "--db", db)
    assert code == 0 and "promote-refused" in out


def test_cli_registry_exit_codes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    model = make_model(tmp_path, "a", 1)
    run = lambda *a: subprocess.run(
        [sys.executable, "-c", "from bastion.cli.main import main; main()", *a],
        check=False, capture_output=True, text=True, timeout=120)
    assert run("registry", "add", "m", str(model), "--db", db).returncode == 0
    refused = run("registry", "promote", "m", "v1", "--db", db)
    assert refused.returncode == 1 and "refusing to promote" in refused.stderr
    assert "Traceback" not in refused.stderr
    unknown = run("registry", "show", "nope", "--db", db)
    assert unknown.returncode == 2 and "no model named 'nope'" in unknown.stderr
    with pytest.raises(PromotionRefused, match="no deployed version"):
        Registry(db).rollback("m")


# --------------------------------------------------------------------------- concurrency

WORKER = textwrap.dedent("""
    import json, sys, time
    from bastion.supply.registry import PromotionRefused, Registry
    url, wid, iters, start, model_dir, pub = sys.argv[1:7]
    wid, iters = int(wid), int(iters)
    while time.time() < float(start):
        time.sleep(0.005)
    reg = Registry(url)
    done = {"adds": 0, "auto": [], "promotes": 0, "promote_refused": 0, "rollbacks": 0, "refused": 0}
    for i in range(iters):
        reg.add("m", model_dir, version=f"w{wid}-{i}", key=pub)
        done["adds"] += 1
        done["auto"].append(reg.add("m", model_dir, key=pub).version)
        done["adds"] += 1
        try:  # a refusal is a legitimate outcome (e.g. a scan time limit hit on a loaded machine)
            if reg.promote("m", f"w{wid}-{i}").changed:
                done["promotes"] += 1
        except PromotionRefused:
            done["promote_refused"] += 1
        if i % 3 == 2:
            try:
                reg.rollback("m", recheck=wid % 2 == 0)  # re-checking (optimistic) and recorded paths
                done["rollbacks"] += 1
            except PromotionRefused:
                done["refused"] += 1
    print(json.dumps(done))
""")


@needs_scanner
def test_parallel_processes_never_corrupt_the_registry(tmp_path: Path, keys) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    model = make_model(tmp_path, "model", 7, keys)
    workers, iters = 4, 6
    start = time.time() + 2.0  # every process starts hammering at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(w), str(iters), str(start), str(model),
                               str(keys.public_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    labels = [r[0] for r in con.execute("SELECT version FROM model_versions")]
    assert len(labels) == len(set(labels)) == sum(r["adds"] for r in results) == workers * iters * 2
    auto = [v for r in results for v in r["auto"]]
    assert len(set(auto)) == len(auto) == workers * iters
    for r in results:  # v<N>: N = versions so far + 1, so each worker's labels only grow
        numbers = [int(v[1:]) for v in r["auto"]]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    n_deploy = con.execute("SELECT COUNT(*) FROM deployments").fetchone()[0]
    events = dict(con.execute("SELECT action, COUNT(*) FROM events GROUP BY action").fetchall())
    assert events["add"] == len(labels)
    assert events["promote"] == n_deploy == sum(r["promotes"] for r in results) > 0
    assert events.get("promote-refused", 0) == sum(r["promote_refused"] for r in results)
    assert events.get("rollback", 0) == sum(r["rollbacks"] for r in results)
    retired = con.execute("SELECT COUNT(*) FROM deployments WHERE retired_at IS NOT NULL").fetchone()[0]
    assert retired >= events.get("rollback", 0)  # each rollback retires at least the version it left
    assert con.execute("SELECT COUNT(*) FROM deployments WHERE retired_at < deployed_at").fetchone()[0] == 0
    con.close()
    reg = Registry(url)
    deployed = reg.deployed("m")
    active = [v for v in reg.versions("m") if v.deployed]
    assert deployed is not None and [v.version for v in active] == [deployed.version]


# --------------------------------------------------------------------------- schema version, --no-recheck


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from bastion.cli.main import main; main()", *args],
                          check=False, capture_output=True, text=True, timeout=120)


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    """A registry written by another schema version must not be read or written as if it were ours."""
    path = tmp_path / "r.db"
    Registry(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE bastion_meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(RegistryError, match="created by registry schema version 2") as err:
        Registry(f"sqlite:///{path}")
    assert "upgrade bastion" in str(err.value)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE bastion_meta SET value = '0' WHERE key = 'schema_version'")
    proc = _run_cli("registry", "list", "--db", f"sqlite:///{path}")
    assert proc.returncode == 2, proc.stderr
    assert "schema version 0" in proc.stderr and "--db" in proc.stderr and "Traceback" not in proc.stderr


def test_tables_of_another_application_are_not_taken_for_a_registry(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, title TEXT)")
    with pytest.raises(RegistryError, match="not a bastion registry"):
        Registry(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:  # nothing was created or changed in someone else's database
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["models"]


@needs_scanner
def test_rollback_without_recheck_skips_a_version_whose_files_are_gone(tmp_path: Path, reg: Registry,
                                                                       keys) -> None:
    import shutil

    dirs = [make_model(tmp_path, f"m{i}", i, keys) for i in range(3)]
    for d in dirs:
        reg.promote("clf", reg.add("clf", d, key=keys.public_path).version)
    shutil.rmtree(dirs[1])  # v2 was good when recorded; its files are gone now
    back = reg.rollback("clf", recheck=False)
    assert (back.from_version, back.to_version.version) == ("v3", "v1")
    assert [v for v, _ in back.skipped] == ["v2"] and "files are gone" in back.skipped[0][1]
    assert back.warnings and "not re-checked" in back.warnings[0]
    shutil.rmtree(dirs[0])
    reg.promote("clf", "v3")
    with pytest.raises(PromotionRefused, match="files are gone"):
        reg.rollback("clf", recheck=False)
    assert reg.deployed("clf").version == "v3"


@needs_scanner
def test_cli_rollback_without_recheck_warns(tmp_path: Path, keys) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    reg = Registry(db)
    for i in range(2):
        reg.promote("clf", reg.add("clf", make_model(tmp_path, f"m{i}", i, keys), key=keys.public_path).version)
    reg.close()
    proc = _run_cli("registry", "rollback", "clf", "--no-recheck", "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert "rolled back" in proc.stdout and "v1 was not re-checked" in proc.stderr
