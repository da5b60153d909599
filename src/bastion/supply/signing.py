"""Sign a model directory and verify it: Ed25519 over a manifest of SHA-256 digests.

``sign_directory`` writes ``bastion-manifest.json`` (see :mod:`bastion.supply.manifest` for the
format) and ``bastion-manifest.json.sig``, an Ed25519 signature (RFC 8032) over the exact bytes of
the manifest file. ``verify_directory`` checks the signature with a public key, re-hashes the
directory and reports files added, removed, changed, unreadable, and a bad signature, each
distinctly. Keys are PEM files (PKCS#8 private key, optionally passphrase-encrypted;
SubjectPublicKeyInfo public key), as written by :func:`generate_keypair`; ECDSA keys made there sign
OpenSSF model-signing bundles instead (:mod:`bastion.supply.oms`).

Example::

    from bastion.supply.signing import generate_keypair, sign_directory, verify_directory
    keys = generate_keypair("release")            # release.key (0600) + release.pub
    sign_directory("my-model", keys.private_path)
    report = verify_directory("my-model", keys.public_path)
    assert report.ok, report.summary()
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bastion.core.io import atomic_write_bytes
from bastion.errors import UsageError
from bastion.supply.manifest import (
    DEFAULT_CHUNK_SIZE,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MIN_CHUNK_SIZE,
    SIGNATURE_NAME,
    Entry,
    build_manifest,
    content_digest,
    effective_rules,
    hash_files,
    link_escapes,
    path_ignored,
    walk_directory,
)

logger = logging.getLogger(__name__)

SIGNATURE_FORMAT = "bastion-signature/1"
#: Environment variable read for a private key's passphrase (never a command-line argument).
PASSPHRASE_ENV = "BASTION_KEY_PASSPHRASE"
#: Key algorithms ``generate_keypair`` makes: Ed25519 signs bastion manifests, ECDSA keys sign
#: OpenSSF model-signing (OMS) bundles (see :mod:`bastion.supply.oms`).
KEY_ALGORITHMS: dict[str, ec.EllipticCurve | None] = {
    "ed25519": None, "ecdsa-p256": ec.SECP256R1(), "ecdsa-p384": ec.SECP384R1(),
}
#: Which key type each signature format needs.
KeyKind = Literal["ed25519", "ecdsa"]
_EC_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}

__all__ = [
    "MANIFEST_NAME", "SIGNATURE_NAME", "PASSPHRASE_ENV", "KeyFileError", "KeyPair", "SignResult",
    "Change", "VerifyReport", "generate_keypair", "load_private_key", "load_public_key", "key_id",
    "sign_directory", "verify_directory", "read_signed_manifest", "KEY_ALGORITHMS", "public_key_kind",
]


class KeyFileError(UsageError):
    """A key file is missing, unreadable, corrupt, of the wrong kind, or its passphrase is wrong."""


class NotADirectoryUsageError(UsageError):
    """The model path is not a directory."""


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str
    encrypted: bool


def key_id(public_key: Ed25519PublicKey | ec.EllipticCurvePublicKey) -> str:
    """Short, stable id of a public key.

    Ed25519: ``ed25519:`` + first 16 hex of the SHA-256 of the raw 32 bytes. ECDSA:
    ``ecdsa-p256:`` (or p384, p521) + first 16 hex of the SHA-256 of the PEM public key, the
    prefix of the key hint that OMS bundles carry.
    """
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        curve = _EC_CURVES.get(public_key.curve.name, public_key.curve.name)
        return f"ecdsa-{curve}:" + hashlib.sha256(pem).hexdigest()[:16]
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(
    out_prefix: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    overwrite: bool = False,
    algorithm: str = "ed25519",
) -> KeyPair:
    """Create ``PREFIX.key`` (PKCS#8 PEM, mode 0600, encrypted if ``passphrase``) and ``PREFIX.pub``.

    ``algorithm``: ``ed25519`` (bastion manifests) or ``ecdsa-p256`` / ``ecdsa-p384`` (OMS bundles).
    """
    if algorithm not in KEY_ALGORITHMS:
        raise UsageError(f"unknown key algorithm {algorithm!r}; choose one of {', '.join(KEY_ALGORITHMS)}")
    prefix = Path(out_prefix)
    priv_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not overwrite:
        existing = [str(p) for p in (priv_path, pub_path) if p.exists()]
        if existing:
            raise KeyFileError(f"refusing to overwrite existing key file(s): {', '.join(existing)}",
                            hint="choose another --out prefix, or pass --force")
    if prefix.parent and not prefix.parent.is_dir():
        raise KeyFileError(f"directory {prefix.parent} does not exist")
    curve = KEY_ALGORITHMS[algorithm]
    key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
        Ed25519PrivateKey.generate() if curve is None else ec.generate_private_key(curve))
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    priv_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(priv_path, priv_pem)  # mkstemp creates the file 0600 before any byte is written
    os.chmod(priv_path, 0o600)
    atomic_write_bytes(pub_path, pub_pem)
    os.chmod(pub_path, 0o644)
    kid = key_id(key.public_key())
    logger.info("wrote key pair %s / %s (%s)", priv_path, pub_path, kid)
    return KeyPair(priv_path, pub_path, kid, bool(passphrase))


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    path = Path(path)
    if not path.exists():
        raise KeyFileError(f"{what} file not found: {path}")
    if path.is_dir():
        raise KeyFileError(f"{what} path is a directory, not a key file: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise KeyFileError(f"{path} is not a key file ({len(data)} bytes)")
    return data


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None, *,
                     kind: KeyKind = "ed25519") -> Any:
    """Load a private key of ``kind`` (PEM, or OpenSSH for Ed25519); clear errors for every way it can fail."""
    data = _read_key_file(path, "private key")
    if b"PUBLIC KEY" in data or data.startswith((b"ssh-ed25519", b"ecdsa-sha2")):
        raise KeyFileError(f"{path} holds a public key; signing needs the private key",
                        hint="pass the .key file written by 'bastion keygen'")
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=passphrase)
        else:
            key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase:
            raise KeyFileError(f"{path} is not encrypted, but a passphrase was given",
                            hint=f"unset {PASSPHRASE_ENV}") from None
        raise KeyFileError(f"{path} is encrypted and no passphrase was given",
                        hint=f"set the passphrase in the environment variable {PASSPHRASE_ENV}") from None
    except ValueError as exc:
        if passphrase and b"ENCRYPTED" in data:
            raise KeyFileError(f"wrong passphrase for {path}") from None
        raise KeyFileError(f"{path} is not a valid private key file ({exc})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and friends
        raise KeyFileError(f"{path} is not a usable private key ({type(exc).__name__}: {exc})") from None
    _check_kind(key, path, kind, Ed25519PrivateKey, ec.EllipticCurvePrivateKey)
    return key


def _describe(key: Any) -> str:
    name = type(key).__name__.lstrip("_")
    for word, text in (("Ed25519", "an Ed25519 key"), ("EllipticCurve", "an ECDSA key"), ("RSA", "an RSA key"),
                       ("DSA", "a DSA key"), ("Ed448", "an Ed448 key")):
        if word in name or (word == "EllipticCurve" and name.startswith("EC")):
            return text
    return f"a {name}"


def _check_kind(key: Any, path: str | os.PathLike[str], kind: KeyKind, ed_type: type, ec_type: type) -> None:
    """Refuse a key of another type than the signature format needs, saying which key to make."""
    if kind == "ed25519" and not isinstance(key, ed_type):
        raise KeyFileError(f"{path} holds {_describe(key)}, bastion manifests are signed "
                           "with Ed25519 keys",
                           hint="make one with 'bastion keygen' (ECDSA keys sign OMS bundles: --format oms)")
    if kind == "ecdsa":
        if not isinstance(key, ec_type):
            raise KeyFileError(f"{path} holds {_describe(key)}, OMS (OpenSSF model signing) "
                               "bundles are signed with ECDSA keys (P-256, P-384 or P-521)",
                               hint="make one with 'bastion keygen --algorithm ecdsa-p256'")
        if key.curve.name not in _EC_CURVES:
            raise KeyFileError(f"{path} is an ECDSA key on curve {key.curve.name}; OMS accepts P-256, P-384 "
                               "and P-521 only", hint="make one with 'bastion keygen --algorithm ecdsa-p256'")


def load_public_key(path: str | os.PathLike[str], *, kind: KeyKind = "ed25519") -> Any:
    """Load a public key of ``kind`` (PEM SubjectPublicKeyInfo or one OpenSSH line)."""
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} holds a private key; verification needs the public key",
                        hint="pass the .pub file written by 'bastion keygen' (never share the .key)")
    try:
        if data.lstrip().startswith((b"ssh-", b"ecdsa-sha2")):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except Exception as exc:  # ValueError, UnsupportedAlgorithm
        raise KeyFileError(f"{path} is not a valid public key file ({exc})") from None
    _check_kind(key, path, kind, Ed25519PublicKey, ec.EllipticCurvePublicKey)
    return key


def public_key_kind(path: str | os.PathLike[str]) -> KeyKind:
    """Which signature format a public key file verifies: ``ed25519`` (bastion) or ``ecdsa`` (OMS)."""
    data = _read_key_file(path, "public key")
    try:
        key = (serialization.load_ssh_public_key(data.strip()) if data.lstrip().startswith((b"ssh-", b"ecdsa-sha2"))
               else serialization.load_pem_public_key(data))
    except Exception:
        return "ed25519"  # load_public_key then says what is wrong with the file
    return "ecdsa" if isinstance(key, ec.EllipticCurvePublicKey) else "ed25519"


# --------------------------------------------------------------------------- sign


@dataclass
class SignResult:
    root: Path
    manifest_path: Path
    signature_path: Path
    key_id: str
    content_digest: str
    files: int
    symlinks: int
    bytes_hashed: int
    ignored: list[str]
    ignore_rules: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for k in ("root", "manifest_path", "signature_path"):
            doc[k] = str(doc[k])
        return doc


def require_model_dir(root: str | os.PathLike[str]) -> Path:
    root = Path(root)
    if not root.exists():
        raise NotADirectoryUsageError(f"model directory not found: {root}")
    if not root.is_dir():
        raise NotADirectoryUsageError(f"{root} is not a directory",
                                      hint="sign and verify work on a model directory; put the file in one")
    return root


def sign_directory(
    root: str | os.PathLike[str],
    key: Ed25519PrivateKey | str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    ignore: Sequence[str] | None = None,
    use_default_ignores: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SignResult:
    """Hash ``root``, write its manifest and an Ed25519 signature of it; refuse what cannot be covered.

    Refused (``UsageError``): special files (FIFOs, devices), unreadable files, and symlinks whose
    target leaves the directory. ``key`` is a private key object or the path of a PEM key file.
    """
    t0 = time.perf_counter()
    root = require_model_dir(root)
    if chunk_size < MIN_CHUNK_SIZE:
        raise UsageError(f"--chunk-size must be at least {MIN_CHUNK_SIZE} bytes, got {chunk_size}")
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key, passphrase)
    rules = effective_rules(ignore, use_default_ignores)
    built = build_manifest(root, rules, chunk_size=chunk_size, workers=workers, progress=progress)
    walk = built.walk
    problems: list[str] = []
    problems += [f"{p}: special file (FIFO, socket or device)" for p in walk.special]
    problems += [f"{p}: symlink to '{t}' leaves the directory" for p, t in walk.symlinks if link_escapes(p, t)]
    problems += [f"{p}: {why}" for p, why in walk.unreadable]
    problems += [f"{p}: {why}" for p, why in sorted(built.errors.items())]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise UsageError(f"cannot sign {root}: {len(problems)} path(s) cannot be covered by a signature:\n  {shown}",
                         hint="fix the permissions, remove the links/special files, or exclude them with --ignore")
    doc = dict(built.document)
    doc["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest_bytes = (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode("ascii")
    signature = private.sign(manifest_bytes)
    kid = key_id(private.public_key())
    sig_doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": kid,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    manifest_path, sig_path = root / MANIFEST_NAME, root / SIGNATURE_NAME
    try:
        atomic_write_bytes(manifest_path, manifest_bytes)
        atomic_write_bytes(sig_path, (json.dumps(sig_doc, indent=2) + "\n").encode("ascii"))
    except OSError as exc:
        raise UsageError(f"cannot write the manifest into {root}: {exc.strerror or exc}") from None
    logger.info("signed %s with %s: %s", root, kid, doc["content_digest"])
    return SignResult(
        root=root, manifest_path=manifest_path, signature_path=sig_path, key_id=kid,
        content_digest=str(doc["content_digest"]), files=len(walk.files), symlinks=len(walk.symlinks),
        bytes_hashed=built.bytes_hashed, ignored=walk.ignored, ignore_rules=rules,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Change:
    path: str
    reason: str


SignatureStatus = Literal["valid", "invalid", "missing"]
ManifestStatus = Literal["ok", "missing", "corrupt"]


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_directory`; ``ok`` only if nothing at all is wrong."""

    root: str
    signature: SignatureStatus = "missing"
    signature_detail: str = ""
    manifest: ManifestStatus = "missing"
    manifest_detail: str = ""
    key_id: str | None = None
    signed_key_id: str | None = None
    content_digest: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unreadable: list[Change] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    ignore_rules: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0

    @property
    def intact(self) -> bool:
        """The files match the manifest (whatever the signature says)."""
        return (self.manifest == "ok" and not self.added and not self.removed
                and not self.changed and not self.unreadable)

    @property
    def ok(self) -> bool:
        return self.signature == "valid" and self.intact

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.manifest != "ok":
            out.append(f"manifest {self.manifest}: {self.manifest_detail}")
        if self.signature != "valid":
            out.append(f"signature {self.signature}: {self.signature_detail}")
        out += [f"added: {p}" for p in self.added]
        out += [f"removed: {p}" for p in self.removed]
        out += [f"changed: {c.path} ({c.reason})" for c in self.changed]
        out += [f"unreadable: {c.path} ({c.reason})" for c in self.unreadable]
        return out

    def summary(self) -> str:
        if self.ok:
            return f"{self.root}: intact, signature valid ({self.key_id}), {self.files_checked} files"
        return f"{self.root}: " + "; ".join(self.problems())

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        doc["intact"] = self.intact
        return doc


def read_signed_manifest(
    root: Path, public_key: Ed25519PublicKey, report: VerifyReport
) -> dict[str, Any] | None:
    """Check the signature over the manifest bytes and parse the manifest; fill ``report``."""
    manifest_path, sig_path = root / MANIFEST_NAME, root / SIGNATURE_NAME
    report.key_id = key_id(public_key)
    try:
        manifest_bytes = manifest_path.read_bytes()
    except FileNotFoundError:
        report.manifest, report.manifest_detail = "missing", f"no {MANIFEST_NAME} in the directory (not signed)"
        report.signature, report.signature_detail = "missing", "nothing to verify"
        return None
    except OSError as exc:
        report.manifest, report.manifest_detail = "corrupt", f"cannot read {MANIFEST_NAME}: {exc.strerror or exc}"
        return None
    try:
        sig_doc = json.loads(sig_path.read_bytes())
        if not isinstance(sig_doc, dict) or sig_doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("not a bastion signature file")
        signature = base64.b64decode(str(sig_doc["signature"]), validate=True)
        report.signed_key_id = str(sig_doc.get("key_id")) if sig_doc.get("key_id") else None
    except FileNotFoundError:
        report.signature, report.signature_detail = "missing", f"no {SIGNATURE_NAME} next to the manifest"
    except (OSError, ValueError, KeyError, binascii.Error) as exc:
        report.signature, report.signature_detail = "invalid", f"{SIGNATURE_NAME} is unreadable or malformed ({exc})"
    else:
        try:
            public_key.verify(signature, manifest_bytes)
            report.signature, report.signature_detail = "valid", f"signed by {report.key_id}"
        except InvalidSignature:
            report.signature = "invalid"
            if report.signed_key_id and report.signed_key_id != report.key_id:
                report.signature_detail = (f"signed by key {report.signed_key_id}, "
                                           f"not by the given key {report.key_id} (wrong key?)")
            else:
                report.signature_detail = "the manifest or the signature was modified after signing"
    try:
        doc = json.loads(manifest_bytes)
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is not {MANIFEST_FORMAT}")
        chunk_size = int(doc["hashing"]["chunk_size"])
        if chunk_size < MIN_CHUNK_SIZE:
            raise ValueError(f"chunk_size {chunk_size} too small")
        doc["_entries"] = {e.path: e for e in (Entry.from_dict(x) for x in doc["files"])}
        rules = doc.get("ignore", [])
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise ValueError("'ignore' must be a list of strings")
        if content_digest(doc["files"]) != doc.get("content_digest"):
            raise ValueError("content_digest does not match the files list")
    except (ValueError, KeyError, TypeError) as exc:
        report.manifest, report.manifest_detail = "corrupt", f"{MANIFEST_NAME} is not a valid manifest ({exc})"
        return None
    report.manifest, report.manifest_detail = "ok", ""
    report.content_digest = str(doc["content_digest"])
    return doc


def verify_directory(
    root: str | os.PathLike[str],
    key: Ed25519PublicKey | str | os.PathLike[str],
    *,
    ignore: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify ``root`` against its signed manifest; never raises for a tampered directory.

    The ignore rules are those recorded in the (signed) manifest plus ``ignore``. Files are compared
    by type, link target and size first; only files whose size matches are re-hashed, with the
    manifest's chunk size. ``UsageError`` only for a bad key or a path that is not a directory.
    """
    t0 = time.perf_counter()
    root = require_model_dir(root)
    public = key if isinstance(key, Ed25519PublicKey) else load_public_key(key)
    report = VerifyReport(root=str(root))
    doc = read_signed_manifest(root, public, report)
    if doc is None:
        report.seconds = time.perf_counter() - t0
        return report
    expected: dict[str, Entry] = doc.pop("_entries")
    rules = list(doc.get("ignore", []))
    for extra in ignore or ():
        if extra and extra not in rules:
            rules.append(extra)
    report.ignore_rules = rules
    if len(rules) > len(doc.get("ignore", [])):  # rules added at verify time also hide manifest entries
        for hidden in [p for p in expected if path_ignored(p, rules)]:
            del expected[hidden]
    walk = walk_directory(root, rules)
    report.ignored = walk.ignored
    report.unreadable += [Change(p, why) for p, why in walk.unreadable]
    found_files = dict(walk.files)
    found_links = dict(walk.symlinks)
    present = set(found_files) | set(found_links) | set(walk.special)
    report.added = sorted(p for p in present if p not in expected)
    report.removed = sorted(p for p in expected if p not in present and not _under_unreadable(p, walk.unreadable))
    to_hash: list[tuple[str, int]] = []
    for path in sorted(set(expected) & present):
        want = expected[path]
        if path in walk.special:
            report.changed.append(Change(path, f"was a {want.type}, is now a special file"))
        elif path in found_links:
            if want.type != "symlink":
                report.changed.append(Change(path, "was a file, is now a symlink"))
            elif found_links[path] != want.target:
                report.changed.append(Change(path, f"link target '{want.target}' -> '{found_links[path]}'"))
        elif want.type != "file":
            report.changed.append(Change(path, "was a symlink, is now a file"))
        elif found_files[path] != want.size:
            report.changed.append(Change(path, f"size {want.size} -> {found_files[path]} bytes"))
        else:
            to_hash.append((path, found_files[path]))
    outcome = hash_files(root, to_hash, chunk_size=int(doc["hashing"]["chunk_size"]), workers=workers,
                         progress=progress)
    report.bytes_hashed = outcome.bytes_hashed
    report.unreadable += [Change(p, why) for p, why in sorted(outcome.errors.items())]
    for path, got in outcome.entries.items():
        want = expected[path]
        if got.digest != want.digest:
            report.changed.append(Change(path, _content_reason(want, got)))
    report.changed.sort(key=lambda c: c.path)
    report.files_checked = len(expected)
    report.seconds = time.perf_counter() - t0
    logger.info("verified %s: %s", root, "ok" if report.ok else "; ".join(report.problems()))
    return report


def _under_unreadable(path: str, unreadable: list[tuple[str, str]]) -> bool:
    return any(path == p or path.startswith(p + "/") or p == "." for p, _ in unreadable)


def _content_reason(want: Entry, got: Entry) -> str:
    if want.chunks and got.chunks and len(want.chunks) == len(got.chunks):
        bad = [i for i, (a, b) in enumerate(zip(want.chunks, got.chunks)) if a != b]
        if bad:
            shown = ", ".join(str(i) for i in bad[:8]) + (" ..." if len(bad) > 8 else "")
            return f"content differs (chunk(s) {shown} of {len(want.chunks)})"
    return "content differs (same size, different SHA-256)"
