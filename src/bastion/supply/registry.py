"""A model registry with provenance, deployment pointer and rollback (SQLAlchemy 2.0).

Every *version* of a model records where its files are, their content digest (see
:mod:`bastion.supply.manifest`), the signature status, the last scan verdict (``bastion inspect``)
and its provenance: source, dataset manifest hash, training code revision, notes. ``promote``
re-verifies the signature and re-scans the files at promote time and refuses a version that fails;
promoted versions form a deployment stack whose top is the deployed version; ``rollback`` pops it
back to the previous version that still passes its checks.

Storage is SQLite by default (``platformdirs.user_data_dir("bastion")/registry.db``), or any
SQLAlchemy URL (``Registry(url)``, env ``BASTION_REGISTRY_URL``). On SQLite the database runs in
WAL mode with a busy timeout, and every write transaction starts with ``BEGIN IMMEDIATE`` so
read-modify-write sequences from concurrent processes are serialised (the SQLAlchemy "pysqlite
serializable isolation" recipe); on other engines the model row is locked ``SELECT ... FOR UPDATE``
(tested on PostgreSQL with psycopg 3: lock waits are bounded by ``lock_timeout``, lock timeouts,
deadlocks and serialization failures are retried, first-time schema creation is serialised by an
advisory lock). Slow work (hashing, scanning) runs outside transactions. Text is stored so that
every engine accepts it: NUL characters and undecodable file names in check details are escaped,
and provenance fields are validated against the column sizes on every engine.

Example::

    from bastion.supply.registry import Registry
    reg = Registry("sqlite:///models.db")
    v = reg.add("fraud", "models/fraud-v3", key="release.pub", source="s3://bucket/fraud-v3",
                code_revision="9f2c1e0", dataset_hash="sha256:...")
    reg.promote("fraud", v.version)        # refuses if the signature or the scan fails
    reg.rollback("fraud")                  # back to the previous good version
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, validates

from bastion.errors import BastionError, BastionRuntimeError, UsageError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
REGISTRY_URL_ENV = "BASTION_REGISTRY_URL"
PROVENANCE_MAX = 200  # characters of dataset_hash and code_revision (their column size)
_SCHEMA_LOCK_KEY = 0x62617374696F6E  # pg_advisory_xact_lock key serialising first-time schema creation
# SQLSTATEs worth retrying: serialization failure, deadlock detected, lock not available (lock_timeout)
_RETRY_SQLSTATES = {"40001", "40P01", "55P03"}
_PG_LIBPQ_DRIVERS = {"psycopg", "psycopg2"}

__all__ = [
    "Registry", "VersionInfo", "ModelInfo", "EventInfo", "CheckOutcome", "PromoteResult", "RollbackResult",
    "RegistryError", "PromotionRefused", "default_registry_url", "check_version", "REGISTRY_URL_ENV",
]

T = TypeVar("T")


class RegistryError(UsageError):
    """A registry request that cannot work: unknown model or version, bad URL, duplicate version."""


class PromotionRefused(BastionError):
    """``promote`` or ``rollback`` refused: a check failed. CLI exit code 1 (a gate failed)."""

    exit_code = 1


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- schema


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "bastion_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    created_at: Mapped[str] = mapped_column(String(40))


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(Text)
    content_digest: Mapped[str] = mapped_column(String(80))
    signature_status: Mapped[str] = mapped_column(String(20))
    signature_detail: Mapped[str] = mapped_column(Text, default="")
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    public_key_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    scan_verdict: Mapped[str] = mapped_column(String(20))
    scan_worst: Mapped[str | None] = mapped_column(String(20), nullable=True)
    scan_findings: Mapped[int] = mapped_column(Integer, default=0)
    scan_detail: Mapped[str] = mapped_column(Text, default="")
    checked_at: Mapped[str] = mapped_column(String(40))
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    dataset_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    code_revision: Mapped[str | None] = mapped_column(String(200), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))

    @validates("signature_detail", "scan_detail")
    def _clean(self, _key: str, value: str | None) -> str | None:
        return _storable(value)


class DeploymentRow(Base):
    """One entry of a model's deployment stack; active entries have ``retired_at`` NULL."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    deployed_at: Mapped[str] = mapped_column(String(40))
    retired_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    retired_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class EventRow(Base):
    """Audit log: add, promote, promote-refused, rollback."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    at: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")

    @validates("detail")
    def _clean(self, _key: str, value: str | None) -> str | None:
        return _storable(value)


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: str
    path: str
    content_digest: str
    signature_status: str
    signature_detail: str
    key_id: str | None
    scan_verdict: str
    scan_worst: str | None
    scan_findings: int
    scan_detail: str
    checked_at: str
    source: str | None
    dataset_hash: str | None
    code_revision: str | None
    notes: str | None
    created_at: str
    deployed: bool = False

    @property
    def good(self) -> bool:
        """Whether the last recorded checks pass (valid signature, clean scan)."""
        return self.signature_status == "valid" and self.scan_verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["good"] = self.good
        return doc


@dataclass(frozen=True)
class ModelInfo:
    name: str
    created_at: str
    versions: int
    deployed: str | None
    latest: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EventInfo:
    at: str
    action: str
    version: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckOutcome:
    """Fresh checks of a version's files: signature, content digest and scan."""

    content_digest: str
    signature_status: str  # valid | invalid | tampered | unsigned | unverified
    signature_detail: str
    key_id: str | None
    scan_verdict: str  # pass | fail | error | not-scanned
    scan_worst: str | None
    scan_findings: int
    scan_detail: str

    def problems(self, expected_digest: str | None = None) -> list[str]:
        out = []
        if self.signature_status != "valid":
            out.append(f"signature {self.signature_status}: {self.signature_detail}")
        if expected_digest is not None and self.content_digest != expected_digest:
            out.append(f"content changed since it was registered ({expected_digest} -> {self.content_digest})")
        if self.scan_verdict != "pass":
            out.append(f"scan {self.scan_verdict}: {self.scan_detail}")
        return out


