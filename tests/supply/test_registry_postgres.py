"""The model registry on PostgreSQL: a real server (``.ci/start-postgres.sh``), real parallel processes.

Skipped unless ``BASTION_TEST_PG_URL`` names a PostgreSQL database the tests may create databases
from (``eval "$(bash .ci/start-postgres.sh)"`` sets it). Each test works in its own database, created
and dropped here, so runs are independent. The SQLite suite is ``test_registry.py``; the behaviours
that matter are run again here, where the registry takes row locks instead of ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from test_registry import (  # plain helpers (conftest puts tests/supply on sys.path)
    MALICIOUS_PICKLE,
    WORKER,
    make_model,
)
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.supply.registry import PromotionRefused, Registry, RegistryError
from bastion.supply.signing import generate_keypair, sign_directory

PG_URL_ENV = "BASTION_TEST_PG_URL"

needs_scanner = pytest.mark.skipif(
    __import__("importlib").util.find_spec("bastion.supply.inspect") is None,
    reason="bastion.supply.inspect (the model-file scanner) is not available",
)


def _admin_url() -> URL:
    raw = os.environ.get(PG_URL_ENV)
    if not raw:
        pytest.skip(f"{PG_URL_ENV} is not set: start a throw-away server with "
                    'eval "$(bash .ci/start-postgres.sh)" to run the PostgreSQL registry tests')
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg (pip install 'psycopg[binary]') is not installed")
    url = make_url(raw)
    assert url.get_backend_name() == "postgresql", f"{PG_URL_ENV} must be a postgresql+psycopg:// URL"
    return url


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the test server; dropped afterwards."""
    admin = _admin_url()
    name = f"bastion_reg_{secrets.token_hex(6)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture()
def reg(pg_url: str) -> Iterator[Registry]:
    registry = Registry(pg_url)
    yield registry
    registry.close()


@pytest.fixture()
def keys(tmp_path: Path):
    return generate_keypair(tmp_path / "release")


