"""The SQLite adapter of :class:`~kefu.node.sessions.SessionStore`: one database file per tenant.

Layout: ``<data_dir>/tenants/<tenant>/sessions.db`` (plus SQLite's ``-wal``/``-shm``). The tenant
id is a validated slug, and the file records its tenant in a ``meta`` table checked on open, so
a copied or misplaced file is refused rather than served to the wrong tenant.

Durability and robustness choices:

* ``journal_mode=WAL``: readers never block the writer, and a commit is one append to the log.
* ``synchronous=FULL``: the WAL is fsynced on every commit. With NORMAL a commit already
  survives the *process* being killed (the tests prove it with SIGKILL), but the last commits
  can roll back on power loss or an OS crash. A turn acknowledged to a customer channel must
  survive both, and one fsync per turn is cheap next to model inference.
* All blocking work runs on a dedicated single-thread executor per store rather than the shared
  ``asyncio.to_thread`` pool: a sqlite3 connection belongs to one thread, one writer per process
  means no lock contention inside the process, the FIFO keeps a caller's writes in order, and a
  slow disk stalls only this tenant, never the event loop or other tenants.
* The queue in front of that thread is bounded (``max_pending``); beyond it calls fail fast
  with :class:`StorageBusy`, so overload becomes quick "try again" answers, not unbounded
  memory and latency.
* ``SQLITE_BUSY``/``LOCKED`` (another process holding the write lock past ``busy_timeout``) is
  retried with jittered exponential backoff, then :class:`StorageBusy`. Writes take the lock up
  front (``BEGIN IMMEDIATE``), so a read-then-write never dead-ends in an unretryable upgrade.
* Disk or quota full and I/O errors become :class:`StorageUnavailable`; the transaction is
  rolled back and the file stays consistent. ``max_db_bytes`` is a per-tenant quota enforced
  with ``PRAGMA max_page_count``, so one tenant cannot fill a shared disk.
* ``secure_delete`` plus a WAL truncate after purges, so purged conversations leave the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from kefu.errors import PermanentError
from kefu.node.sessions import (
    Feedback,
    Handoff,
    HandoffStatus,
    InvalidTenant,
    NewFeedback,
    NewSession,
    NewTurn,
    Page,
    RecordNotFound,
    Session,
    SessionStatus,
    Slot,
    StateConflict,
    StorageBusy,
    StorageCorrupt,
    StorageUnavailable,
    Turn,
    TurnRole,
    as_utc,
    check_limit,
    check_retention,
    decode_cursor,
    encode_cursor,
    ensure_writable,
    from_iso,
    json_clone,
    json_dumps,
    move_handoff,
    open_handoff,
    patch_session,
    start_session,
    stored_feedback,
    stored_turn,
    to_iso,
    utc_now,
    validate_tenant_id,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_PURGE_BATCH = 200
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True, slots=True)
class SQLiteStoreOptions:
    busy_timeout_s: float = 0.25  # SQLite's own wait for a lock, per attempt
    busy_retries: int = 6  # further attempts after that, with backoff
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 0.25
    max_pending: int = 256  # operations queued or running per store
    max_db_bytes: int | None = None  # per-tenant quota; None: only the disk limits
    journal_size_limit_bytes: int = 64 * 1024 * 1024


@dataclass(kw_only=True, slots=True)
class StoreStats:
    """Counters for metrics; each field is written from one thread only."""

    busy_retries: int = 0
    busy_failures: int = 0
    unavailable: int = 0
    rejected: int = 0  # refused because the queue was full


def tenant_db_path(data_dir: str | Path, tenant: str) -> Path:
    return Path(data_dir) / "tenants" / validate_tenant_id(tenant) / "sessions.db"


# --------------------------------------------------------------------------- schema

_SCHEMA_V1 = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY, channel TEXT NOT NULL, user_id TEXT, language TEXT, scenario TEXT,
    attributes TEXT NOT NULL, created_at TEXT NOT NULL, last_active_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'handed_off', 'ended', 'expired')),
    turn_count INTEGER NOT NULL CHECK (turn_count >= 0)
) STRICT;
CREATE INDEX sessions_by_created ON sessions (created_at, id);
CREATE INDEX sessions_by_status ON sessions (status, created_at, id);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at, id);
CREATE INDEX sessions_by_activity ON sessions (last_active_at);
CREATE TABLE turns (
    session_id TEXT NOT NULL REFERENCES sessions (id), seq INTEGER NOT NULL CHECK (seq >= 1),
    role TEXT NOT NULL CHECK (role IN ('customer', 'bot', 'agent')), text TEXT NOT NULL,
    language TEXT, intent TEXT, confidence REAL, sentiment TEXT, scenario TEXT,
    entities TEXT NOT NULL, handoff INTEGER NOT NULL, handoff_reason TEXT,
    model_versions TEXT NOT NULL, latency_ms REAL, request_id TEXT, created_at TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE slots (
    session_id TEXT NOT NULL REFERENCES sessions (id), key TEXT NOT NULL, value TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (session_id, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE handoffs (
    id TEXT PRIMARY KEY, session_id TEXT NOT NULL, reason TEXT NOT NULL, summary TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'claimed', 'closed')), agent_id TEXT,
    created_at TEXT NOT NULL, claimed_at TEXT, closed_at TEXT
) STRICT;
CREATE INDEX handoffs_by_status ON handoffs (status, created_at, id);
CREATE INDEX handoffs_by_session ON handoffs (session_id, created_at, id);
CREATE UNIQUE INDEX handoffs_one_active ON handoffs (session_id) WHERE status != 'closed';
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions (id),
    turn_seq INTEGER, rating INTEGER CHECK (rating BETWEEN 1 AND 5), resolved INTEGER,
    corrected_intent TEXT, created_at TEXT NOT NULL
) STRICT;
CREATE INDEX feedback_by_session ON feedback (session_id, id);
"""
# handoffs has no foreign key on purpose: its records outlive their purged session.
# handoffs_one_active makes "one active hand-off per session" structural.
_MIGRATIONS = {1: _SCHEMA_V1}


