"""The SQLite adapter of :class:`~kefu.node.sessions.store.SessionStore`: one database file
per tenant.

Layout: ``<data_dir>/tenants/<tenant>/sessions.db`` (plus SQLite's ``-wal``/``-shm``). The tenant
id is a validated slug, and the file records its tenant in a ``meta`` table checked on open, so
a copied or misplaced file is refused rather than served to the wrong tenant.

Durability and throughput come from
:class:`~kefu.node.sessions.group_commit.GroupCommitDB`: WAL with
``synchronous=FULL`` (an acknowledged turn survives ``kill -9`` and power loss), group commit
(concurrent turns share one fsync), a reader thread, a bounded queue, busy retries, and disk
full as :class:`StorageUnavailable` with the file intact. This module maps the session records
onto it: one :class:`TurnRecord` is one write, so a whole turn lands atomically.
``max_db_bytes`` is a per-tenant quota (``PRAGMA max_page_count``); ``secure_delete`` plus a WAL
truncate after purges make purged conversations leave the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlite_utils import Database

from kefu.node.sessions.group_commit import GroupCommitDB
from kefu.node.sessions.sealing import FieldCipher
from kefu.node.sessions.session_db import (
    PURGE_BATCH,
    SCHEMA_VERSION,
    SQLiteStoreOptions,
    StoreStats,
    check_new_requests,
    decode,
    encode,
    fetch_session,
    insert,
    prepare,
    purge_batch,
    rows,
    tenant_db_path,
    to_handoff,
)
from kefu.node.sessions.store import (
    Feedback,
    Handoff,
    HandoffStatus,
    NewFeedback,
    NewSession,
    NewTurn,
    Page,
    RecordedTurn,
    RecordNotFound,
    Session,
    SessionContext,
    SessionStatus,
    Slot,
    StateConflict,
    Turn,
    TurnRecord,
    apply_turn_record,
    as_utc,
    check_limit,
    check_retention,
    decode_cursor,
    encode_cursor,
    json_clone,
    move_handoff,
    open_handoff,
    patch_session,
    start_session,
    stored_feedback,
    stored_turn,
    to_iso,
    utc_now,
)
from kefu.node.sessions.tenant_keys import EncryptionOptions, TenantKeys, load_master_key

__all__ = [
    "SCHEMA_VERSION",
    "OutboxSink",
    "SQLiteSessionStore",
    "SQLiteStoreOptions",
    "StoreStats",
    "sqlite_store_opener",
    "tenant_db_path",
]

_R = TypeVar("_R")

#: Columns holding what customers and agents wrote: encrypted at rest when a cipher is set.
#: Ids, timestamps, statuses, intents and scores stay clear (indexes and retention need them).
SEALED_COLUMNS = frozenset({"text", "entities", "value", "summary", "comment"})

_UPSERT_SLOT = (
    "INSERT INTO slots (session_id, key, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value, "
    "updated_at = excluded.updated_at"
)


class OutboxSink(Protocol):
    """Where a committed change also goes when the tenant's sessions are replicated
    (:class:`kefu.node.replication.records.OutboxWriter`): ``entry`` builds the outbox row on
    the writer thread, inside the change's own transaction; ``notify`` wakes the shipper."""

    def entry(
        self,
        tenant: str,
        session: Mapping[str, Any],
        turns: Any = (),
        slots: Any = (),
    ) -> dict[str, Any]: ...

    def notify(self) -> None: ...


