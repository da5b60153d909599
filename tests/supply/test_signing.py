"""Signing and verification of model directories: real files, real Ed25519 keys, the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.errors import UsageError
from bastion.supply.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    hash_files,
)
from bastion.supply.signing import (
    KeyFileError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_directory,
    verify_directory,
)

CHUNK = 64 * 1024  # the smallest chunk size allowed: makes small test files span several chunks


@pytest.fixture()
def keys(tmp_path: Path):
    (tmp_path / "keys").mkdir()
    return generate_keypair(tmp_path / "keys" / "k")


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "weights.bin").write_bytes(os.urandom(5 * CHUNK + 123))
    (root / "config.json").write_text('{"layers": 3}')
    (root / "sub" / "tokenizer.txt").write_text("a b c\n")
    (root / "empty").write_bytes(b"")
    return root


def _signed(model: Path, keys) -> Path:
    sign_directory(model, keys.private_path, chunk_size=CHUNK)
    return model


# --------------------------------------------------------------------------- keys


def test_keygen_writes_0600_private_key_and_loadable_pair(keys) -> None:
    assert stat.S_IMODE(keys.private_path.stat().st_mode) == 0o600
    priv = load_private_key(keys.private_path)
    pub = load_public_key(keys.public_path)
    message = b"model bytes"
    pub.verify(priv.sign(message), message)  # raises if the pair does not match
    assert keys.key_id.startswith("ed25519:") and not keys.encrypted


def test_keygen_refuses_to_overwrite(keys) -> None:
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keypair(keys.private_path.with_suffix(""))


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "enc", passphrase=b"correct horse")
    assert b"ENCRYPTED" in pair.private_path.read_bytes()
    with pytest.raises(KeyFileError, match="encrypted and no passphrase"):
        load_private_key(pair.private_path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(pair.private_path, b"battery staple")
    load_private_key(pair.private_path, b"correct horse")


@pytest.mark.parametrize("content, message", [
    (b"", "not a valid private key"),
    (b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", "not a valid private key"),
    (b"\x00\x01garbage", "not a valid private key"),
])
def test_corrupt_private_key_is_a_usage_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        load_private_key(path)


def test_wrong_key_kinds_are_rejected(tmp_path: Path, keys) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path = tmp_path / "rsa.key"
    rsa_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_private_key(rsa_path)
    with pytest.raises(KeyFileError, match="holds a public key"):
        load_private_key(keys.public_path)
    with pytest.raises(KeyFileError, match="holds a private key"):
        load_public_key(keys.private_path)
    with pytest.raises(KeyFileError, match="not found"):
        load_public_key(tmp_path / "nope.pub")
    assert issubclass(KeyFileError, UsageError)


# --------------------------------------------------------------------------- hashing scheme


def test_small_file_digest_is_plain_sha256(model: Path) -> None:
    outcome = hash_files(model, [("config.json", 13)], chunk_size=CHUNK)
    expected = hashlib.sha256((model / "config.json").read_bytes()).hexdigest()
    assert outcome.entries["config.json"].digest == f"sha256:{expected}"
    assert outcome.entries["config.json"].chunks is None


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 7 * CHUNK + 5])
def test_chunked_digest_matches_the_documented_scheme_for_any_worker_count(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    results = [hash_files(tmp_path, [("f", size)], chunk_size=CHUNK, workers=w).entries["f"] for w in (1, 2, 5)]
    assert results[0] == results[1] == results[2]
    entry = results[0]
    if size <= CHUNK:
        assert entry.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    else:
        chunks = [hashlib.sha256(data[i:i + CHUNK]).digest() for i in range(0, size, CHUNK)]
        assert entry.chunks == tuple(c.hex() for c in chunks)
        assert entry.digest == "sha256-chunked:" + hashlib.sha256(b"".join(chunks)).hexdigest()


def test_progress_counts_every_byte_and_an_interrupt_stops_hashing(tmp_path: Path) -> None:
    size = 40 * CHUNK + 7
    (tmp_path / "f").write_bytes(os.urandom(size))
    calls: list[tuple[int, int]] = []
    hash_files(tmp_path, [("f", size)], chunk_size=CHUNK, workers=2, progress=lambda a, t: calls.append((a, t)))
    assert sum(a for a, _ in calls) == size and {t for _, t in calls} == {size} and len(calls) == 41

    seen: list[int] = []

    def interrupt(advance: int, total: int) -> None:
        seen.append(advance)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hash_files(tmp_path, [("f", size)], chunk_size=CHUNK, workers=2, progress=interrupt)
    assert len(seen) == 1


def test_sign_is_deterministic_apart_from_timestamp(model: Path, keys) -> None:
    a = sign_directory(model, keys.private_path, chunk_size=CHUNK, workers=1)
    b = sign_directory(model, keys.private_path, chunk_size=CHUNK, workers=4)
    assert a.content_digest == b.content_digest


# --------------------------------------------------------------------------- sign / verify


def test_roundtrip_is_intact_and_ignore_rules_are_reported(model: Path, keys) -> None:
    result = sign_directory(model, keys.private_path, chunk_size=CHUNK)
    assert result.ignored == [".git"] and ".git" in result.ignore_rules
    doc = json.loads((model / MANIFEST_NAME).read_text())
    paths = [f["path"] for f in doc["files"]]
    assert paths == ["config.json", "empty", "sub/tokenizer.txt", "weights.bin"]
    assert MANIFEST_NAME not in paths and SIGNATURE_NAME not in paths
    report = verify_directory(model, keys.public_path)
    assert report.ok, report.summary()
    assert report.signature == "valid" and report.ignored == [".git"]
    assert report.bytes_hashed == sum(f["size"] for f in doc["files"])


def test_added_removed_changed_are_reported_distinctly(model: Path, keys) -> None:
    _signed(model, keys)
    (model / "extra.pkl").write_bytes(b"new")
    (model / "sub" / "tokenizer.txt").unlink()
    with open(model / "weights.bin", "r+b") as fh:  # same size, one byte in chunk 3
        fh.seek(3 * CHUNK + 10)
        byte = fh.read(1)
        fh.seek(3 * CHUNK + 10)
        fh.write(bytes([byte[0] ^ 0xFF]))
    (model / "config.json").write_text('{"layers": 30}')
    report = verify_directory(model, keys.public_path)
    assert not report.ok and report.signature == "valid"
    assert report.added == ["extra.pkl"]
    assert report.removed == ["sub/tokenizer.txt"]
    reasons = {c.path: c.reason for c in report.changed}
    assert reasons.keys() == {"weights.bin", "config.json"}
    assert "chunk(s) 3 of 6" in reasons["weights.bin"]
    assert "size 13 -> 14" in reasons["config.json"]


def test_hand_edited_manifest_breaks_the_signature(model: Path, keys) -> None:
    _signed(model, keys)
    (model / "config.json").write_text('{"layers": 4}')  # same size, new content
    doc = json.loads((model / MANIFEST_NAME).read_text())
    entry = next(f for f in doc["files"] if f["path"] == "config.json")
    entry["digest"] = "sha256:" + hashlib.sha256(b'{"layers": 4}').hexdigest()
    from bastion.supply.manifest import content_digest

    doc["content_digest"] = content_digest(doc["files"])  # a careful forger keeps the manifest consistent
    (model / MANIFEST_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    report = verify_directory(model, keys.public_path)
    assert report.signature == "invalid" and "modified after signing" in report.signature_detail
    assert report.intact and not report.ok  # the files match the forged manifest, the signature does not


def test_corrupt_manifest_and_missing_files(model: Path, keys) -> None:
    _signed(model, keys)
    (model / MANIFEST_NAME).write_text("{not json")
    report = verify_directory(model, keys.public_path)
    assert report.manifest == "corrupt" and report.signature == "invalid" and not report.ok
    (model / SIGNATURE_NAME).unlink()
    assert verify_directory(model, keys.public_path).signature == "missing"
    (model / MANIFEST_NAME).unlink()
    report = verify_directory(model, keys.public_path)
    assert report.manifest == "missing" and not report.ok


def test_wrong_key_is_named(model: Path, keys, tmp_path: Path) -> None:
    _signed(model, keys)
    other = generate_keypair(tmp_path / "other")
    report = verify_directory(model, other.public_path)
    assert report.signature == "invalid" and "wrong key" in report.signature_detail
    assert keys.key_id in report.signature_detail and other.key_id in report.signature_detail


def test_symlinks_are_recorded_not_followed(model: Path, keys, tmp_path: Path) -> None:
    os.symlink("weights.bin", model / "latest.bin")
    _signed(model, keys)
    doc = json.loads((model / MANIFEST_NAME).read_text())
    assert {"path": "latest.bin", "type": "symlink", "target": "weights.bin"} in doc["files"]
    assert verify_directory(model, keys.public_path).ok
    (model / "latest.bin").unlink()
    os.symlink("config.json", model / "latest.bin")
    report = verify_directory(model, keys.public_path)
    assert [c.reason for c in report.changed] == ["link target 'weights.bin' -> 'config.json'"]


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.bin", "sub/../../outside.bin"])
def test_symlink_leaving_the_directory_is_refused(model: Path, keys, tmp_path: Path, target: str) -> None:
    (tmp_path / "outside.bin").write_bytes(b"x")
    os.symlink(target, model / "escape")
    with pytest.raises(UsageError, match="leaves the directory"):
        sign_directory(model, keys.private_path)
    assert not (model / MANIFEST_NAME).exists()


def test_special_files_are_refused(model: Path, keys) -> None:
    os.mkfifo(model / "pipe")
    with pytest.raises(UsageError, match="special file"):
        sign_directory(model, keys.private_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(model: Path, keys) -> None:
    _signed(model, keys)
    (model / "config.json").chmod(0)
    try:
        report = verify_directory(model, keys.public_path)
        assert [c.path for c in report.unreadable] == ["config.json"] and not report.ok
        with pytest.raises(UsageError, match="config.json"):
            sign_directory(model, keys.private_path)
    finally:
        (model / "config.json").chmod(0o644)


def test_a_file_that_turns_into_a_fifo_or_vanishes_is_an_error_not_a_hang(model: Path) -> None:
    os.mkfifo(model / "pipe")  # as if swapped in between the walk and the hashing
    outcome = hash_files(model, [("pipe", 0), ("gone.bin", 10), ("config.json", 13)], chunk_size=CHUNK)
    assert set(outcome.errors) == {"pipe", "gone.bin"}
    assert "regular file" in outcome.errors["pipe"]
    assert "config.json" in outcome.entries


def test_ignore_rules_are_overridable(model: Path, keys) -> None:
    (model / "logs").mkdir()
    (model / "logs" / "run.txt").write_text("x")
    result = sign_directory(model, keys.private_path, ignore=["logs/*.txt"], use_default_ignores=False)
    assert result.ignore_rules == ["logs/*.txt"] and result.ignored == ["logs/run.txt"]
    paths = [f["path"] for f in json.loads((model / MANIFEST_NAME).read_text())["files"]]
    assert ".git/HEAD" in paths and "logs/run.txt" not in paths
    (model / "logs" / "run.txt").write_text("changed")  # ignored: still intact
    (model / ".git" / "HEAD").write_text("tampered")  # not ignored any more: changed
    report = verify_directory(model, keys.public_path)
    assert [c.path for c in report.changed] == [".git/HEAD"]
    assert verify_directory(model, keys.public_path, ignore=[".git"]).ok


def test_non_directory_is_a_usage_error(model: Path, keys) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        sign_directory(model / "config.json", keys.private_path)
    with pytest.raises(UsageError, match="not found"):
        verify_directory(model / "nope", keys.public_path)


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_keygen_sign_verify(tmp_path: Path, model: Path) -> None:
    prefix = tmp_path / "cli"
    res = runner.invoke(app, ["keygen", "--out", str(prefix), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["private_key"] == f"{prefix}.key"
    res = runner.invoke(app, ["sign", str(model), "--key", f"{prefix}.key", "--chunk-size", str(CHUNK)])
    assert res.exit_code == 0, res.output
    assert "ignore rules" in res.output and ".git" in res.output
    res = runner.invoke(app, ["verify", str(model), "--key", f"{prefix}.pub"])
    assert res.exit_code == 0 and "OK" in res.output, res.output
    (model / "added.txt").write_text("x")
    res = runner.invoke(app, ["verify", str(model), "--key", f"{prefix}.pub", "--json"])
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["added"] == ["added.txt"] and doc["signature"] == "valid" and doc["ok"] is False


def test_cli_passphrase_comes_from_env_and_is_never_printed(tmp_path: Path, model: Path) -> None:
    secret = "s3cret-passphrase-value"
    env = {"MY_PASS": secret}
    res = runner.invoke(app, ["keygen", "--out", str(tmp_path / "e"), "--passphrase-env", "MY_PASS"], env=env)
    assert res.exit_code == 0 and "encrypted" in res.output and secret not in res.output
    res = runner.invoke(app, ["sign", str(model), "--key", str(tmp_path / "e.key"), "--passphrase-env", "MY_PASS"],
                        env=env)
    assert res.exit_code == 0, res.output
    assert secret not in res.output


def _bastion(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from bastion.cli.main import main; main()", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_cli_exit_codes_through_the_console_entry(tmp_path: Path, model: Path, keys) -> None:
    _signed(model, keys)
    ok = _bastion("verify", str(model), "--key", str(keys.public_path))
    assert ok.returncode == 0, ok.stderr
    (model / "config.json").write_text("tampered!!!!!")
    bad = _bastion("verify", str(model), "--key", str(keys.public_path))
    assert bad.returncode == 1 and "changed" in bad.stdout
    missing = _bastion("verify", str(model), "--key", str(tmp_path / "missing.pub"))
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    notdir = _bastion("sign", str(model / "config.json"), "--key", str(keys.private_path))
    assert notdir.returncode == 2 and "not a directory" in notdir.stderr
    (tmp_path / "corrupt.pub").write_text("garbage")
    corrupt = _bastion("verify", str(model), "--key", str(tmp_path / "corrupt.pub"))
    assert corrupt.returncode == 2 and "not a valid public key" in corrupt.stderr
    enc = generate_keypair(tmp_path / "enc", passphrase=b"pw")
    nopass = _bastion("sign", str(model), "--key", str(enc.private_path), env={"BASTION_KEY_PASSPHRASE": ""})
    assert nopass.returncode == 2 and "BASTION_KEY_PASSPHRASE" in nopass.stderr


# --------------------------------------------------------------------------- OpenSSF model signing (OMS)


@pytest.fixture()
def oms_keys(tmp_path: Path):
    (tmp_path / "oms-keys").mkdir()
    return generate_keypair(tmp_path / "oms-keys" / "k", algorithm="ecdsa-p256")


def _model_signing():
    return pytest.importorskip("model_signing", reason="model_signing (pip install model-signing, in the test "
                                                       "extra) verifies bastion's OMS bundles and signs the reverse")


def test_model_signing_verifies_what_bastion_signs(model: Path, oms_keys) -> None:
    ms = _model_signing()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/other\n")  # git metadata is ignored, like model_signing
    res = runner.invoke(app, ["sign", str(model), "--key", str(oms_keys.private_path), "--format", "oms", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["files"] == 4 and doc["key_id"] == oms_keys.key_id
    verifier = ms.verifying.Config().use_elliptic_key_verifier(public_key=oms_keys.public_path)
    verifier.verify(model, model / "model.sig")  # raises on any mismatch
    (model / "config.json").write_text('{"layers": 4}')
    with pytest.raises(ValueError, match="config.json"):
        ms.verifying.Config().use_elliptic_key_verifier(public_key=oms_keys.public_path).verify(
            model, model / "model.sig")


def test_bastion_verifies_what_model_signing_signs(tmp_path: Path, model: Path, oms_keys) -> None:
    ms = _model_signing()
    bundle = tmp_path / "model.sig"  # model_signing's CLI default: a bundle beside the model
    ms.signing.Config().use_elliptic_key_signer(private_key=oms_keys.private_path).sign(model, bundle)
    args = ["verify", str(model), "--key", str(oms_keys.public_path), "--signature", str(bundle)]
    res = runner.invoke(app, args)  # the ECDSA key selects the OMS format
    assert res.exit_code == 0 and "OK" in res.output, res.output
    (model / "sub" / "tokenizer.txt").write_text("a b d\n")
    (model / "new.bin").write_bytes(b"\0")
    (model / "empty").unlink()
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.output)
    assert (doc["signature"], doc["added"], doc["removed"]) == ("valid", ["new.bin"], ["empty"])
    assert [c["path"] for c in doc["changed"]] == ["sub/tokenizer.txt"]


def test_oms_signature_faults_are_named(tmp_path: Path, model: Path, oms_keys, keys) -> None:
    from bastion.supply.oms import sign_oms, verify_oms

    sign_oms(model, oms_keys.private_path)
    other = generate_keypair(tmp_path / "oms-keys" / "other", algorithm="ecdsa-p384")
    report = verify_oms(model, other.public_path)
    assert report.signature == "invalid" and "wrong key?" in report.signature_detail
    bundle = json.loads((model / "model.sig").read_text())
    payload = json.loads(__import__("base64").b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "00" * 32
    bundle["dsseEnvelope"]["payload"] = __import__("base64").b64encode(json.dumps(payload).encode()).decode()
    (model / "model.sig").write_text(json.dumps(bundle))
    report = verify_oms(model, oms_keys.public_path)
    assert report.signature == "invalid" and "modified after signing" in report.signature_detail and not report.ok
    (model / "model.sig").unlink()
    assert verify_oms(model, oms_keys.public_path).signature == "missing"
    with pytest.raises(KeyFileError, match="ECDSA keys"):  # an Ed25519 key cannot make an OMS bundle
        sign_oms(model, keys.private_path)
    with pytest.raises(UsageError, match="without wildcards"):
        sign_oms(model, oms_keys.private_path, ignore=["*.tmp"])
    os.symlink("config.json", model / "link.json")
    with pytest.raises(UsageError, match="symbolic link"):
        sign_oms(model, oms_keys.private_path)
    res = runner.invoke(app, ["sign", str(model), "--key", str(keys.private_path), "--format", "oms"])
    assert isinstance(res.exception, KeyFileError) and res.exception.exit_code == 2
    assert "keygen --algorithm ecdsa-p256" in str(res.exception)


def test_cli_refuses_bastion_manifest_options_with_oms(model: Path, oms_keys) -> None:
    for extra in (["--no-default-ignores"], ["--chunk-size", str(CHUNK)]):
        res = runner.invoke(app, ["sign", str(model), "--key", str(oms_keys.private_path), "--format", "oms", *extra])
        assert isinstance(res.exception, UsageError) and "not --format oms" in str(res.exception)
    assert not (model / "model.sig").exists()