@dataclass
class PromoteResult:
    version: VersionInfo
    previous: str | None
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.to_dict(), "previous": self.previous, "changed": self.changed}


@dataclass
class RollbackResult:
    model: str
    from_version: str
    to_version: VersionInfo
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "from": self.from_version, "to": self.to_version.to_dict(),
                "skipped": [{"version": v, "reason": r} for v, r in self.skipped], "warnings": self.warnings}


# --------------------------------------------------------------------------- checks


def _scan(path: Path) -> tuple[str, str | None, int, str]:
    """Run ``bastion inspect`` on ``path``: (verdict, worst severity, number of findings, detail)."""
    try:
        from bastion.supply.inspect import scan_paths
    except ImportError as exc:
        return "not-scanned", None, 0, f"the model-file scanner is not available ({exc})"
    from bastion.core.severity import Severity

    try:
        result = scan_paths([path])
    except BastionError as exc:
        return "error", None, 0, str(exc)
    except Exception as exc:  # a crash of the scanner must not pass for a clean scan
        logger.exception("scan of %s crashed", path)
        return "error", None, 0, f"{type(exc).__name__}: {exc}"
    worst = result.worst()
    findings = list(result.findings)
    failed = result.failed(fail_on=Severity.high)
    errors = list(getattr(result, "errors", []))
    if failed:
        top = sorted(findings, key=lambda f: -f.severity.rank)[:3]
        detail = "; ".join(f"{f.severity.value}: {f.title} ({f.location})" for f in top)
        verdict = "fail"
    elif errors:  # a file that could not be scanned is not a clean file
        detail = "; ".join(f"{e.path}: {e.message}" for e in errors[:3])
        verdict = "error"
    else:
        detail = f"{len(findings)} finding(s) below high" if findings else "clean"
        verdict = "pass"
    return verdict, (worst.value if worst else None), len(findings), detail