def _sql(url: str, query: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- behaviours


def test_add_list_show_on_postgres(tmp_path: Path, reg: Registry, pg_url: str, keys) -> None:
    signed = make_model(tmp_path, "signed", 1, keys)
    v1 = reg.add("fraud", signed, key=keys.public_path, source="https://hub.example/fraud",
                 dataset_hash="sha256:" + "a" * 64, code_revision="9f2c1e0", notes="first cut — ünïcode")
    assert (v1.version, v1.signature_status, v1.key_id) == ("v1", "valid", keys.key_id)
    assert (v1.source, v1.code_revision, v1.notes) == ("https://hub.example/fraud", "9f2c1e0", "first cut — ünïcode")
    assert v1.content_digest == json.loads((signed / "bastion-manifest.json").read_text())["content_digest"]
    v2 = reg.add("fraud", make_model(tmp_path, "unsigned", 2))
    v3 = reg.add("fraud", signed, version="2024-06-rc1")
    assert [(v.version, v.signature_status) for v in (v2, v3)] == [("v2", "unsigned"), ("2024-06-rc1", "unverified")]
    with pytest.raises(RegistryError, match="already has a version"):
        reg.add("fraud", signed, version="v1")
    with pytest.raises(RegistryError, match="no model named"):
        reg.versions("nope")
    with pytest.raises(RegistryError, match="has no version"):
        reg.get("fraud", "v9")
    assert [v.version for v in reg.versions("fraud")] == ["v1", "v2", "2024-06-rc1"]
    assert reg.get("fraud", "v1").dataset_hash == "sha256:" + "a" * 64
    [model] = reg.list_models()
    assert (model.name, model.versions, model.deployed, model.latest) == ("fraud", 3, None, "2024-06-rc1")
    assert [e.action for e in reg.history("fraud")] == ["add"] * 3
    # it really is PostgreSQL holding the rows, through the row-lock path
    assert _sql(pg_url, "SELECT COUNT(*) FROM model_versions") == [(3,)]
    assert reg.engine.dialect.name == "postgresql" and not reg.is_sqlite


@needs_scanner
def test_promote_and_rollback_on_postgres(tmp_path: Path, reg: Registry, keys) -> None:
    dirs = [make_model(tmp_path, f"m{i}", i, keys) for i in range(3)]
    labels = [reg.add("clf", d, key=keys.public_path).version for d in dirs]
    for label in labels:
        assert reg.promote("clf", label).changed
    assert reg.promote("clf", "v3").changed is False
    (dirs[1] / "config.json").write_text('{"seed": 666}')  # v2 tampered with: rollback skips it
    back = reg.rollback("clf")
    assert (back.from_version, back.to_version.version) == ("v3", "v1")
    assert [v for v, _ in back.skipped] == ["v2"] and "tampered" in back.skipped[0][1]
    with pytest.raises(PromotionRefused, match="no previous good version"):
        reg.rollback("clf")
    assert reg.deployed("clf").version == "v1"
    assert [v.version for v in reg.versions("clf") if v.deployed] == ["v1"]
    actions = [e.action for e in reg.history("clf")]
    assert actions.count("promote") == 3 and actions.count("rollback") == 1


@needs_scanner
def test_promote_refuses_failing_scan_and_bad_signature_on_postgres(tmp_path: Path, reg: Registry, keys) -> None:
    reg.add("m", make_model(tmp_path, "good", 1, keys), key=keys.public_path)
    reg.promote("m", "v1")
    unsigned = reg.add("m", make_model(tmp_path, "unsigned", 2)).version
    with pytest.raises(PromotionRefused, match="signature unsigned"):
        reg.promote("m", unsigned)
    evil = make_model(tmp_path, "evil", 3)
    (evil / "extra.pkl").write_bytes(MALICIOUS_PICKLE)
    sign_directory(evil, keys.private_path)  # validly signed, but the scan must stop it
    evil_v = reg.add("m", evil, key=keys.public_path)
    assert (evil_v.signature_status, evil_v.scan_verdict) == ("valid", "fail")
    with pytest.raises(PromotionRefused, match="scan fail"):
        reg.promote("m", evil_v.version)
    other = generate_keypair(tmp_path / "other")
    with pytest.raises(PromotionRefused, match="wrong key"):
        reg.promote("m", "v1", key=other.public_path)
    assert reg.deployed("m").version == "v1"
    refused = [e.version for e in reg.history("m") if e.action == "promote-refused"]
    assert refused == [unsigned, evil_v.version, "v1"]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'r.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@needs_scanner
def test_text_every_engine_stores(tmp_path: Path, any_url: str) -> None:
    """A NUL in a pickle's global name or a non-UTF-8 file name reaches the check details: PostgreSQL
    rejected the first and both engines the second, so adding such a (malicious) model crashed."""
    reg = Registry(any_url)
    try:
        evil = make_model(tmp_path, "evil", 1)
        (evil / "x.pkl").write_bytes(b"cos\x00x\nsystem\n(S'echo pwned'\ntR.")
        odd = make_model(tmp_path, "odd", 2)
        (odd / os.fsdecode(b"w\xff.pkl")).write_bytes(MALICIOUS_PICKLE)
        for label, directory in (("evil", evil), ("odd", odd)):
            info = reg.add("m", directory, version=label)
            assert info.scan_verdict == "fail"
        assert "\\x00" in reg.get("m", "evil").scan_detail
        assert "w\\xff.pkl" in reg.get("m", "odd").scan_detail
        with pytest.raises(PromotionRefused, match="scan fail"):
            reg.promote("m", "evil")
        assert [e.action for e in reg.history("m")][-1] == "promote-refused"
        # user-given text is validated alike on every engine instead of failing on one of them
        with pytest.raises(RegistryError, match="too long"):
            reg.add("m", evil, dataset_hash="x" * 201)
        with pytest.raises(RegistryError, match="NUL"):
            reg.add("m", evil, notes="a\x00b")
        assert len(reg.versions("m")) == 2
    finally:
        reg.close()


runner = CliRunner()


@needs_scanner
def test_cli_with_a_postgres_url(tmp_path: Path, pg_url: str, keys) -> None:
    a, b = make_model(tmp_path, "a", 1, keys), make_model(tmp_path, "b", 2, keys)
    for d in (a, b):
        res = runner.invoke(app, ["registry", "add", "clf", str(d), "--key", str(keys.public_path), "--db", pg_url])
        assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["registry", "promote", "clf", "v1", "--db", pg_url]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", "clf", "v2", "--db", pg_url]).exit_code == 0
    res = runner.invoke(app, ["registry", "rollback", "clf", "--db", pg_url, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["to"]["version"] == "v1"
    doc = json.loads(runner.invoke(app, ["registry", "show", "clf", "--db", pg_url, "--json"]).output)
    assert doc["deployed"] == "v1" and [e["action"] for e in doc["history"]] == [
        "add", "add", "promote", "promote", "rollback"]


# --------------------------------------------------------------------------- locking and concurrency


def test_a_held_row_lock_is_waited_for_bounded_and_retried(tmp_path: Path, pg_url: str, keys,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Another session holds the model's row lock longer than ``busy_timeout_s``: PostgreSQL's
    lock_timeout fires (SQLSTATE 55P03), the registry retries, and the write lands once the lock goes."""
    reg = Registry(pg_url, busy_timeout_s=0.2, scan=False)
    try:
        reg.add("m", make_model(tmp_path, "a", 1, keys), key=keys.public_path)
        with reg.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "200ms"
        locked, hold_s = threading.Event(), 1.0

        def hold() -> None:
            engine = create_engine(pg_url)
            with engine.connect() as conn, conn.begin():
                conn.execute(text("SELECT id FROM models WHERE name = 'm' FOR UPDATE"))
                locked.set()
                time.sleep(hold_s)
            engine.dispose()

        holder = threading.Thread(target=hold)
        holder.start()
        assert locked.wait(30)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="bastion.supply.registry"):
            info = reg.add("m", make_model(tmp_path, "b", 2, keys), key=keys.public_path)
        waited = time.monotonic() - started
        holder.join(30)
        assert info.version == "v2" and waited >= hold_s * 0.8
        assert any("registry busy, retrying" in r.getMessage() for r in caplog.records)
    finally:
        reg.close()


OPENER = textwrap.dedent("""
    import sys, time
    from bastion.supply.registry import Registry
    url, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.002)
    Registry(url, scan=False).close()
""")


def test_a_table_created_meanwhile_does_not_fail_the_open(pg_url: str) -> None:
    """Another session creates one of the tables while the registry opens: its CREATE TABLE waits for
    that transaction, then fails (DuplicateTable or a pg_type unique violation); the open retries."""
    created = threading.Event()

    def other_creator() -> None:
        engine = create_engine(pg_url)
        with engine.connect() as conn, conn.begin():
            conn.execute(text("CREATE TABLE bastion_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256))"))
            created.set()
            time.sleep(0.5)  # committed only after the registry has issued its own CREATE TABLE
        engine.dispose()

    thread = threading.Thread(target=other_creator)
    thread.start()
    assert created.wait(30)
    Registry(pg_url, scan=False).close()
    thread.join(30)
    assert _sql(pg_url, "SELECT key, value FROM bastion_meta") == [("schema_version", "1")]


def test_parallel_first_opens_create_the_schema_once(pg_url: str) -> None:
    """Processes opening an empty database at once used to fail with DuplicateTable (CREATE TABLE race)."""
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, pg_url, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    tables = {r[0] for r in _sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"bastion_meta", "models", "model_versions", "deployments", "events"}
    assert _sql(pg_url, "SELECT key, value FROM bastion_meta") == [("schema_version", "1")]


@needs_scanner
def test_parallel_processes_never_corrupt_the_registry_on_postgres(tmp_path: Path, pg_url: str, keys) -> None:
    model = make_model(tmp_path, "model", 7, keys)
    workers, iters = 4, 6
    start = time.time() + 2.0  # every process starts hammering (and creating the schema) at once
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, pg_url, str(w), str(iters), str(start), str(model),
                               str(keys.public_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    labels = [r[0] for r in _sql(pg_url, "SELECT version FROM model_versions")]
    assert len(labels) == len(set(labels)) == sum(r["adds"] for r in results) == workers * iters * 2
    auto = [v for r in results for v in r["auto"]]
    assert len(set(auto)) == len(auto) == workers * iters
    for r in results:  # v<N>: N = versions so far + 1, so each worker's labels only grow
        numbers = [int(v[1:]) for v in r["auto"]]
        assert numbers == sorted(numbers)
    [(n_deploy, n_active)] = _sql(pg_url, "SELECT COUNT(*), COUNT(*) FILTER (WHERE retired_at IS NULL) FROM deployments")
    events = dict(_sql(pg_url, "SELECT action, COUNT(*) FROM events GROUP BY action"))
    assert events["add"] == len(labels)
    assert events["promote"] == n_deploy == sum(r["promotes"] for r in results) > 0
    assert events.get("promote-refused", 0) == sum(r["promote_refused"] for r in results)
    assert events.get("rollback", 0) == sum(r["rollbacks"] for r in results)
    assert n_deploy - n_active >= events.get("rollback", 0)  # each rollback retires at least one entry
    assert _sql(pg_url, "SELECT COUNT(*) FROM deployments WHERE retired_at < deployed_at") == [(0,)]
    # referential consistency: every deployment and event points at a version of its own model
    assert _sql(pg_url, """SELECT COUNT(*) FROM deployments d JOIN model_versions v ON v.id = d.version_id
                           WHERE v.model_id <> d.model_id""") == [(0,)]
    assert _sql(pg_url, "SELECT COUNT(*) FROM models") == [(1,)]
    reg = Registry(pg_url)
    try:
        deployed = reg.deployed("m")
        active = [v for v in reg.versions("m") if v.deployed]
        assert deployed is not None and [v.version for v in active] == [deployed.version]
    finally:
        reg.close()


def test_another_schema_version_is_refused_on_every_engine(any_url: str) -> None:
    Registry(any_url).close()
    engine = create_engine(any_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE bastion_meta SET value = '7' WHERE key = 'schema_version'"))
    finally:
        engine.dispose()
    with pytest.raises(RegistryError, match="created by registry schema version 7"):
        Registry(any_url)
