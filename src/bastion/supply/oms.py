"""OpenSSF model signing (OMS): key-based, offline signatures that other tools verify.

``sign_oms`` writes ``model.sig`` into a model directory: a Sigstore bundle (v0.3, JSON) whose DSSE
envelope carries an in-toto Statement v1 with the predicate ``https://model_signing/signature/v1.0``,
signed with an ECDSA key (P-256, P-384 or P-521) and no transparency log. This is the format of the
OpenSSF ``model_signing`` package (``model_signing.signing.Config().use_elliptic_key_signer``), whose
``verify`` accepts what bastion writes, and whose bundles ``verify_oms`` checks. Built on
``cryptography`` alone, so it needs no extra.

The payload lists every file under the directory (``"method": "files"``, ``"hash_type": "sha256"``:
the plain SHA-256 of each file's bytes) as a resource, sorted by path components; the subject
digest is the SHA-256 over the concatenated raw resource digests in that order. Paths listed under
``ignore_paths`` (relative to the model directory, with everything under them) are left out, among
them the signature file itself and git metadata. Symbolic links are refused (``allow_symlinks:
false``), like ``model_signing`` does by default.

References: DSSE v1 (secure-systems-lab/dsse, "protocol.md": the PAE encoding signed here), in-toto
Attestation Framework v1 (Statement, ResourceDescriptor), Sigstore bundle v0.3, and the OpenSSF
model-signing specification (sigstore/model-transparency).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.core.io import atomic_write_bytes
from bastion.errors import UsageError
from bastion.supply.manifest import MANIFEST_NAME, MIN_CHUNK_SIZE, SIGNATURE_NAME, hash_files, walk_directory
from bastion.supply.signing import (
    Change,
    VerifyReport,
    require_model_dir,
    key_id,
    load_private_key,
    load_public_key,
)

logger = logging.getLogger(__name__)

OMS_SIGNATURE_NAME = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: What ``model_signing`` leaves out by default (git metadata), plus bastion's own manifest files.
DEFAULT_OMS_IGNORES: tuple[str, ...] = (".git", ".gitattributes", ".github", ".gitignore",
                                        MANIFEST_NAME, SIGNATURE_NAME)

__all__ = ["OMS_SIGNATURE_NAME", "OmsSignResult", "sign_oms", "verify_oms", "DEFAULT_OMS_IGNORES"]


@dataclass
class OmsSignResult:
    root: Path
    signature_path: Path
    key_id: str
    subject_digest: str
    files: int
    bytes_hashed: int
    ignore_paths: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"format": "oms", "root": str(self.root), "signature_path": str(self.signature_path),
                "key_id": self.key_id, "subject_digest": self.subject_digest, "files": self.files,
                "bytes_hashed": self.bytes_hashed, "ignore_paths": self.ignore_paths, "seconds": self.seconds}


def _pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    return b"DSSEv1 %d %s %d " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload)) + payload


def _hash_algorithm(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(curve.key_size, hashes.SHA512())


def _key_hint(public: ec.EllipticCurvePublicKey) -> str:
    """The key hint OMS bundles carry: SHA-256 (hex) of the PEM public key."""
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _relative_ignores(root: Path, signature_path: Path, ignore: Sequence[str]) -> list[str]:
    """OMS ``ignore_paths``: literal paths relative to the model directory (no wildcards)."""
    out = list(DEFAULT_OMS_IGNORES)
    try:
        sig_rel = signature_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        sig_rel = None  # the signature is written outside the directory
    extra = ([sig_rel] if sig_rel else []) + [p.strip("/") for p in ignore]
    for rule in extra:
        if any(ch in rule for ch in "*?["):
            raise UsageError(f"--ignore {rule!r}: OMS ignore paths are literal paths relative to the model "
                             "directory, without wildcards", hint="list each file or directory to leave out")
        if rule and rule not in out:
            out.append(rule)
    return out


def _ignored(rel: str, ignore_paths: Sequence[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in ignore_paths)


def _scan_files(root: Path, ignore_paths: Sequence[str]
                ) -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
    """(files with sizes, symlinks, (path, problem) pairs) under ``root`` after ``ignore_paths``."""
    walk = walk_directory(root, [])
    files = [(p, n) for p, n in walk.files if not _ignored(p, ignore_paths)]
    links = [p for p, _ in walk.symlinks if not _ignored(p, ignore_paths)]
    problems = [(p, "special file (FIFO, socket or device)") for p in walk.special if not _ignored(p, ignore_paths)]
    problems += [(p, why) for p, why in walk.unreadable if not _ignored(p, ignore_paths)]
    # walk_directory always skips bastion's manifest files at the top; OMS must see them unless ignored
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        if (root / name).is_file() and not _ignored(name, ignore_paths):
            files.append((name, (root / name).stat().st_size))
    return files, links, problems


def _digests(root: Path, files: list[tuple[str, int]], workers: int | None
             ) -> tuple[dict[str, str], dict[str, str], int]:
    """Plain SHA-256 (hex) of each whole file, files spread over threads: (digests, errors, bytes hashed)."""
    chunk = max([MIN_CHUNK_SIZE] + [n for _, n in files])  # one piece per file: the plain SHA-256
    outcome = hash_files(root, files, chunk_size=chunk, workers=workers)
    digests = {p: str(e.digest).split(":", 1)[1] for p, e in outcome.entries.items()}
    return digests, outcome.errors, outcome.bytes_hashed


def _sort_key(path: str) -> tuple[str, ...]:
    return PurePosixPath(path).parts  # model_signing orders resources by path components


def sign_oms(
    root: str | os.PathLike[str],
    key: ec.EllipticCurvePrivateKey | str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    ignore: Sequence[str] = (),
    signature_path: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> OmsSignResult:
    """Sign ``root`` in the OMS format; write the bundle to ``signature_path`` (default ``root/model.sig``).

    Refused (``UsageError``): symbolic links, special files and unreadable files (the signature could
    not cover them), a key that is not ECDSA P-256/P-384/P-521, wildcards in ``ignore``.
    """
    t0 = time.perf_counter()
    root = require_model_dir(root)
    private = key if isinstance(key, ec.EllipticCurvePrivateKey) else load_private_key(key, passphrase, kind="ecdsa")
    sig_path = Path(signature_path) if signature_path is not None else root / OMS_SIGNATURE_NAME
    ignore_paths = _relative_ignores(root, sig_path, ignore)
    files, links, found = _scan_files(root, ignore_paths)
    problems = [f"{p}: {why}" for p, why in found]
    problems += [f"{p}: symbolic link (OMS signatures are made without symlinks)" for p in links]
    digests, errors, nbytes = _digests(root, files, workers)
    problems += [f"{p}: {why}" for p, why in sorted(errors.items())]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise UsageError(f"cannot sign {root} in the OMS format: {len(problems)} path(s) cannot be covered:\n  {shown}",
                         hint="fix the permissions, remove the links/special files, or leave them out with --ignore")
    names = sorted(digests, key=_sort_key)
    subject = hashlib.sha256(b"".join(bytes.fromhex(digests[n]) for n in names)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": root.resolve().name, "digest": {"sha256": subject}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": ignore_paths},
            "resources": [{"name": n, "algorithm": "sha256", "digest": digests[n]} for n in names],
        },
    }
    payload = json.dumps(statement, indent=2).encode("utf-8")
    signature = private.sign(_pae(payload), ec.ECDSA(_hash_algorithm(private.curve)))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": _key_hint(private.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    try:
        atomic_write_bytes(sig_path, (json.dumps(bundle, indent=2) + "\n").encode("ascii"))
    except OSError as exc:
        raise UsageError(f"cannot write the OMS signature {sig_path}: {exc.strerror or exc}") from None
    kid = key_id(private.public_key())
    logger.info("signed %s (OMS) with %s: sha256:%s", root, kid, subject)
    return OmsSignResult(root, sig_path, kid, "sha256:" + subject, len(names), nbytes, ignore_paths,
                         time.perf_counter() - t0)


def _read_bundle(sig_path: Path, public: ec.EllipticCurvePublicKey, report: VerifyReport) -> dict[str, Any] | None:
    """Check the bundle's signature with ``public`` and return its in-toto statement; fill ``report``."""
    try:
        bundle = json.loads(sig_path.read_bytes())
        if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
            raise ValueError(f"not a Sigstore bundle of media type {BUNDLE_MEDIA_TYPE}")
        envelope = bundle["dsseEnvelope"]
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            raise ValueError(f"payload type {envelope.get('payloadType')!r}, expected {PAYLOAD_TYPE}")
        payload = base64.b64decode(envelope["payload"], validate=True)
        signature = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
        hint = ((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint")
    except FileNotFoundError:
        report.signature, report.signature_detail = "missing", f"no {sig_path.name} (not signed in the OMS format)"
        report.manifest, report.manifest_detail = "missing", "nothing to verify"
        return None
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, binascii.Error) as exc:
        report.signature, report.signature_detail = "invalid", f"{sig_path.name} is unreadable or malformed ({exc})"
        return None
    try:
        public.verify(signature, _pae(payload), ec.ECDSA(_hash_algorithm(public.curve)))
    except InvalidSignature:
        report.signature = "invalid"
        report.signature_detail = (f"signed by another key (hint {hint[:16]}), not by the given key "
                                   f"{report.key_id} (wrong key?)" if hint and hint != _key_hint(public)
                                   else "the bundle was modified after signing")
        return None
    report.signature, report.signature_detail = "valid", f"signed by {report.key_id}"
    try:
        statement = json.loads(payload)
        if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
            raise ValueError(f"not an in-toto statement with predicate {PREDICATE_TYPE}")
        serial = statement["predicate"]["serialization"]
        if serial.get("method") != "files" or serial.get("hash_type") != "sha256":
            raise ValueError(f"serialization {serial.get('method')}/{serial.get('hash_type')}: bastion verifies "
                             "'files' with sha256 (verify others with the model_signing package)")
        resources = statement["predicate"]["resources"]
        subject = statement["subject"][0]["digest"]["sha256"]
        if hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest() != subject:
            raise ValueError("the subject digest does not match the listed resources")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        report.manifest, report.manifest_detail = "corrupt", f"the signed statement is not usable ({exc})"
        return None
    report.manifest, report.content_digest = "ok", "sha256:" + subject
    return statement


def verify_oms(
    root: str | os.PathLike[str],
    key: ec.EllipticCurvePublicKey | str | os.PathLike[str],
    *,
    signature_path: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify ``root`` against an OMS bundle (bastion's or ``model_signing``'s); never raises for tampering.

    The report is the same :class:`~bastion.supply.signing.VerifyReport` as for bastion manifests:
    ``ok`` only if the signature verifies with ``key`` and no file was added, removed or changed.
    """
    t0 = time.perf_counter()
    root = require_model_dir(root)
    public = key if isinstance(key, ec.EllipticCurvePublicKey) else load_public_key(key, kind="ecdsa")
    sig_path = Path(signature_path) if signature_path is not None else root / OMS_SIGNATURE_NAME
    report = VerifyReport(root=str(root), key_id=key_id(public))
    statement = _read_bundle(sig_path, public, report)
    if statement is None:
        report.seconds = time.perf_counter() - t0
        return report
    serial = statement["predicate"]["serialization"]
    ignore_paths = [str(p).strip("/") for p in serial.get("ignore_paths", [])]
    try:
        sig_rel = sig_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        sig_rel = None  # the bundle lies outside the directory
    if sig_rel and sig_rel not in ignore_paths:
        ignore_paths.append(sig_rel)
    report.ignore_rules = ignore_paths
    expected = {str(r["name"]): str(r["digest"]) for r in statement["predicate"]["resources"]}
    files, links, problems = _scan_files(root, ignore_paths)
    report.unreadable += [Change(p, why) for p, why in problems]
    present = {p for p, _ in files} | set(links)
    report.added = sorted(p for p in present if p not in expected)
    report.removed = sorted(p for p in expected if p not in present)
    report.changed += [Change(p, "is now a symbolic link") for p in sorted(set(links) & set(expected))]
    digests, errors, report.bytes_hashed = _digests(root, [(p, n) for p, n in files if p in expected], workers)
    report.unreadable += [Change(p, why) for p, why in sorted(errors.items())]
    report.changed += [Change(p, "content differs (different SHA-256)") for p, d in sorted(digests.items())
                       if d != expected[p]]
    report.changed.sort(key=lambda c: c.path)
    report.files_checked = len(expected)
    report.seconds = time.perf_counter() - t0
    logger.info("verified %s (OMS): %s", root, "ok" if report.ok else "; ".join(report.problems()))
    return report