def _prepare(db: Database, tenant: str, now: str) -> None:
    """Create or migrate the schema; idempotent, and safe when several processes open at once."""
    with _write(db) as conn:
        db.table("schema_version").create(
            {"version": int, "applied_at": str}, pk="version", if_not_exists=True
        )
        db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if current > SCHEMA_VERSION:
            raise PermanentError(
                f"session database schema v{current} is newer than this node's "
                f"v{SCHEMA_VERSION}; upgrade the node / 会话数据库版本 v{current} 高于本节点支持的 "
                f"v{SCHEMA_VERSION}，请升级节点"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            # Statement by statement: executescript() would commit our transaction.
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            db.table("schema_version").insert({"version": version, "applied_at": now})
        db.table("meta").insert({"key": "tenant", "value": tenant}, ignore=True)
        owner = conn.execute("SELECT value FROM meta WHERE key = 'tenant'").fetchone()[0]
    if owner != tenant:
        raise InvalidTenant(
            f"database belongs to tenant {owner!r}, not {tenant!r} / "
            f"该数据库属于租户 {owner!r}，而非 {tenant!r}"
        )


# --------------------------------------------------------------------------- mapping

_JSON_FIELDS = frozenset({"attributes", "entities", "model_versions", "summary", "value"})
_DECODERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_JSON_FIELDS, json.loads),
    **dict.fromkeys(
        ("created_at", "last_active_at", "claimed_at", "closed_at", "updated_at"), from_iso
    ),
    "role": TurnRole,
    "handoff": bool,
    "resolved": bool,
}