def check_version(path: str | os.PathLike[str], public_key_pem: bytes | None, *, scan: bool = True) -> CheckOutcome:
    """Verify the signature (if a key is known), compute the content digest and scan ``path``."""
    from cryptography.hazmat.primitives import serialization

    from bastion.supply.manifest import (
        DEFAULT_CHUNK_SIZE,
        MANIFEST_NAME,
        build_manifest,
        effective_rules,
    )
    from bastion.supply.signing import key_id, verify_directory

    root = Path(path)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "not found"
        raise RegistryError(f"model directory {what}: {root}",
                            hint="a version is a directory of files; the registry records where it is, "
                                 "and the files must still be there at promote time")
    digest: str | None = None
    kid: str | None = None
    has_manifest = (root / MANIFEST_NAME).exists()
    if public_key_pem is None:
        status = "unverified" if has_manifest else "unsigned"
        detail = "signed, but no public key was given" if has_manifest else "no bastion-manifest.json"
    elif not has_manifest:
        status, detail = "unsigned", "no bastion-manifest.json"
    else:
        public = serialization.load_pem_public_key(public_key_pem)
        kid = key_id(public)  # type: ignore[arg-type]
        report = verify_directory(root, public)  # type: ignore[arg-type]
        if report.signature != "valid":
            status, detail = "invalid", report.signature_detail or report.manifest_detail
        elif not report.intact:
            status, detail = "tampered", "; ".join(report.problems()[:5])
        else:
            status, detail, digest = "valid", report.signature_detail, report.content_digest
    if digest is None:
        chunk = DEFAULT_CHUNK_SIZE
        rules = effective_rules(None, True)
        built = build_manifest(root, rules, chunk_size=chunk)
        if built.errors or built.walk.unreadable:
            raise RegistryError(f"cannot read every file under {root}: "
                                + ", ".join(list(built.errors)[:5] + [p for p, _ in built.walk.unreadable[:5]]))
        digest = built.content_digest
    if scan:
        verdict, worst, n, scan_detail = _scan(root)
    else:
        verdict, worst, n, scan_detail = "not-scanned", None, 0, "scan skipped"
    return CheckOutcome(digest, status, detail, kid, verdict, worst, n, scan_detail)


# --------------------------------------------------------------------------- registry


def default_registry_url() -> str:
    """``$BASTION_REGISTRY_URL`` or SQLite under the user data dir (platformdirs)."""
    env = os.environ.get(REGISTRY_URL_ENV)
    if env:
        return env
    import platformdirs

    return f"sqlite:///{Path(platformdirs.user_data_dir('bastion')) / 'registry.db'}"


def _is_locked(exc: OperationalError) -> bool:
    """A transient concurrency failure: SQLite busy/locked, or a PostgreSQL lock timeout, deadlock or
    serialization failure (SQLSTATE 55P03 / 40P01 / 40001), worth retrying the whole transaction."""
    if getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    msg = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return any(word in msg for word in ("locked", "busy", "deadlock", "lock timeout", "could not serialize"))


def _already_exists(exc: DBAPIError) -> bool:
    """Another process created the same table or index first (DDL race on engines without IMMEDIATE)."""
    return getattr(exc.orig, "sqlstate", None) in {"42P07", "42710"} or "already exists" in str(exc.orig).lower()


def _check_schema_version(registry: Registry, found: str | None) -> None:
    """Refuse a database whose registry schema is not the one this bastion reads and writes (exit 2)."""
    if found == SCHEMA_VERSION:
        return
    where = repr(registry)
    if found is None:
        raise RegistryError(
            f"{where} is not a bastion registry: it has tables named like the registry's "
            f"({', '.join(sorted(Base.metadata.tables))}) but no schema version in 'bastion_meta'",
            hint="point --db or $BASTION_REGISTRY_URL at a new database (or another file) for the registry")
    newer = found.isdigit() and int(found) > int(SCHEMA_VERSION)
    raise RegistryError(
        f"{where} was created by registry schema version {found}; this bastion reads schema version "
        f"{SCHEMA_VERSION} only",
        hint=("upgrade bastion to a release that knows schema version " + found) if newer else
             ("open it with the bastion release that created it, or start a new registry with --db "
              "or $BASTION_REGISTRY_URL (no automatic migration exists for this version)"))