class SQLiteSessionStore:
    """:class:`SessionStore` over one tenant's SQLite file. Create it with :meth:`open`.

    With :attr:`outbox` set (the tenant's residency allows replication), every change that a
    failed-over conversation needs — the session row, appended turns, set slots — also writes
    an outbox row in the *same* transaction: both or neither."""

    def __init__(
        self,
        *,
        path: Path,
        tenant: str,
        options: SQLiteStoreOptions,
        clock: Callable[[], datetime],
        cipher: FieldCipher | None = None,
    ):
        self._path = path
        self._tenant = tenant
        self._clock = clock
        #: Encryption at rest of the sealed columns (None: stored as text).
        self._cipher = cipher
        self._db = GroupCommitDB(
            path=path,
            name=tenant,
            options=options,
            # Schema and the tenant check, on the writer thread when the file opens.
            setup=lambda conn: prepare(
                Database(conn, execute_plugins=False), tenant, to_iso(self._now())
            ),
        )
        self._read = self._db.read
        self._write = self._db.write
        self.stats = self._db.stats
        #: Replication outbox (None: this tenant's changes are not replicated).
        self.outbox: OutboxSink | None = None

    @classmethod
    async def open(
        cls,
        data_dir: str | Path,
        tenant: str,
        *,
        options: SQLiteStoreOptions | None = None,
        clock: Callable[[], datetime] = utc_now,
        cipher: FieldCipher | None = None,
    ) -> SQLiteSessionStore:
        store = cls(
            path=tenant_db_path(data_dir, tenant),
            tenant=tenant,
            options=options or SQLiteStoreOptions(),
            clock=clock,
            cipher=cipher,
        )
        await store._db.open()
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

    def _now(self) -> datetime:
        return as_utc(self._clock())

    def _seal(self, row: dict[str, Any]) -> dict[str, Any]:
        """Encrypt the sealed columns of a row about to be written (on the writer thread)."""
        c = self._cipher
        if c is not None:
            for col in SEALED_COLUMNS.intersection(row):
                if isinstance(row[col], str):
                    row[col] = c.seal(col, row[col])
        return row

    def _open(self, row: dict[str, Any]) -> dict[str, Any]:
        c = self._cipher
        if c is not None:
            for col in SEALED_COLUMNS.intersection(row):
                if isinstance(row[col], str):
                    row[col] = c.open(col, row[col])
        return row

    def _ship(
        self,
        conn: sqlite3.Connection,
        sink: OutboxSink | None,
        session: Session,
        turns: list[Turn] | tuple[()] = (),
        slots: list[Slot] | tuple[()] = (),
    ) -> None:
        """The outbox row of a change, in the caller's transaction (clear rows, sealed by the
        sink with the zone key)."""
        if sink is not None:
            row = sink.entry(
                self._tenant,
                encode(session, skip=frozenset({"tenant"})),
                [encode(t) for t in turns],
                [encode(s) for s in slots],
            )
            insert(conn, "outbox", row)

    async def _shipped(self, sink: OutboxSink | None, result: _R) -> _R:
        if sink is not None:
            sink.notify()
        return result

    def _session(
        self, conn: sqlite3.Connection, session_id: str, *, writable: bool = True
    ) -> Session:
        return fetch_session(conn, self._tenant, session_id, writable=writable)

    # ------------------------------------------------------------------ sessions

    async def create_session(self, new: NewSession) -> Session:
        sink = self.outbox

        def op(conn: sqlite3.Connection) -> Session:
            session = start_session(new, tenant=self._tenant, now=self._now())
            insert(conn, "sessions", encode(session, skip=frozenset({"tenant"})))
            self._ship(conn, sink, session)
            return session

        return await self._shipped(sink, await self._write(op))

    async def get_session(self, session_id: str) -> Session | None:
        def op(conn: sqlite3.Connection) -> Session | None:
            with contextlib.suppress(RecordNotFound):
                return self._session(conn, session_id, writable=False)
            return None

        return await self._read(op)

    async def list_sessions(
        self,
        *,
        status: SessionStatus | None = None,
        user_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]:
        found = await self._page_rows(
            "sessions", {"status": status, "user_id": user_id}, limit, cursor, newest_first=True
        )
        items = [
            decode(Session, r, tenant=self._tenant, status=SessionStatus(r["status"]))
            for r in found[:limit]
        ]
        return _make_page(items, more=len(found) > limit)

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
        sql = (
            f"SELECT * FROM {table}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY created_at {order}, id {order} LIMIT ?"
        )
        return await self._read(lambda conn: rows(conn, sql, [*args, limit + 1]))

    async def touch_session(self, session_id: str) -> Session:
        def op(conn: sqlite3.Connection) -> Session:
            session = replace(self._session(conn, session_id), last_active_at=self._now())
            conn.execute(
                "UPDATE sessions SET last_active_at = ? WHERE id = ?",
                (to_iso(session.last_active_at), session_id),
            )
            return session

        return await self._write(op)

    async def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | None = None,
        language: str | None = None,
        scenario: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Session:
        sink = self.outbox

        def op(conn: sqlite3.Connection) -> Session:
            session = self._session(conn, session_id, writable=False)
            patched = patch_session(
                session, status=status, language=language, scenario=scenario, attributes=attributes
            )
            if patched is None:
                return session
            _update_session_row(conn, patched)
            self._ship(conn, sink, patched)
            return patched

        return await self._shipped(sink, await self._write(op))

    # ------------------------------------------------------------------ turns and slots

    async def append_turn(self, turn: NewTurn) -> Turn:
        sink = self.outbox

        def op(conn: sqlite3.Connection) -> Turn:
            session = self._session(conn, turn.session_id)
            stored = stored_turn(turn, seq=session.turn_count + 1, now=self._now())
            check_new_requests(conn, (stored,))
            insert(conn, "turns", self._seal(encode(stored)))
            conn.execute(
                "UPDATE sessions SET turn_count = ?, last_active_at = ? WHERE id = ?",
                (stored.seq, to_iso(stored.created_at), session.id),
            )
            after = replace(session, turn_count=stored.seq, last_active_at=stored.created_at)
            self._ship(conn, sink, after, [stored])
            return stored

        return await self._shipped(sink, await self._write(op))

    async def get_turns(
        self, session_id: str, *, after_seq: int = 0, tail: int | None = None
    ) -> list[Turn]:
        def op(conn: sqlite3.Connection) -> list[Turn]:
            sql = "SELECT * FROM turns WHERE session_id = ? AND seq > ?"
            if tail is None:
                return [
                    decode(Turn, self._open(r))
                    for r in rows(conn, sql + " ORDER BY seq", (session_id, after_seq))
                ]
            found = rows(
                conn, sql + " ORDER BY seq DESC LIMIT ?", (session_id, after_seq, max(tail, 0))
            )
            return [decode(Turn, self._open(r)) for r in reversed(found)]

        return await self._read(op)

    async def find_request(self, session_id: str, request_id: str) -> list[Turn]:
        sql = "SELECT * FROM turns WHERE session_id = ? AND request_id = ? ORDER BY seq"
        return await self._read(
            lambda conn: [
                decode(Turn, self._open(r)) for r in rows(conn, sql, (session_id, request_id))
            ]
        )

    async def set_slot(self, session_id: str, key: str, value: Any) -> Slot:
        sink = self.outbox

        def op(conn: sqlite3.Connection) -> Slot:
            session = self._session(conn, session_id)
            slot = Slot(
                session_id=session_id,
                key=key,
                updated_at=self._now(),
                value=json_clone(value, what="slot value"),
            )
            _upsert_slot(conn, slot, self._seal)
            self._ship(conn, sink, session, slots=[slot])
            return slot

        return await self._shipped(sink, await self._write(op))

    async def get_slots(self, session_id: str) -> dict[str, Slot]:
        return await self._read(lambda conn: _slots(conn, session_id, self._open))

    async def load_context(self, session_id: str) -> SessionContext | None:
        def op(conn: sqlite3.Connection) -> SessionContext | None:
            # One read transaction, so the session and its slots are from the same moment.
            conn.execute("BEGIN")
            try:
                session = self._session(conn, session_id, writable=False)
                return SessionContext(session=session, slots=_slots(conn, session_id, self._open))
            except RecordNotFound:
                return None
            finally:
                conn.execute("COMMIT")

        return await self._read(op)

    async def record_turn(self, record: TurnRecord) -> RecordedTurn:
        sink = self.outbox

        def op(conn: sqlite3.Connection) -> RecordedTurn:
            now = self._now()
            new = record.new_session
            if new is not None:  # a session this turn opens has no hand-off yet
                session, active = new, False
            else:
                session = self._session(conn, record.session_id)
                active = record.handoff is not None and _has_active_handoff(conn, session.id)
            after, turns, handoff = apply_turn_record(
                session, record, now=now, has_active_handoff=active
            )
            check_new_requests(conn, turns)
            if new is not None:  # stored as it is after the turn: one INSERT, no UPDATE
                try:
                    insert(conn, "sessions", encode(after, skip=frozenset({"tenant"})))
                except sqlite3.IntegrityError as exc:
                    raise StateConflict(f"session {session.id!r} already exists") from exc
            else:
                _update_session_row(conn, after)
            for t in turns:
                insert(conn, "turns", self._seal(encode(t)))
            slots = [
                Slot(
                    session_id=session.id,
                    key=key,
                    value=json_clone(value, what="slot value"),
                    updated_at=now,
                )
                for key, value in record.slots.items()
            ]
            for slot in slots:
                _upsert_slot(conn, slot, self._seal)
            if handoff is not None:
                insert(conn, "handoffs", self._seal(encode(handoff)))
            self._ship(conn, sink, after, turns, slots)
            return RecordedTurn(session=after, turns=turns, handoff=handoff)

        return await self._shipped(sink, await self._write(op))

    # ------------------------------------------------------------------ replication

    async def outbox_batch(self, limit: int) -> list[dict[str, Any]]:
        """The oldest ``limit`` outbox rows (id, msg_id, subject, payload, created_at)."""
        sql = "SELECT * FROM outbox ORDER BY id LIMIT ?"
        return await self._read(lambda conn: rows(conn, sql, (max(limit, 0),)))

    async def outbox_delete(self, ids: list[int]) -> None:
        """Forget rows the stream acknowledged."""
        if not ids:
            return
        marks = ", ".join("?" * len(ids))
        await self._write(
            lambda conn: conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids) and None
        )

    async def outbox_state(self) -> tuple[int, float | None]:
        """(rows waiting, commit time of the oldest) — the shipper's backlog and lag."""
        sql = "SELECT count(*), min(created_at) FROM outbox"
        return await self._read(lambda conn: tuple(conn.execute(sql).fetchone()))

    async def import_changes(self, changes: list[dict[str, Any]]) -> Session | None:
        """Apply replicated changes (oldest first) in one transaction: the session row as the
        last change left it, every turn and slot; turns already here are kept. Not shipped
        again. Returns the session (None when ``changes`` is empty)."""
        if not changes:
            return None

        def op(conn: sqlite3.Connection) -> Session:
            session_row: dict[str, Any] = {}
            for change in changes:
                session_row = dict(change["session"])
                session_row.pop("tenant", None)
                cols = ", ".join(session_row)
                marks = ", ".join(f":{k}" for k in session_row)
                sets = ", ".join(f"{k} = excluded.{k}" for k in session_row if k != "id")
                conn.execute(
                    f"INSERT INTO sessions ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT (id) DO UPDATE SET {sets}",
                    session_row,
                )
                for t in change.get("turns", ()):
                    row = self._seal(dict(t))
                    cols = ", ".join(row)
                    marks = ", ".join(f":{k}" for k in row)
                    conn.execute(f"INSERT OR IGNORE INTO turns ({cols}) VALUES ({marks})", row)
                for s in change.get("slots", ()):
                    row = self._seal(dict(s))
                    conn.execute(
                        _UPSERT_SLOT,
                        (row["session_id"], row["key"], row["value"], row["updated_at"]),
                    )
            return self._session(conn, str(session_row["id"]), writable=False)

        return await self._write(op)

    # ------------------------------------------------------------------ hand-offs

    async def create_handoff(
        self, session_id: str, *, reason: str, summary: Mapping[str, Any] | None = None
    ) -> Handoff:
        def op(conn: sqlite3.Connection) -> Handoff:
            self._session(conn, session_id)
            handoff = open_handoff(session_id, reason=reason, summary=summary, now=self._now())
            try:
                insert(conn, "handoffs", self._seal(encode(handoff)))
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

        return await self._write(op)

    async def get_handoff(self, handoff_id: str) -> Handoff | None:
        def op(conn: sqlite3.Connection) -> Handoff | None:
            found = rows(conn, "SELECT * FROM handoffs WHERE id = ?", (handoff_id,))
            return to_handoff(self._open(found[0])) if found else None

        return await self._read(op)

    async def update_handoff(
        self, handoff_id: str, *, status: HandoffStatus, agent_id: str | None = None
    ) -> Handoff:
        def op(conn: sqlite3.Connection) -> Handoff:
            found = rows(conn, "SELECT * FROM handoffs WHERE id = ?", (handoff_id,))
            if not found:
                raise RecordNotFound("handoff", handoff_id)
            updated = move_handoff(to_handoff(self._open(found[0])), status, agent_id, self._now())
            row = self._seal(encode(updated))
            sets = ", ".join(f"{k} = :{k}" for k in row if k != "id")
            conn.execute(f"UPDATE handoffs SET {sets} WHERE id = :id", row)
            return updated

        return await self._write(op)

    async def list_handoffs(
        self,
        *,
        status: HandoffStatus | None = None,
        session_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Handoff]:
        filters = {"status": status, "session_id": session_id}
        found = await self._page_rows("handoffs", filters, limit, cursor, newest_first=False)
        items = [to_handoff(self._open(r)) for r in found[:limit]]
        return _make_page(items, more=len(found) > limit)

    # ------------------------------------------------------------------ feedback

    async def add_feedback(self, new: NewFeedback) -> Feedback:
        def op(conn: sqlite3.Connection) -> Feedback:
            session = self._session(conn, new.session_id, writable=False)
            if new.turn_seq is not None and new.turn_seq > session.turn_count:
                raise RecordNotFound("turn", f"{new.session_id}#{new.turn_seq}")
            stored = stored_feedback(new, feedback_id=0, now=self._now())
            rowid = insert(conn, "feedback", self._seal(encode(stored, skip=frozenset({"id"}))))
            return replace(stored, id=rowid)

        return await self._write(op)

    async def list_feedback(self, session_id: str) -> list[Feedback]:
        sql = "SELECT * FROM feedback WHERE session_id = ? ORDER BY id"
        return await self._read(
            lambda conn: [decode(Feedback, self._open(r)) for r in rows(conn, sql, (session_id,))]
        )

    # ------------------------------------------------------------------ retention

    async def purge_expired(self, now: datetime, retention: timedelta) -> int:
        now = as_utc(now)
        cutoff, stamp = to_iso(now - check_retention(retention)), to_iso(now)
        total = 0
        while True:
            # One batch per write, so live turns interleave with a long purge.
            done = await self._write(lambda conn: purge_batch(conn, cutoff, stamp))
            total += done
            if done < PURGE_BATCH:
                break
        if total:
            await self._db.checkpoint()
        return total

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Idempotent; queued writes still commit first."""
        await self._db.close()


_Row = Callable[[dict[str, Any]], dict[str, Any]]


def _slots(conn: sqlite3.Connection, session_id: str, unseal: _Row) -> dict[str, Slot]:
    found = rows(conn, "SELECT * FROM slots WHERE session_id = ? ORDER BY key", (session_id,))
    return {r["key"]: decode(Slot, unseal(r)) for r in found}


def _upsert_slot(conn: sqlite3.Connection, slot: Slot, seal: _Row) -> None:
    row = seal(encode(slot))
    conn.execute(_UPSERT_SLOT, (row["session_id"], row["key"], row["value"], row["updated_at"]))


def _update_session_row(conn: sqlite3.Connection, session: Session) -> None:
    row = encode(session, skip=frozenset({"tenant"}))
    sets = ", ".join(f"{k} = :{k}" for k in row if k != "id")
    conn.execute(f"UPDATE sessions SET {sets} WHERE id = :id", row)


def _has_active_handoff(conn: sqlite3.Connection, session_id: str) -> bool:
    sql = "SELECT 1 FROM handoffs WHERE session_id = ? AND status != 'closed' LIMIT 1"
    return conn.execute(sql, (session_id,)).fetchone() is not None


_Keyed = TypeVar("_Keyed", Session, Handoff)


def _make_page(items: list[_Keyed], *, more: bool) -> Page[_Keyed]:
    last = items[-1] if items and more else None
    return Page(
        items=items, next_cursor=None if last is None else encode_cursor(last.created_at, last.id)
    )


def sqlite_store_opener(
    options: SQLiteStoreOptions | None = None,
    encryption: EncryptionOptions | None = None,
) -> Callable[[Path, str], Awaitable[SQLiteSessionStore]]:
    """Opens each tenant's SQLite store: what the server gives the tenant registry. With
    ``encryption`` the sealed columns are encrypted with the tenant's data key."""

    async def open_store(data_dir: Path, tenant: str) -> SQLiteSessionStore:
        cipher = None
        if encryption is not None:

            def load() -> FieldCipher:
                master = load_master_key(data_dir, encryption)
                return TenantKeys(data_dir, master).cipher(tenant)

            cipher = await asyncio.to_thread(load)
        return await SQLiteSessionStore.open(data_dir, tenant, options=options, cipher=cipher)

    return open_store
