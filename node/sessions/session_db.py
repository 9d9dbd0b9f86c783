"""The SQLite side of the session store: file layout, schema and migrations, row mapping, error
classification and the statements the store runs. No event loop and no threads here; the store
(:mod:`kefu.node.sessions.sqlite_store`) decides where and when these run.

Statements are plain ``sqlite3`` with parameters, so the connection's statement cache prepares
each one once; sqlite-utils creates and migrates the schema (cold paths).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from kefu.errors import PermanentError
from kefu.node.sessions.store import (
    DuplicateRequest,
    Handoff,
    HandoffStatus,
    InvalidTenant,
    RecordNotFound,
    Session,
    SessionStatus,
    TurnRole,
    ensure_writable,
    from_iso,
    json_dumps,
    to_iso,
    validate_tenant_id,
)

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteStoreOptions",
    "StoreStats",
    "check_new_requests",
    "checkpoint",
    "decode",
    "encode",
    "error_kind",
    "fetch_session",
    "insert",
    "prepare",
    "purge_batch",
    "rollback",
    "rows",
    "tenant_db_path",
    "to_handoff",
    "write",
]

SCHEMA_VERSION = 3
PURGE_BATCH = 200
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True, slots=True)
class SQLiteStoreOptions:
    busy_timeout_s: float = 0.25  # SQLite's own wait for a lock, per attempt
    busy_retries: int = 6  # further attempts after that, with backoff
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 0.25
    max_pending: int = 256  # operations queued or running per store
    #: Writes committed together with one fsync (group commit); more wait for the next group.
    max_group: int = 64
    max_db_bytes: int | None = None  # per-tenant quota; None: only the disk limits
    journal_size_limit_bytes: int = 64 * 1024 * 1024


@dataclass(kw_only=True, slots=True)
class StoreStats:
    """Counters for metrics (plain ints: a lost increment under a race is acceptable)."""

    busy_retries: int = 0
    busy_failures: int = 0
    unavailable: int = 0
    rejected: int = 0  # refused because the queue was full
    groups: int = 0  # write transactions committed
    grouped_writes: int = 0  # writes inside them (÷ groups = mean group size)


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
# v2: a request id is unique per session and role (safe retries; earlier duplicates keep their
# turns but lose the id), and feedback keeps its comment.
_SCHEMA_V2 = """
UPDATE turns SET request_id = NULL WHERE request_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM turns AS t WHERE t.session_id = turns.session_id AND t.role = turns.role
    AND t.request_id = turns.request_id AND t.seq < turns.seq
);
CREATE UNIQUE INDEX turns_by_request ON turns (session_id, request_id, role)
    WHERE request_id IS NOT NULL;
ALTER TABLE feedback ADD COLUMN comment TEXT;
"""
# v3: the replication outbox (issue 15): a committed change, sealed with the zone key, waiting
# for the shipper; written in the same transaction as the change, deleted after the stream's ack.
_SCHEMA_V3 = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL, subject TEXT NOT NULL,
    payload TEXT NOT NULL, created_at REAL NOT NULL
) STRICT;
"""
_MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3}


def prepare(db: Database, tenant: str, now: str) -> None:
    """Create or migrate the schema; idempotent, and safe when several processes open at once."""
    with write(db) as conn:
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


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def encode(record: Any, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A record as a row: JSON fields dumped, datetimes ISO, enums their value, bools 0/1."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:  # dataclasses.fields() is slow enough to matter on every turn
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in fields(record))
    row: dict[str, Any] = {}
    for name in names:
        if name in skip:
            continue
        value = getattr(record, name)
        if name in _JSON_FIELDS:  # None too: a JSON null, not SQL NULL
            value = json_dumps(value, what=name)
        elif value is None:
            pass
        elif isinstance(value, datetime):
            value = to_iso(value)
        elif isinstance(value, StrEnum):
            value = value.value
        elif value is True or value is False:
            value = int(value)
        row[name] = value
    return row


def decode(make: Callable[..., R], row: Mapping[str, Any], **override: Any) -> R:
    values = {k: v if v is None or k not in _DECODERS else _DECODERS[k](v) for k, v in row.items()}
    return make(**(values | override))


# --------------------------------------------------------------------------- errors


def error_kind(exc: sqlite3.Error) -> str | None:
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
def write(db: Database) -> Iterator[sqlite3.Connection]:
    """A write transaction holding the write lock from its first statement."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")  # can fail too (disk full while appending to the WAL)
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    # SQLITE_FULL may already have rolled back; a failing ROLLBACK must not mask the cause.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def to_handoff(row: Mapping[str, Any]) -> Handoff:
    return decode(Handoff, row, status=HandoffStatus(row["status"]))


def purge_batch(conn: sqlite3.Connection, cutoff: str, now: str) -> int:
    """Delete up to PURGE_BATCH sessions idle since before ``cutoff``; the caller's transaction."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM sessions WHERE last_active_at < ? LIMIT ?", (cutoff, PURGE_BATCH)
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


def checkpoint(conn: sqlite3.Connection) -> None:
    # Copies the WAL into the main file and empties it, so purged text leaves the disk.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


# --------------------------------------------------------------------------- statements


def insert(conn: sqlite3.Connection, table: str, row: Mapping[str, Any]) -> int:
    """INSERT one encoded row; returns its rowid. The SQL text is stable per column set, so
    sqlite3's statement cache prepares it once."""
    cols = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    return conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row).lastrowid or 0


def rows(conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def check_new_requests(conn: sqlite3.Connection, turns: Sequence[Any]) -> None:
    """DuplicateRequest when a turn's (session, role, request_id) is already stored (the
    caller's write transaction, so no concurrent duplicate can slip in between)."""
    for t in turns:
        if t.request_id is None:
            continue
        found = conn.execute(
            "SELECT 1 FROM turns WHERE session_id = ? AND request_id = ? AND role = ? LIMIT 1",
            (t.session_id, t.request_id, t.role.value),
        ).fetchone()
        if found is not None:
            raise DuplicateRequest(t.session_id, t.request_id)


def fetch_session(
    conn: sqlite3.Connection, tenant: str, session_id: str, *, writable: bool = True
) -> Session:
    found = rows(conn, "SELECT * FROM sessions WHERE id = ?", (session_id,))
    if not found:
        raise RecordNotFound("session", session_id)
    row = found[0]
    session = decode(Session, row, tenant=tenant, status=SessionStatus(row["status"]))
    if writable:
        ensure_writable(session)
    return session
