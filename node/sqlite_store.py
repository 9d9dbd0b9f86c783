"""The SQLite adapter of :class:`~kefu.node.sessions.SessionStore`: one database file per tenant.

Layout: ``<data_dir>/tenants/<tenant>/sessions.db`` (plus SQLite's ``-wal``/``-shm``). The tenant
id is a validated slug, and the file records its tenant in a ``meta`` table checked on open, so
a copied or misplaced file is refused rather than served to the wrong tenant.

Durability, throughput and robustness:

* ``journal_mode=WAL`` + ``synchronous=FULL``: every commit is fsynced, so a turn acknowledged
  to a customer channel survives ``kill -9``, power loss and an OS crash.
* **Group commit.** One fsync costs milliseconds, so a store that committed each write alone
  would cap a tenant at a few hundred turns/s. Writes queue for a single writer thread, which
  takes every write waiting (up to ``max_group``) into *one* transaction — each in its own
  SAVEPOINT, so one failing write (a conflict, a bad record) rolls back alone — and commits
  them with one fsync. No caller is answered before that commit; under load the groups grow by
  themselves, with no timer adding latency when the store is idle.
* Reads run on a second thread with their own connection (WAL readers never block the writer)
  so a turn's first read does not wait behind a commit's fsync.
* Blocking work never runs on the event loop, and a slow disk stalls only this tenant.
* The queue in front of the threads is bounded (``max_pending``); beyond it calls fail fast with
  :class:`StorageBusy`: overload becomes quick "try again" answers, not unbounded memory.
* ``SQLITE_BUSY``/``LOCKED`` (another process holding the write lock past ``busy_timeout``) is
  retried with jittered exponential backoff, then :class:`StorageBusy`. Write groups take the
  lock up front (``BEGIN IMMEDIATE``), so a read-then-write never dead-ends in an upgrade.
* Disk or quota full and I/O errors become :class:`StorageUnavailable` for every write of the
  group; the transaction is rolled back and the file stays consistent. ``max_db_bytes`` is a
  per-tenant quota (``PRAGMA max_page_count``), so one tenant cannot fill a shared disk.
* ``secure_delete`` plus a WAL truncate after purges, so purged conversations leave the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from kefu.node.session_db import (
    PURGE_BATCH,
    SCHEMA_VERSION,
    SQLiteStoreOptions,
    StoreStats,
    checkpoint,
    decode,
    encode,
    error_kind,
    fetch_session,
    insert,
    prepare,
    purge_batch,
    rollback,
    rows,
    tenant_db_path,
    to_handoff,
)
from kefu.node.sessions import (
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
    StorageBusy,
    StorageCorrupt,
    StorageUnavailable,
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

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteSessionStore",
    "SQLiteStoreOptions",
    "StoreStats",
    "tenant_db_path",
]

log = logging.getLogger(__name__)

R = TypeVar("R")
Op = Callable[[sqlite3.Connection], R]
_CLOSED = "session store is closed / 会话存储已关闭"
_UPSERT_SLOT = (
    "INSERT INTO slots (session_id, key, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value, "
    "updated_at = excluded.updated_at"
)


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
        self._conn: sqlite3.Connection | None = None  # the writer's; its thread only
        self._reader: sqlite3.Connection | None = None  # the reader's; its thread only
        self._lock_fd = -1  # the writers' lock file (see _commit_group)
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"kefu-sessions-w-{tenant}"
        )
        self._reader_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"kefu-sessions-r-{tenant}"
        )
        self._group: list[tuple[Op[Any], concurrent.futures.Future[Any]]] = []
        self._group_lock = threading.Lock()
        self._group_scheduled = False
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
            await store._submit(store._writer_thread, store._open_sync)
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

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; this module opens every one itself.
        conn = sqlite3.connect(
            self._path,
            timeout=self._options.busy_timeout_s,
            isolation_level=None,
            cached_statements=256,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._options.busy_timeout_s * 1000)}")
        return conn

    def _open_sync(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageUnavailable(f"{self._path.parent}: {exc} / 无法创建会话目录") from exc
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._translate(exc, error_kind(exc)) from exc
        try:
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
            prepare(Database(conn, execute_plugins=False), self._tenant, to_iso(self._now()))
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, error_kind(exc)) from exc
        except BaseException:
            conn.close()
            raise
        try:
            self._lock_fd = os.open(f"{self._path}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            conn.close()
            raise StorageUnavailable(f"{self._path}: {exc} / 无法创建写锁文件") from exc
        self._conn = conn

    def _now(self) -> datetime:
        return as_utc(self._clock())

    def _admit(self) -> None:
        if self._closed:
            raise StorageUnavailable(_CLOSED)
        if self._pending >= self._options.max_pending:
            self.stats.rejected += 1
            raise StorageBusy(
                f"session store of {self._tenant!r} is overloaded, retry later / "
                "会话存储繁忙，请稍后重试"
            )

    async def _await(self, future: concurrent.futures.Future[R]) -> R:
        """Count ``future`` as pending until it ends (not merely until its caller gives up)."""
        self._pending += 1
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.done():
                self._pending -= 1
            else:  # still queued or running: its slot frees when it really ends
                loop = asyncio.get_running_loop()
                future.add_done_callback(
                    lambda _: (
                        loop.call_soon_threadsafe(self._release) if not loop.is_closed() else None
                    )
                )
            raise
        except BaseException:
            self._pending -= 1
            raise
        self._pending -= 1
        return result

    def _release(self) -> None:
        self._pending -= 1

    async def _submit(
        self, thread: concurrent.futures.ThreadPoolExecutor, fn: Callable[[], R]
    ) -> R:
        try:
            future = thread.submit(fn)
        except RuntimeError as exc:  # executor already shut down
            raise StorageUnavailable(_CLOSED) from exc
        return await self._await(future)

    async def _read(self, op: Op[R]) -> R:
        """Run ``op`` on the reader thread (its own connection, retried when busy)."""
        self._admit()
        return await self._submit(self._reader_thread, lambda: self._read_sync(op))

    def _read_sync(self, op: Op[R]) -> R:
        if self._closed and self._reader is None:
            raise StorageUnavailable(_CLOSED)
        delay = self._options.backoff_initial_s
        for attempt in range(self._options.busy_retries + 1):
            try:
                if self._reader is None:
                    self._reader = self._connect()
                    self._reader.execute("PRAGMA query_only = ON")
                return op(self._reader)
            except sqlite3.Error as exc:
                kind = error_kind(exc)
                if kind == "busy" and attempt < self._options.busy_retries:
                    self.stats.busy_retries += 1
                    time.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self._options.backoff_max_s)
                    continue
                raise self._translate(exc, kind) from exc
        raise AssertionError("unreachable")

    async def _write(self, op: Op[R]) -> R:
        """Run ``op`` in the next group transaction; returns once that group is committed."""
        self._admit()
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self._group_lock:
            self._group.append((op, future))
            schedule = not self._group_scheduled
            self._group_scheduled = True
        if schedule:
            try:
                self._writer_thread.submit(self._commit_group)
            except RuntimeError:  # shut down meanwhile
                self._fail_waiting(StorageUnavailable(_CLOSED))
        return await self._await(future)

    def _commit_group(self) -> None:
        with self._group_lock:
            jobs = self._group[: self._options.max_group]
            del self._group[: len(jobs)]
            self._group_scheduled = bool(self._group)
        if self._group_scheduled:  # more than one group's worth waiting: another after this
            try:
                self._writer_thread.submit(self._commit_group)
            except RuntimeError:  # shut down meanwhile: nobody may be left waiting
                self._fail_waiting(StorageUnavailable(_CLOSED))
        # A caller cancelled before its write started gets nothing written.
        jobs = [(op, fut) for op, fut in jobs if fut.set_running_or_notify_cancel()]
        if not jobs:
            return
        conn = self._conn
        if conn is None:
            for _, fut in jobs:
                fut.set_exception(StorageUnavailable(_CLOSED))
            return
        # Worker processes of one node write the same file. SQLite's own busy handler sleeps
        # in steps of milliseconds, which idles a waiting writer long after the lock is free;
        # a blocking flock hands the file over the moment the other group commits.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._begin(conn)
            outcomes = [self._in_savepoint(conn, op) for op, _ in jobs]
            conn.execute("COMMIT")  # can fail too (disk full while appending to the WAL)
        except sqlite3.Error as exc:
            rollback(conn)
            error = self._translate(exc, error_kind(exc))
            for _, fut in jobs:
                fut.set_exception(error)
            return
        except BaseException as exc:  # a bug: fail loudly, but never leave callers hanging
            rollback(conn)
            for _, fut in jobs:
                fut.set_exception(exc)
            raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self.stats.groups += 1
        self.stats.grouped_writes += len(jobs)
        for (_, fut), (ok, value) in zip(jobs, outcomes, strict=True):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _fail_waiting(self, error: Exception) -> None:
        with self._group_lock:
            jobs, self._group = self._group, []
            self._group_scheduled = False
        for _, fut in jobs:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)

    def _begin(self, conn: sqlite3.Connection) -> None:
        delay = self._options.backoff_initial_s
        for attempt in range(self._options.busy_retries + 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as exc:
                if error_kind(exc) != "busy" or attempt == self._options.busy_retries:
                    raise
                self.stats.busy_retries += 1
                time.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self._options.backoff_max_s)

    @staticmethod
    def _in_savepoint(conn: sqlite3.Connection, op: Op[Any]) -> tuple[bool, Any]:
        """Run one write of a group; a failure it raises undoes that write only.

        Storage failures (disk full, I/O, corruption) are re-raised: they doom the whole group.
        """
        conn.execute("SAVEPOINT write")
        try:
            value = op(conn)
        except sqlite3.Error as exc:
            if error_kind(exc) is not None:
                raise
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            return False, exc
        except Exception as exc:  # the record's own conflict or validation error
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            return False, exc
        conn.execute("RELEASE write")
        return True, value

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

    def _session(
        self, conn: sqlite3.Connection, session_id: str, *, writable: bool = True
    ) -> Session:
        return fetch_session(conn, self._tenant, session_id, writable=writable)

    # ------------------------------------------------------------------ sessions

    async def create_session(self, new: NewSession) -> Session:
        def op(conn: sqlite3.Connection) -> Session:
            session = start_session(new, tenant=self._tenant, now=self._now())
            insert(conn, "sessions", encode(session, skip=frozenset({"tenant"})))
            return session

        return await self._write(op)

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
        def op(conn: sqlite3.Connection) -> Session:
            session = self._session(conn, session_id, writable=False)
            patched = patch_session(
                session, status=status, language=language, scenario=scenario, attributes=attributes
            )
            if patched is None:
                return session
            _update_session_row(conn, patched)
            return patched

        return await self._write(op)

    # ------------------------------------------------------------------ turns and slots

    async def append_turn(self, turn: NewTurn) -> Turn:
        def op(conn: sqlite3.Connection) -> Turn:
            session = self._session(conn, turn.session_id)
            stored = stored_turn(turn, seq=session.turn_count + 1, now=self._now())
            insert(conn, "turns", encode(stored))
            conn.execute(
                "UPDATE sessions SET turn_count = ?, last_active_at = ? WHERE id = ?",
                (stored.seq, to_iso(stored.created_at), session.id),
            )
            return stored

        return await self._write(op)

    async def get_turns(
        self, session_id: str, *, after_seq: int = 0, tail: int | None = None
    ) -> list[Turn]:
        def op(conn: sqlite3.Connection) -> list[Turn]:
            sql = "SELECT * FROM turns WHERE session_id = ? AND seq > ?"
            if tail is None:
                return [
                    decode(Turn, r)
                    for r in rows(conn, sql + " ORDER BY seq", (session_id, after_seq))
                ]
            found = rows(
                conn, sql + " ORDER BY seq DESC LIMIT ?", (session_id, after_seq, max(tail, 0))
            )
            return [decode(Turn, r) for r in reversed(found)]

        return await self._read(op)

    async def set_slot(self, session_id: str, key: str, value: Any) -> Slot:
        def op(conn: sqlite3.Connection) -> Slot:
            self._session(conn, session_id)
            slot = Slot(
                session_id=session_id,
                key=key,
                updated_at=self._now(),
                value=json_clone(value, what="slot value"),
            )
            _upsert_slot(conn, slot)
            return slot

        return await self._write(op)

    async def get_slots(self, session_id: str) -> dict[str, Slot]:
        return await self._read(lambda conn: _slots(conn, session_id))

    async def load_context(self, session_id: str) -> SessionContext | None:
        def op(conn: sqlite3.Connection) -> SessionContext | None:
            # One read transaction, so the session and its slots are from the same moment.
            conn.execute("BEGIN")
            try:
                session = self._session(conn, session_id, writable=False)
                return SessionContext(session=session, slots=_slots(conn, session_id))
            except RecordNotFound:
                return None
            finally:
                conn.execute("COMMIT")

        return await self._read(op)

    async def record_turn(self, record: TurnRecord) -> RecordedTurn:
        def op(conn: sqlite3.Connection) -> RecordedTurn:
            now = self._now()
            if record.new_session is not None:
                session = record.new_session
                try:
                    insert(conn, "sessions", encode(session, skip=frozenset({"tenant"})))
                except sqlite3.IntegrityError as exc:
                    raise StateConflict(f"session {session.id!r} already exists") from exc
            else:
                session = self._session(conn, record.session_id)
            active = record.handoff is not None and _has_active_handoff(conn, session.id)
            after, turns, handoff = apply_turn_record(
                session, record, now=now, has_active_handoff=active
            )
            for t in turns:
                insert(conn, "turns", encode(t))
            for key, value in record.slots.items():
                _upsert_slot(
                    conn,
                    Slot(
                        session_id=session.id,
                        key=key,
                        value=json_clone(value, what="slot value"),
                        updated_at=now,
                    ),
                )
            if handoff is not None:
                insert(conn, "handoffs", encode(handoff))
            _update_session_row(conn, after)
            return RecordedTurn(session=after, turns=turns, handoff=handoff)

        return await self._write(op)

    # ------------------------------------------------------------------ hand-offs

    async def create_handoff(
        self, session_id: str, *, reason: str, summary: Mapping[str, Any] | None = None
    ) -> Handoff:
        def op(conn: sqlite3.Connection) -> Handoff:
            self._session(conn, session_id)
            handoff = open_handoff(session_id, reason=reason, summary=summary, now=self._now())
            try:
                insert(conn, "handoffs", encode(handoff))
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
            return to_handoff(found[0]) if found else None

        return await self._read(op)

    async def update_handoff(
        self, handoff_id: str, *, status: HandoffStatus, agent_id: str | None = None
    ) -> Handoff:
        def op(conn: sqlite3.Connection) -> Handoff:
            found = rows(conn, "SELECT * FROM handoffs WHERE id = ?", (handoff_id,))
            if not found:
                raise RecordNotFound("handoff", handoff_id)
            updated = move_handoff(to_handoff(found[0]), status, agent_id, self._now())
            row = encode(updated)
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
        return _make_page([to_handoff(r) for r in found[:limit]], more=len(found) > limit)

    # ------------------------------------------------------------------ feedback

    async def add_feedback(self, new: NewFeedback) -> Feedback:
        def op(conn: sqlite3.Connection) -> Feedback:
            session = self._session(conn, new.session_id, writable=False)
            if new.turn_seq is not None and new.turn_seq > session.turn_count:
                raise RecordNotFound("turn", f"{new.session_id}#{new.turn_seq}")
            stored = stored_feedback(new, feedback_id=0, now=self._now())
            rowid = insert(conn, "feedback", encode(stored, skip=frozenset({"id"})))
            return replace(stored, id=rowid)

        return await self._write(op)

    async def list_feedback(self, session_id: str) -> list[Feedback]:
        sql = "SELECT * FROM feedback WHERE session_id = ? ORDER BY id"
        return await self._read(
            lambda conn: [decode(Feedback, r) for r in rows(conn, sql, (session_id,))]
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
            self._admit()
            await self._submit(self._writer_thread, self._checkpoint_sync)
        return total

    def _checkpoint_sync(self) -> None:
        if self._conn is None:
            raise StorageUnavailable(_CLOSED)
        try:
            checkpoint(self._conn)
        except sqlite3.Error as exc:
            raise self._translate(exc, error_kind(exc)) from exc

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._close_task is None:
            self._closed = True  # new calls are refused; queued ones still run first (FIFO)
            self._close_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        try:
            await asyncio.gather(
                asyncio.wrap_future(self._reader_thread.submit(self._close_reader)),
                asyncio.wrap_future(self._writer_thread.submit(self._close_writer)),
            )
        finally:
            self._reader_thread.shutdown(wait=False)
            self._writer_thread.shutdown(wait=False)

    def _close_reader(self) -> None:
        conn, self._reader = self._reader, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _close_writer(self) -> None:
        # Queued groups ran before this (the thread is FIFO); anything left was never scheduled.
        conn, self._conn = self._conn, None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):  # best effort: a full disk must not block it
            conn.execute("PRAGMA optimize")
        try:
            conn.close()
        except sqlite3.Error as exc:
            log.warning("closing %s: %s", self._path, exc)


def _slots(conn: sqlite3.Connection, session_id: str) -> dict[str, Slot]:
    found = rows(conn, "SELECT * FROM slots WHERE session_id = ? ORDER BY key", (session_id,))
    return {r["key"]: decode(Slot, r) for r in found}


def _upsert_slot(conn: sqlite3.Connection, slot: Slot) -> None:
    row = encode(slot)
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