def _storable(text: str | None) -> str | None:
    """``text`` that every engine stores: NUL escaped (PostgreSQL rejects it), undecodable bytes of file
    names (surrogate escapes) shown as ``\\xNN`` instead of failing the UTF-8 encoding."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


class Registry:
    """Versions of models, their checks and provenance, and a deployment pointer with rollback."""

    def __init__(self, url: str | None = None, *, busy_timeout_s: float = 60.0, scan: bool = True) -> None:
        self.url = url or default_registry_url()
        self.scan = scan
        try:
            parsed = make_url(self.url)
        except ArgumentError as exc:
            raise RegistryError(f"not a database URL: {self.url!r} ({exc})",
                                hint="e.g. sqlite:////path/to/registry.db or postgresql+psycopg://user@host/db") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            db = parsed.database
            if db and db != ":memory:" and not db.startswith("file:"):
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": busy_timeout_s}
        elif parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in _PG_LIBPQ_DRIVERS:
            # bound lock waits like SQLite's busy timeout, and connection attempts, unless the URL says otherwise
            args: dict[str, Any] = {}
            if "options" not in parsed.query:
                args["options"] = f"-c lock_timeout={int(busy_timeout_s * 1000)}"
            if "connect_timeout" not in parsed.query:
                args["connect_timeout"] = 10
            kwargs["connect_args"] = args
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ImportError) as exc:
            raise RegistryError(f"no database driver for {parsed.drivername!r} ({exc})",
                                hint="install the SQLAlchemy driver for that database (PostgreSQL: "
                                     "pip install 'psycopg[binary]' and a postgresql+psycopg:// URL)") from None
        if self.is_sqlite:
            _configure_sqlite(self.engine, busy_timeout_s)
        self._create_schema()

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions

    def _run(self, fn: Callable[[Session], T], *, write: bool, attempts: int = 20, ddl: bool = False) -> T:
        """Run ``fn`` in one transaction (``BEGIN IMMEDIATE`` on SQLite for writes), retrying on lock.

        ``ddl``: also retry when a table or index another process was creating already exists.
        Any other database error becomes a :class:`BastionRuntimeError` (a clean CLI error, exit 3).
        """
        delay = 0.02
        for attempt in range(attempts):
            try:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(bastion_immediate=write)
                    with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                        return fn(session)
            except OperationalError as exc:
                if not _is_locked(exc) or attempt == attempts - 1:
                    raise BastionRuntimeError(f"registry database error: {exc.orig or exc}") from None
                logger.info("registry busy, retrying (%d)", attempt + 1)
            except IntegrityError as exc:  # a concurrent insert of the same model on a non-SQLite engine
                if attempt == attempts - 1:
                    raise BastionRuntimeError(f"registry integrity error: {exc.orig or exc}") from None
            except ProgrammingError as exc:
                if not (ddl and _already_exists(exc)) or attempt == attempts - 1:
                    raise BastionRuntimeError(f"registry database error: {exc.orig or exc}") from None
            except DBAPIError as exc:  # DataError, InterfaceError...: not transient
                raise BastionRuntimeError(f"registry database error: {exc.orig or exc}") from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_schema(self) -> None:
        def create(session: Session) -> str | None:
            if session.get_bind().dialect.name == "postgresql":  # DDL is transactional there: serialise it
                session.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            existing = set(sa_inspect(session.connection()).get_table_names())
            ours = set(Base.metadata.tables)
            if existing & ours and "bastion_meta" not in existing:
                return None  # tables of another application (or of a broken registry) under our names
            Base.metadata.create_all(session.connection())
            row = session.get(MetaRow, "schema_version")
            if row is None:
                if existing & (ours - {"bastion_meta"}):
                    return None
                session.add(MetaRow(key="schema_version", value=SCHEMA_VERSION))
                return SCHEMA_VERSION
            return row.value

        try:
            found = self._run(create, write=True, ddl=True)
        except BastionRuntimeError as exc:
            raise RegistryError(f"cannot open the registry at {self!r}: {exc}") from None
        _check_schema_version(self, found)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _model(session: Session, name: str, *, lock: bool = False) -> ModelRow:
        stmt = select(ModelRow).where(ModelRow.name == name)
        if lock:
            stmt = stmt.with_for_update()
        row = session.scalars(stmt).first()
        if row is None:
            raise RegistryError(f"no model named {name!r} in the registry",
                                hint="see 'bastion registry list'")
        return row

    @staticmethod
    def _version(session: Session, model: ModelRow, version: str) -> VersionRow:
        row = session.scalars(select(VersionRow).where(VersionRow.model_id == model.id,
                                                       VersionRow.version == version)).first()
        if row is None:
            raise RegistryError(f"model {model.name!r} has no version {version!r}",
                                hint=f"see 'bastion registry show {model.name}'")
        return row

    @staticmethod
    def _stack(session: Session, model: ModelRow) -> list[DeploymentRow]:
        """Active deployment entries, bottom first; the last one is deployed."""
        return list(session.scalars(select(DeploymentRow).where(
            DeploymentRow.model_id == model.id, DeploymentRow.retired_at.is_(None)).order_by(DeploymentRow.id)))

    @staticmethod
    def _info(model: ModelRow, row: VersionRow, deployed_id: int | None) -> VersionInfo:
        return VersionInfo(
            model=model.name, version=row.version, path=row.path, content_digest=row.content_digest,
            signature_status=row.signature_status, signature_detail=row.signature_detail or "",
            key_id=row.key_id, scan_verdict=row.scan_verdict, scan_worst=row.scan_worst,
            scan_findings=row.scan_findings or 0, scan_detail=row.scan_detail or "", checked_at=row.checked_at,
            source=row.source, dataset_hash=row.dataset_hash, code_revision=row.code_revision, notes=row.notes,
            created_at=row.created_at, deployed=row.id == deployed_id,
        )

    def _deployed_id(self, session: Session, model: ModelRow) -> int | None:
        stack = self._stack(session, model)
        return stack[-1].version_id if stack else None

    @staticmethod
    def _record(row: VersionRow, outcome: CheckOutcome) -> None:
        row.signature_status, row.signature_detail = outcome.signature_status, outcome.signature_detail
        row.key_id = outcome.key_id or row.key_id
        row.scan_verdict, row.scan_worst = outcome.scan_verdict, outcome.scan_worst
        row.scan_findings, row.scan_detail = outcome.scan_findings, outcome.scan_detail
        row.checked_at = _now()

    # ------------------------------------------------------------------ operations

    def add(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        version: str | None = None,
        key: str | os.PathLike[str] | None = None,
        source: str | None = None,
        dataset_hash: str | None = None,
        code_revision: str | None = None,
        notes: str | None = None,
    ) -> VersionInfo:
        """Register a new version of ``name`` (created on first use) with fresh checks and provenance.

        ``key`` (a public key file) is stored with the version and used again at promote time.
        ``version`` defaults to ``v<N>`` with N one more than the number of versions so far.
        """
        name = _validate_name(name, "model name")
        if version is not None:
            version = _validate_name(version, "version")
        for field_name, value, limit in (("source", source, None), ("dataset hash", dataset_hash, PROVENANCE_MAX),
                                         ("code revision", code_revision, PROVENANCE_MAX), ("notes", notes, None)):
            _validate_text(value, field_name, limit)
        pem = _public_key_pem(key) if key is not None else None
        root = Path(path).expanduser().resolve()
        _validate_text(str(root), "model directory path", None)
        outcome = check_version(root, pem, scan=self.scan)

        def write(session: Session) -> VersionInfo:
            model = session.scalars(select(ModelRow).where(ModelRow.name == name).with_for_update()).first()
            if model is None:
                model = ModelRow(name=name, created_at=_now())
                session.add(model)
                session.flush()
            label = version
            if label is None:
                count = session.scalar(select(func.count()).select_from(VersionRow)
                                       .where(VersionRow.model_id == model.id)) or 0
                label = f"v{count + 1}"
                while session.scalars(select(VersionRow.id).where(VersionRow.model_id == model.id,
                                                                  VersionRow.version == label)).first():
                    count += 1
                    label = f"v{count + 1}"
            elif session.scalars(select(VersionRow.id).where(VersionRow.model_id == model.id,
                                                             VersionRow.version == label)).first():
                raise RegistryError(f"model {name!r} already has a version {label!r}",
                                    hint="versions are immutable; register under a new version label")
            row = VersionRow(model_id=model.id, version=label, path=str(root),
                             content_digest=outcome.content_digest, public_key_pem=pem.decode() if pem else None,
                             source=source, dataset_hash=dataset_hash, code_revision=code_revision, notes=notes,
                             created_at=_now(), checked_at=_now(), signature_status="", scan_verdict="")
            self._record(row, outcome)
            session.add(row)
            session.flush()
            session.add(EventRow(model_id=model.id, version_id=row.id, action="add", at=_now(),
                                 detail=f"{outcome.content_digest} signature={outcome.signature_status} "
                                        f"scan={outcome.scan_verdict}"))
            return self._info(model, row, self._deployed_id(session, model))

        info = self._run(write, write=True)
        logger.info("registered %s %s (%s)", name, info.version, info.content_digest)
        return info

    def list_models(self) -> list[ModelInfo]:
        def read(session: Session) -> list[ModelInfo]:
            out = []
            for model in session.scalars(select(ModelRow).order_by(ModelRow.name)):
                rows = list(session.scalars(select(VersionRow).where(VersionRow.model_id == model.id)
                                            .order_by(VersionRow.id)))
                dep = self._deployed_id(session, model)
                dep_label = next((r.version for r in rows if r.id == dep), None)
                out.append(ModelInfo(model.name, model.created_at, len(rows), dep_label,
                                     rows[-1].version if rows else None))
            return out

        return self._run(read, write=False)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first."""
        def read(session: Session) -> list[VersionInfo]:
            model = self._model(session, name)
            dep = self._deployed_id(session, model)
            rows = session.scalars(select(VersionRow).where(VersionRow.model_id == model.id).order_by(VersionRow.id))
            return [self._info(model, r, dep) for r in rows]

        return self._run(read, write=False)

    def get(self, name: str, version: str) -> VersionInfo:
        def read(session: Session) -> VersionInfo:
            model = self._model(session, name)
            return self._info(model, self._version(session, model, version), self._deployed_id(session, model))

        return self._run(read, write=False)

    def deployed(self, name: str) -> VersionInfo | None:
        """The version ``name``'s deployment pointer is on, or ``None``."""
        def read(session: Session) -> VersionInfo | None:
            model = self._model(session, name)
            dep = self._deployed_id(session, model)
            if dep is None:
                return None
            return self._info(model, session.get(VersionRow, dep), dep)  # type: ignore[arg-type]

        return self._run(read, write=False)

    def history(self, name: str) -> list[EventInfo]:
        """The audit log of ``name``: adds, promotions (and refusals), rollbacks, oldest first."""
        def read(session: Session) -> list[EventInfo]:
            model = self._model(session, name)
            labels = dict(session.execute(select(VersionRow.id, VersionRow.version)
                                          .where(VersionRow.model_id == model.id)).all())
            rows = session.scalars(select(EventRow).where(EventRow.model_id == model.id).order_by(EventRow.id))
            return [EventInfo(e.at, e.action, labels.get(e.version_id) if e.version_id else None, e.detail)
                    for e in rows]

        return self._run(read, write=False)

    def _fresh_check(self, name: str, version: str, key: str | os.PathLike[str] | None) -> tuple[CheckOutcome, str]:
        def read(session: Session) -> tuple[str, str | None, str]:
            model = self._model(session, name)
            row = self._version(session, model, version)
            return row.path, row.public_key_pem, row.content_digest

        path, stored_pem, digest = self._run(read, write=False)
        pem = _public_key_pem(key) if key is not None else (stored_pem.encode() if stored_pem else None)
        try:
            outcome = check_version(path, pem, scan=self.scan)
        except RegistryError as exc:
            outcome = CheckOutcome(digest, "missing", str(exc), None, "error", None, 0, "files not available")
        return outcome, digest

    def _store_check(self, name: str, version: str, outcome: CheckOutcome, action: str, detail: str) -> None:
        def write(session: Session) -> None:
            model = self._model(session, name, lock=True)
            row = self._version(session, model, version)
            self._record(row, outcome)
            session.add(EventRow(model_id=model.id, version_id=row.id, action=action, at=_now(), detail=detail))

        self._run(write, write=True)

    def promote(self, name: str, version: str, *, key: str | os.PathLike[str] | None = None) -> PromoteResult:
        """Deploy ``version`` after re-checking it now; raise :class:`PromotionRefused` if a check fails.

        Checks: the signature verifies with ``key`` (or the key stored at ``add``) and the files are
        intact, the content digest equals the registered one, and the scan passes (nothing at or above
        high).
        """
        outcome, digest = self._fresh_check(name, version, key)
        problems = outcome.problems(expected_digest=digest)
        if problems:
            self._store_check(name, version, outcome, "promote-refused", "; ".join(problems))
            raise PromotionRefused(f"refusing to promote {name} {version}: " + "; ".join(problems),
                                   hint="fix the files or register a new version; 'bastion registry show' has details")

        def write(session: Session) -> PromoteResult:
            model = self._model(session, name, lock=True)
            row = self._version(session, model, version)
            self._record(row, outcome)
            stack = self._stack(session, model)
            previous = session.get(VersionRow, stack[-1].version_id).version if stack else None  # type: ignore[union-attr]
            if stack and stack[-1].version_id == row.id:
                return PromoteResult(self._info(model, row, row.id), previous, changed=False)
            session.add(DeploymentRow(model_id=model.id, version_id=row.id, deployed_at=_now()))
            session.add(EventRow(model_id=model.id, version_id=row.id, action="promote", at=_now(),
                                 detail=f"from {previous or '(none)'}"))
            return PromoteResult(self._info(model, row, row.id), previous, changed=True)

        result = self._run(write, write=True)
        logger.info("promoted %s %s (previous: %s)", name, version, result.previous)
        return result

    def rollback(self, name: str, *, key: str | os.PathLike[str] | None = None, recheck: bool = True,
                 attempts: int = 20) -> RollbackResult:
        """Move the deployment pointer of ``name`` back to the previous version that is still good.

        Versions below the top of the stack are re-checked now (``recheck``, outside any transaction;
        the stack is then compared with a fresh read and the plan redone if another writer moved it)
        or judged by their recorded status (``recheck=False``: one transaction). Versions that fail are
        retired from the stack and reported in ``skipped``. If no good version is left, nothing changes
        and :class:`PromotionRefused` is raised.
        """
        if not recheck:
            def recorded(session: Session) -> RollbackResult | None:
                model = self._model(session, name, lock=True)
                live = self._stack(session, model)
                labels = {d.id: session.get(VersionRow, d.version_id) for d in live}

                def judge(label: str, entry_id: int) -> list[str]:
                    row = labels[entry_id]
                    ok = row is not None and row.signature_status == "valid" and row.scan_verdict == "pass"
                    if not ok:
                        return [f"recorded signature {row.signature_status if row else '?'}, "
                                f"scan {row.scan_verdict if row else '?'}"]
                    gone = _files_gone(row.path)  # type: ignore[union-attr]
                    return [gone] if gone else []

                stack = [(d.id, d.version_id, labels[d.id].version) for d in live]  # type: ignore[union-attr]
                target, skipped = self._plan(name, stack, judge)
                result = self._apply(session, model, live, stack, target, skipped, {})
                result.warnings.append(
                    f"{result.to_version.version} was not re-checked (--no-recheck): deployed on its recorded "
                    f"checks from {result.to_version.checked_at} (signature {result.to_version.signature_status}, "
                    f"scan {result.to_version.scan_verdict}); run 'bastion registry promote {name} "
                    f"{result.to_version.version}' to check it now")
                return result

            result = self._run(recorded, write=True)
            assert result is not None
            return result

        for _ in range(attempts):
            def snapshot(session: Session) -> list[tuple[int, int, str]]:
                model = self._model(session, name)
                return [(d.id, d.version_id, session.get(VersionRow, d.version_id).version)  # type: ignore[union-attr]
                        for d in self._stack(session, model)]

            stack = self._run(snapshot, write=False)
            outcomes: dict[str, CheckOutcome] = {}

            def judge_now(label: str, _entry_id: int) -> list[str]:
                outcome, digest = self._fresh_check(name, label, key)
                outcomes[label] = outcome
                return outcome.problems(expected_digest=digest)

            target, skipped = self._plan(name, stack, judge_now)

            def write(session: Session) -> RollbackResult | None:
                model = self._model(session, name, lock=True)
                live = self._stack(session, model)
                if [d.id for d in live] != [e[0] for e in stack]:
                    return None  # someone promoted or rolled back meanwhile: plan again
                return self._apply(session, model, live, stack, target, skipped, outcomes)

            result = self._run(write, write=True)
            if result is not None:
                return result
        raise BastionRuntimeError(f"rollback of {name} kept racing with other registry writers; try again")

    @staticmethod
    def _plan(name: str, stack: list[tuple[int, int, str]], judge: Callable[[str, int], list[str]]
              ) -> tuple[tuple[int, int, str], list[tuple[str, str]]]:
        """Pick the rollback target below the top of ``stack``: the first entry ``judge`` finds no problem with."""
        if not stack:
            raise PromotionRefused(f"{name} has no deployed version to roll back from")
        top_label = stack[-1][2]
        skipped: list[tuple[str, str]] = []
        for entry in reversed(stack[:-1]):
            if entry[2] == top_label:
                skipped.append((entry[2], "same version as the one rolled back"))
                continue
            problems = judge(entry[2], entry[0])
            if not problems:
                return entry, skipped
            skipped.append((entry[2], "; ".join(problems)))
        raise PromotionRefused(
            f"no previous good version of {name} to roll back to (deployed: {top_label})"
            + ("; " + "; ".join(f"{v}: {r}" for v, r in skipped) if skipped else ""),
            hint="promote a good version explicitly")

    def _apply(self, session: Session, model: ModelRow, live: list[DeploymentRow],
               stack: list[tuple[int, int, str]], target: tuple[int, int, str],
               skipped: list[tuple[str, str]], outcomes: dict[str, CheckOutcome]) -> RollbackResult:
        """Retire every stack entry above ``target`` and log the rollback (inside a write transaction)."""
        now, top_label, reasons = _now(), stack[-1][2], dict(skipped)
        for d in live:
            if d.id > target[0]:
                d.retired_at = now
                label = next(e[2] for e in stack if e[0] == d.id)
                d.retired_reason = "rolled back" if d.id == live[-1].id else reasons.get(label, "skipped")
        row = session.get(VersionRow, target[1])
        assert row is not None
        if target[2] in outcomes:
            self._record(row, outcomes[target[2]])
        detail = f"from {top_label}" + (f"; skipped {', '.join(v for v, _ in skipped)}" if skipped else "")
        session.add(EventRow(model_id=model.id, version_id=row.id, action="rollback", at=now, detail=detail))
        logger.info("rolled back %s from %s to %s", model.name, top_label, row.version)
        return RollbackResult(model.name, top_label, self._info(model, row, row.id), skipped)


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    """WAL, busy timeout, foreign keys; ``BEGIN IMMEDIATE`` for write transactions."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves (pysqlite defers it otherwise)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        try:
            cur.execute("PRAGMA journal_mode = WAL")
        except Exception as exc:
            logger.warning("could not switch the registry to WAL mode: %s", exc)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("bastion_immediate")
                             else "BEGIN")


def _validate_name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 100 or any(ch in value for ch in "\n\r\t\0"):
        raise RegistryError(f"invalid {what} {value!r}: 1-100 characters, no control characters")
    _validate_text(value, what, None)
    return value


def _validate_text(value: str | None, what: str, limit: int | None) -> None:
    """Refuse, on every engine alike, text that one engine would store and another reject:
    longer than its column, with a NUL character (PostgreSQL), or not encodable as UTF-8."""
    if value is None:
        return
    if limit is not None and len(value) > limit:
        raise RegistryError(f"{what} too long: {len(value)} characters (at most {limit})")
    if "\0" in value:
        raise RegistryError(f"{what} contains a NUL character: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RegistryError(f"{what} is not valid UTF-8: {value!r}",
                            hint="rename it; the registry stores text as UTF-8") from None


def _files_gone(path: str) -> str | None:
    """Why a version's recorded directory can no longer be deployed, or ``None`` if it is still there."""
    root = Path(path)
    if root.is_dir():
        return None
    what = "is no longer a directory" if root.exists() else "no longer exists"
    return (f"its files are gone: {path} {what} (--no-recheck trusts the recorded checks, "
            f"but cannot deploy files that are not there)")


def _public_key_pem(key: str | os.PathLike[str]) -> bytes:
    """Load a public key file (PEM or OpenSSH) and return it as PEM, validating it on the way."""
    from cryptography.hazmat.primitives import serialization

    from bastion.supply.signing import load_public_key

    public = load_public_key(key)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