def _encode(record: Any, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in skip:
            continue
        if f.name in _JSON_FIELDS:
            value = json_dumps(value, what=f.name)
        elif isinstance(value, datetime):
            value = to_iso(value)
        elif isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        row[f.name] = value
    return row


def _decode(make: Callable[..., R], row: Mapping[str, Any], **override: Any) -> R:
    values = {k: v if v is None or k not in _DECODERS else _DECODERS[k](v) for k, v in row.items()}
    return make(**(values | override))


# --------------------------------------------------------------------------- errors


def _kind(exc: sqlite3.Error) -> str | None:
    """busy / unavailable / corrupt, from the (extended) result code, else the message."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (5, 6):  # BUSY, LOCKED
        return "busy"
    if primary in (7, 8, 10, 13, 14, 15):  # NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL
        return "unavailable"
    if primary in (11, 26):  # CORRUPT, NOTADB
        return "corrupt"
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "busy"
    if any(s in text for s in ("full", "i/o error", "unable to open", "readonly")):
        return "unavailable"
    if "malformed" in text or "not a database" in text:
        return "corrupt"
    return None


@contextlib.contextmanager
def _write(db: Database) -> Iterator[sqlite3.Connection]:
    """A write transaction holding the write lock from its first statement."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")  # can fail too (disk full while appending to the WAL)
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLITE_FULL may already have rolled back; a failing ROLLBACK must not mask the cause.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- the store


