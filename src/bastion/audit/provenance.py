"""Provenance: a manifest of a data set (per file: SHA-256, size, record count, schema, one stable
hash per record; a source note), and an audit that lists what was added, removed or changed since.

Records are matched by a key column when one is given (``key``: added, removed, changed); without
one, by content (a record whose hash is gone was removed, a new hash was added) and a record
removed and one added at the same row are reported as changed in place. The manifest is JSON;
record hashes are packed little-endian uint64, base64-encoded (12 characters a record).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from bastion.audit.base import AuditFinding, DataAudit
from bastion.audit.profile import Profile
from bastion.core.params import Params
from bastion.core.results import Severity
from bastion.core.run import RunContext
from bastion.errors import DataError

MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(a.astype("<u8").tobytes()).decode("ascii")


def _unpack(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<u8").astype(np.uint64)


def build_manifest(data: Profile, note: str = "") -> dict[str, Any]:
    """The manifest of a profiled data set."""
    files = []
    for i, s in enumerate(data.sources):
        mine = data.file == i
        order = np.argsort(data.row[mine], kind="stable")
        entry: dict[str, Any] = {
            "path": s.path.name, "split": s.split, "bytes": s.path.stat().st_size if s.path.exists() else None,
            "sha256": sha256_file(s.path) if s.path.is_file() else None, "records": int(mine.sum()),
            "columns": [{"name": c, "kind": data.info[c].kind.value} for c in data.columns],
            "rows": _pack(data.row[mine][order].astype(np.uint64)),
            "record_hashes": _pack(data.record_hash[mine][order]),
            "key_hashes": _pack(data.key_hash[mine][order]) if data.key_hash is not None else None}
        files.append(entry)
    return {"bastion_manifest": MANIFEST_VERSION, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "note": note, "label": data.label, "key": data.key, "files": files}


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"--manifest {path}: cannot read the manifest: {exc}",
                        hint="write one with: bastion audit-data DATA --write-manifest FILE") from exc
    if not isinstance(doc, dict) or doc.get("bastion_manifest") != MANIFEST_VERSION or not isinstance(
            doc.get("files"), list):
        raise DataError(f"--manifest {path}: not a bastion data manifest (version {MANIFEST_VERSION})")
    return doc


class ProvenanceParams(Params):
    manifest: dict[str, Any] = Field(description="A manifest from build_manifest (or load_manifest).")
    examples: int = Field(5, ge=0, description="Changed records named per file in a finding.")


class ProvenanceAudit(DataAudit):
    """What changed since the manifest: files, schemas and records (added, removed, changed)."""

    name = "provenance"
    Params = ProvenanceParams

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        p: ProvenanceParams = self.params  # type: ignore[assignment]
        old_files = {(f["split"], f["path"]): f for f in p.manifest["files"]}
        out = []
        seen = set()
        for i, s in enumerate(data.sources):
            ident = (s.split, s.path.name)
            seen.add(ident)
            old = old_files.get(ident)
            if old is None:
                out.append(AuditFinding(rule_id="BASTION-DA-020", severity=Severity.high, location=str(s.path),
                                        title=f"{s.path.name} ({s.split}) is not in the manifest",
                                        records=np.flatnonzero(data.file == i).tolist()))
                continue
            if old.get("sha256") and s.path.is_file() and sha256_file(s.path) == old["sha256"]:
                continue
            out += self._diff(data, i, old, p.examples)
        for ident, old in old_files.items():
            if ident not in seen:
                out.append(AuditFinding(rule_id="BASTION-DA-020", severity=Severity.high,
                                        title=f"{old['path']} ({old['split']}, {old['records']} records) is in the "
                                              "manifest but was not given", measurements={"removed": old["records"]}))
        return out

    @staticmethod
    def _diff(data: Profile, i: int, old: dict[str, Any], k: int) -> list[AuditFinding]:
        s = data.sources[i]
        idx = np.flatnonzero(data.file == i)
        idx = idx[np.argsort(data.row[idx], kind="stable")]
        new_h, new_rows = data.record_hash[idx], data.row[idx]
        old_h, old_rows = _unpack(old["record_hashes"]), _unpack(old["rows"]).astype(np.int64)
        schema_old = [(c["name"], c["kind"]) for c in old["columns"]]
        schema_new = [(c, data.info[c].kind.value) for c in data.columns]
        notes = [] if schema_old == schema_new else [f"schema changed: {_schema_diff(schema_old, schema_new)}"]
        if old.get("key_hashes") and data.key_hash is not None:
            ok, nk = _unpack(old["key_hashes"]), data.key_hash[idx]
            added = ~np.isin(nk, ok)
            removed = ~np.isin(ok, nk)
            common_new = np.flatnonzero(~added)
            pos = {int(h): j for j, h in enumerate(ok.tolist())}
            changed_new = common_new[[old_h[pos[int(h)]] != new_h[j] for j, h in zip(common_new, nk[common_new])]] \
                if len(common_new) else common_new
            changed = np.zeros(len(idx), bool)
            changed[changed_new] = True
            removed_rows = old_rows[removed]
        else:
            added = ~np.isin(new_h, old_h)
            removed = ~np.isin(old_h, new_h)
            in_place = np.intersect1d(new_rows[added], old_rows[removed])
            changed = added & np.isin(new_rows, in_place)
            added &= ~changed
            removed_rows = old_rows[removed & ~np.isin(old_rows, in_place)]
        n_add, n_rem, n_chg = int(added.sum()), len(removed_rows), int(changed.sum())
        if not (n_add or n_rem or n_chg or notes):
            return []
        samples = ([f"row {int(r) + 1} changed" for r in new_rows[changed][:k]]
                   + [f"row {int(r) + 1} added" for r in new_rows[added][:k]]
                   + [f"old row {int(r) + 1} removed" for r in removed_rows[:k]] + notes)
        return [AuditFinding(
            rule_id="BASTION-DA-020", severity=Severity.high, location=str(s.path), columns=[],
            title=f"{s.path.name} ({s.split}): {n_add} record(s) added, {n_rem} removed, {n_chg} changed since the "
                  f"manifest{'; ' + notes[0] if notes else ''}",
            records=idx[added | changed].tolist(),
            measurements={"added": n_add, "removed": n_rem, "changed": n_chg}, samples=samples)]


def _schema_diff(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> str:
    o, n = dict(old), dict(new)
    parts = [f"-{c}" for c in o if c not in n] + [f"+{c}" for c in n if c not in o]
    parts += [f"{c}: {o[c]} -> {n[c]}" for c in o if c in n and o[c] != n[c]]
    return ", ".join(parts) or "columns reordered"