class SQLiteSessionStore:
    """:class:`SessionStore` over one tenant's SQLite file. Create it with :meth:`open`."""

    def __init__(
        self,
        *,
        path: Path,
        tenant: str,
        options: SQLiteStoreOptions,
        clock: Callable[[], datetime],
    ):
        self._path = path
        self._tenant = tenant
        self._options = options
        self._clock = clock
        self._db: Database | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"kefu-sessions-{tenant}"
        )
        self._pending = 0
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None
        self.stats = StoreStats()

    @classmethod
    async def open(
        cls,
        data_dir: str | Path,
        tenant: str,
        *,
        options: SQLiteStoreOptions | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> SQLiteSessionStore:
        store = cls(
            path=tenant_db_path(data_dir, tenant),
            tenant=tenant,
            options=options or SQLiteStoreOptions(),
            clock=clock,
        )
        try:
            await store._call(store._open_sync, needs_db=False)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def tenant(self) -> str:
        return self._tenant

    @property
    def path(self) -> Path:
        return self._path

    async def __aenter__(self) -> SQLiteSessionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    def _open_sync(self, _: Database | None) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageUnavailable(f"{self._path.parent}: {exc} / 无法创建会话目录") from exc
        # isolation_level=None: no implicit transactions; _write() is the only place one opens.
        conn = sqlite3.connect(
            self._path, timeout=self._options.busy_timeout_s, isolation_level=None
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._options.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageUnavailable(f"{self._path}: WAL unavailable ({mode}) / 无法启用 WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute(f"PRAGMA journal_size_limit = {self._options.journal_size_limit_bytes}")
            if self._options.max_db_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                pages = max(1, self._options.max_db_bytes // page_size)
                conn.execute(f"PRAGMA max_page_count = {pages}")
            db = Database(conn, execute_plugins=False)
            _prepare(db, self._tenant, to_iso(self._now()))
        except BaseException:
            conn.close()
            raise
        self._db = db

    def _now(self) -> datetime:
        return as_utc(self._clock())

    async def _call(self, op: Callable[[Database], R], *, needs_db: bool = True) -> R:
        """Run ``op`` on the store's thread, through the bounded queue and the retry policy."""
        if self._closed:
            raise StorageUnavailable("session store is closed / 会话存储已关闭")
        if self._pending >= self._options.max_pending:
            self.stats.rejected += 1
            raise StorageBusy(
                f"session store of {self._tenant!r} is overloaded, retry later / "
                "会话存储繁忙，请稍后重试"
            )
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(self._attempt, op, needs_db)
        except RuntimeError as exc:  # executor already shut down
            raise StorageUnavailable("session store is closed / 会话存储已关闭") from exc
        self._pending += 1

        def release(_: object) -> None:
            # Runs when the job ends or is cancelled before it starts, never earlier: a
            # cancelled caller must not free the slot of a job that is still running.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._release)

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self._pending -= 1

    def _attempt(self, op: Callable[[Database], R], needs_db: bool) -> R:
        delay = self._options.backoff_initial_s
        for attempt in range(self._options.busy_retries + 1):
            db = self._db
            if needs_db and db is None:
                raise StorageUnavailable("session store is closed / 会话存储已关闭")
            try:
                return op(db)  # type: ignore[arg-type]
            except sqlite3.Error as exc:
                if db is not None:
                    _rollback(db.conn)  # never leave a transaction open for the next job
                kind = _kind(exc)
                if kind == "busy" and attempt < self._options.busy_retries:
                    self.stats.busy_retries += 1
                    time.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self._options.backoff_max_s)
                    continue
                raise self._translate(exc, kind) from exc
        raise AssertionError("unreachable")

    def _translate(self, exc: sqlite3.Error, kind: str | None) -> Exception:
        if kind == "busy":
            self.stats.busy_failures += 1
            return StorageBusy(f"{self._path}: database stayed locked ({exc}) / 数据库持续被锁定")
        if kind == "unavailable":
            self.stats.unavailable += 1
            return StorageUnavailable(
                f"{self._path}: session storage unavailable ({exc}) / "
                "会话存储不可用（磁盘已满或 I/O 错误）"
            )
        if kind == "corrupt":
            return StorageCorrupt(f"{self._path}: database damaged ({exc}) / 会话数据库已损坏")
        return exc  # anything else is a bug in this module: keep it loud

    def _session(self, db: Database, session_id: str, *, writable: bool = True) -> Session:
        row = next(db.table("sessions").rows_where("id = ?", [session_id]), None)
        if row is None:
            raise RecordNotFound("session", session_id)
        session = _decode(Session, row, tenant=self._tenant, status=SessionStatus(row["status"]))
        if writable:
            ensure_writable(session)
        return session

    # ------------------------------------------------------------------ sessions

    async def create_session(self, new: NewSession) -> Session:
        def op(db: Database) -> Session:
            session = start_session(new, tenant=self._tenant, now=self._now())
            with _write(db):
                db.table("sessions").insert(_encode(session, skip=frozenset({"tenant"})))
            return session

        return await self._call(op)

    async def get_session(self, session_id: str) -> Session | None:
        def op(db: Database) -> Session | None:
            with contextlib.suppress(RecordNotFound):
                return self._session(db, session_id, writable=False)
            return None

        return await self._call(op)

    async def list_sessions(
        self,
        *,
        status: SessionStatus | None = None,
        user_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]:
        rows = await self._page_rows(
            "sessions", {"status": status, "user_id": user_id}, limit, cursor, newest_first=True
        )
        items = [
            _decode(Session, r, tenant=self._tenant, status=SessionStatus(r["status"]))
            for r in rows[:limit]
        ]
        return _make_page(items, more=len(rows) > limit)

    async def _page_rows(
        self,
        table: str,
        filters: Mapping[str, Any],
        limit: int,
        cursor: str | None,
        *,
        newest_first: bool,
    ) -> list[dict[str, Any]]:
        check_limit(limit)
        where = [f"{k} = ?" for k, v in filters.items() if v is not None]
        args = [getattr(v, "value", v) for v in filters.values() if v is not None]
        if cursor is not None:
            stamp, last_id = decode_cursor(cursor)
            cmp = "<" if newest_first else ">"
            where.append(f"(created_at {cmp} ? OR (created_at = ? AND id {cmp} ?))")
            args += [stamp, stamp, last_id]
        order = "DESC" if newest_first else "ASC"

        def op(db: Database) -> list[dict[str, Any]]:
            rows = db.table(table).rows_where(
                " AND ".join(where) or None,
                args,
                order_by=f"created_at {order}, id {order}",
                limit=limit + 1,
            )
            return list(rows)

        return await self._call(op)

    async def touch_session(self, session_id: str) -> Session:
        def op(db: Database) -> Session:
            with _write(db) as conn:
                session = replace(self._session(db, session_id), last_active_at=self._now())
                conn.execute(
                    "UPDATE sessions SET last_active_at = ? WHERE id = ?",
                    (to_iso(session.last_active_at), session_id),
                )
            return session

        return await self._call(op)

    async def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | None = None,
        language: str | None = None,
        scenario: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Session:
        def op(db: Database) -> Session:
            with _write(db):
                session = self._session(db, session_id, writable=False)
                patched = patch_session(
                    session,
                    status=status,
                    language=language,
                    scenario=scenario,
                    attributes=attributes,
                )
                if patched is None:
                    return session
                row = _encode(patched, skip=frozenset({"tenant"}))
                db.table("sessions").update(session_id, row)
            return patched

        return await self._call(op)

    # ------------------------------------------------------------------ turns and slots

    async def append_turn(self, turn: NewTurn) -> Turn:
        def op(db: Database) -> Turn:
            with _write(db) as conn:
                session = self._session(db, turn.session_id)
                stored = stored_turn(turn, seq=session.turn_count + 1, now=self._now())
                db.table("turns").insert(_encode(stored))
                conn.execute(
                    "UPDATE sessions SET turn_count = ?, last_active_at = ? WHERE id = ?",
                    (stored.seq, to_iso(stored.created_at), session.id),
                )
            return stored

        return await self._call(op)

    async def get_turns(
        self, session_id: str, *, after_seq: int = 0, tail: int | None = None
    ) -> list[Turn]:
        def op(db: Database) -> list[Turn]:
            newest_first = tail is not None
            rows = db.table("turns").rows_where(
                "session_id = ? AND seq > ?",
                [session_id, after_seq],
                order_by="seq DESC" if newest_first else "seq",
                limit=None if tail is None else max(tail, 0),
            )
            turns = [_decode(Turn, r) for r in rows]
            return turns[::-1] if newest_first else turns

        return await self._call(op)

    async def set_slot(self, session_id: str, key: str, value: Any) -> Slot:
        def op(db: Database) -> Slot:
            with _write(db):
                self._session(db, session_id)
                slot = Slot(
                    session_id=session_id,
                    key=key,
                    updated_at=self._now(),
                    value=json_clone(value, what="slot value"),
                )
                db.table("slots").upsert(_encode(slot), pk=("session_id", "key"))
            return slot

        return await self._call(op)

    async def get_slots(self, session_id: str) -> dict[str, Slot]:
        def op(db: Database) -> dict[str, Slot]:
            rows = db.table("slots").rows_where("session_id = ?", [session_id], order_by="key")
            return {r["key"]: _decode(Slot, r) for r in rows}

        return await self._call(op)

    # ------------------------------------------------------------------ hand-offs

    async def create_handoff(
        self, session_id: str, *, reason: str, summary: Mapping[str, Any] | None = None
    ) -> Handoff:
        def op(db: Database) -> Handoff:
            with _write(db) as conn:
                self._session(db, session_id)
                handoff = open_handoff(session_id, reason=reason, summary=summary, now=self._now())
                try:
                    db.table("handoffs").insert(_encode(handoff))
                except sqlite3.IntegrityError as exc:  # handoffs_one_active
                    raise StateConflict(
                        f"session {session_id!r} already has an active hand-off / "
                        "该会话已有进行中的转人工"
                    ) from exc
                conn.execute(
                    "UPDATE sessions SET status = ? WHERE id = ?",
                    (SessionStatus.HANDED_OFF.value, session_id),
                )
            return handoff

        return await self._call(op)

    async def get_handoff(self, handoff_id: str) -> Handoff | None:
        def op(db: Database) -> Handoff | None:
            row = next(db.table("handoffs").rows_where("id = ?", [handoff_id]), None)
            return None if row is None else _handoff(row)

        return await self._call(op)

    async def update_handoff(
        self, handoff_id: str, *, status: HandoffStatus, agent_id: str | None = None
    ) -> Handoff:
        def op(db: Database) -> Handoff:
            with _write(db):
                row = next(db.table("handoffs").rows_where("id = ?", [handoff_id]), None)
                if row is None:
                    raise RecordNotFound("handoff", handoff_id)
                updated = move_handoff(_handoff(row), status, agent_id, self._now())
                db.table("handoffs").update(handoff_id, _encode(updated))
            return updated

        return await self._call(op)

    async def list_handoffs(
        self,
        *,
        status: HandoffStatus | None = None,
        session_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Handoff]:
        filters = {"status": status, "session_id": session_id}
        rows = await self._page_rows("handoffs", filters, limit, cursor, newest_first=False)
        return _make_page([_handoff(r) for r in rows[:limit]], more=len(rows) > limit)

    # ------------------------------------------------------------------ feedback

    async def add_feedback(self, new: NewFeedback) -> Feedback:
        def op(db: Database) -> Feedback:
            with _write(db):
                session = self._session(db, new.session_id, writable=False)
                if new.turn_seq is not None and new.turn_seq > session.turn_count:
                    raise RecordNotFound("turn", f"{new.session_id}#{new.turn_seq}")
                stored = stored_feedback(new, feedback_id=0, now=self._now())
                table = db.table("feedback").insert(_encode(stored, skip=frozenset({"id"})))
            return replace(stored, id=int(table.last_pk or 0))

        return await self._call(op)

    async def list_feedback(self, session_id: str) -> list[Feedback]:
        def op(db: Database) -> list[Feedback]:
            rows = db.table("feedback").rows_where("session_id = ?", [session_id], order_by="id")
            return [_decode(Feedback, r) for r in rows]

        return await self._call(op)

    # ------------------------------------------------------------------ retention

    async def purge_expired(self, now: datetime, retention: timedelta) -> int:
        now = as_utc(now)
        cutoff, stamp = to_iso(now - check_retention(retention)), to_iso(now)
        total = 0
        while True:
            # One batch per queued job, so live turns interleave with a long purge.
            done = await self._call(lambda db: _purge_batch(db, cutoff, stamp))
            total += done
            if done < _PURGE_BATCH:
                break
        if total:
            await self._call(_checkpoint)
        return total

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._close_task is None:
            self._closed = True  # new calls are refused; queued ones still run first (FIFO)
            self._close_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        try:
            await asyncio.wrap_future(self._executor.submit(self._close_sync))
        finally:
            self._executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        with contextlib.suppress(sqlite3.Error):  # best effort: a full disk must not block it
            db.execute("PRAGMA optimize")
        try:
            db.close()
        except sqlite3.Error as exc:
            log.warning("closing %s: %s", self._path, exc)


def _handoff(row: Mapping[str, Any]) -> Handoff:
    return _decode(Handoff, row, status=HandoffStatus(row["status"]))


def _purge_batch(db: Database, cutoff: str, now: str) -> int:
    with _write(db) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM sessions WHERE last_active_at < ? LIMIT ?", (cutoff, _PURGE_BATCH)
            )
        ]
        if ids:
            marks = ", ".join("?" * len(ids))
            for table in ("turns", "slots", "feedback"):
                conn.execute(f"DELETE FROM {table} WHERE session_id IN ({marks})", ids)
            conn.execute(
                "UPDATE handoffs SET summary = '{}', status = 'closed', closed_at = "
                f"COALESCE(closed_at, ?) WHERE session_id IN ({marks})",
                [now, *ids],
            )
            conn.execute(f"DELETE FROM sessions WHERE id IN ({marks})", ids)
    return len(ids)


def _checkpoint(db: Database) -> None:
    # Copies the WAL into the main file and empties it, so purged text leaves the disk.
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


_Keyed = TypeVar("_Keyed", Session, Handoff)


def _make_page(items: list[_Keyed], *, more: bool) -> Page[_Keyed]:
    last = items[-1] if items and more else None
    return Page(
        items=items, next_cursor=None if last is None else encode_cursor(last.created_at, last.id)
    )


__all__ = [
    "SCHEMA_VERSION",
    "SQLiteSessionStore",
    "SQLiteStoreOptions",
    "StoreStats",
    "tenant_db_path",
]
