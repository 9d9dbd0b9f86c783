"""The node audit log on disk: one append-only SQLite file per node (``<data-dir>/audit.db``).

Each append runs in one ``BEGIN IMMEDIATE`` transaction that reads the last record's hash and
inserts the next record (:func:`kefu.node.audit.chain.seal`), so worker processes sharing a
data directory and ``kefu node rekey`` extend one chain without forking it. Triggers refuse
``UPDATE`` and ``DELETE`` on the table: the product never rewrites the log, and anyone who
does (dropping the triggers first) breaks the chain, which ``kefu node audit verify`` names.

On the event loop, :class:`AuditJournal` queues entries on a bounded queue (a full queue makes
the caller wait: an action is never left unrecorded) and one task writes them in batches off
the loop; each written record is handed to the listeners (the control-plane agent ships them
as redacted events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from kefu.errors import PermanentError, TemporaryError
from kefu.node.audit.chain import GENESIS, AuditEntry, AuditRecord, ChainBreak, seal, verify
from kefu.node.sessions.files import private_dir

__all__ = ["AUDIT_FILE", "AuditJournal", "append", "read_records", "verify_file"]

log = logging.getLogger("kefu.node.audit")

AUDIT_FILE = "audit.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    tenant TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
_COLUMNS = "seq, ts, actor, role, action, tenant, target, outcome, detail, prev, hash"


class AuditUnavailable(TemporaryError):
    """The audit file cannot be written (disk full, locked for too long)."""


def _connect(path: Path) -> sqlite3.Connection:
    private_dir(path.parent)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    path.chmod(0o600)
    return conn


def _append(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        for e in entries:
            seq += 1
            r = seal(e, seq=seq, prev=prev)
            conn.execute(
                f"INSERT INTO audit ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.seq,
                    r.ts,
                    r.actor,
                    r.role,
                    r.action,
                    r.tenant,
                    r.target,
                    r.outcome,
                    r.detail,
                    r.prev,
                    r.hash,
                ),
            )
            prev = r.hash
            out.append(r)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return out


def append(data_dir: Path, entries: list[AuditEntry]) -> list[AuditRecord]:
    """Append from a command (``kefu node rekey``): open, append, close."""
    try:
        conn = _connect(Path(data_dir) / AUDIT_FILE)
        try:
            return _append(conn, entries)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AuditUnavailable(f"{data_dir / AUDIT_FILE}: cannot append ({exc})") from exc


def _row(row: tuple) -> AuditRecord:
    seq, ts, actor, role, action, tenant, target, outcome, detail, prev, h = row
    return AuditRecord(
        seq=int(seq),
        ts=float(ts),
        actor=str(actor),
        role=str(role),
        action=str(action),
        tenant=str(tenant),
        target=str(target),
        outcome=str(outcome),
        detail=str(detail),
        prev=str(prev),
        hash=str(h),
    )


def read_records(
    data_dir: Path, *, tenant: str = "", limit: int = 0, after: int = 0
) -> list[AuditRecord]:
    """Records in ``seq`` order (the last ``limit`` when given; only ``tenant``'s if set)."""
    path = Path(data_dir) / AUDIT_FILE
    if not path.exists():
        raise PermanentError(f"{path}: no audit log here / 此处没有审计日志")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            where = "WHERE seq > ?"
            args: list[object] = [after]
            if tenant:
                where += " AND tenant = ?"
                args.append(tenant)
            sql = f"SELECT {_COLUMNS} FROM audit {where} ORDER BY seq DESC"
            if limit:
                sql += " LIMIT ?"
                args.append(limit)
            return sorted((_row(r) for r in conn.execute(sql, args)), key=lambda r: r.seq)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise PermanentError(f"{path}: cannot read the audit log ({exc}) / 无法读取") from exc


def verify_file(data_dir: Path) -> tuple[int, list[ChainBreak]]:
    """(records checked, breaks) for the node's whole audit log."""
    records = read_records(data_dir)
    return len(records), verify(records)


class AuditJournal:
    """The running node's audit log: :meth:`record` from the loop, written off it."""

    def __init__(self, data_dir: Path, *, max_queue: int = 4096, batch: int = 256):
        self.path = Path(data_dir) / AUDIT_FILE
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(maxsize=max_queue)
        self._batch = batch
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        #: Called on the loop with each record once it is on disk (e.g. the agent's shipper).
        self.listeners: list[Callable[[AuditRecord], None]] = []
        #: Records written by this process.
        self.written = 0
        #: Entries refused by a full queue (record_nowait only).
        self.dropped = 0
        self._pending = 0
        self._drained = asyncio.Event()
        self._drained.set()

    async def start(self) -> AuditJournal:
        self._conn = await asyncio.to_thread(_connect, self.path)
        self._task = asyncio.create_task(self._run(), name="kefu-audit")
        return self

    async def record(self, entry: AuditEntry) -> None:
        """Queue ``entry``; waits only when the queue is full (the disk is behind). An entry
        that may not be recorded (free text) is refused here, to the caller."""
        seal(entry, seq=1, prev=GENESIS)
        self._pending += 1
        self._drained.clear()
        await self._queue.put(entry)

    def record_nowait(self, entry: AuditEntry) -> bool:
        """Queue ``entry`` from synchronous code (a registry listener); False (and an error
        logged) only when the queue is full, i.e. the disk has been stuck for thousands of
        entries."""
        seal(entry, seq=1, prev=GENESIS)
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit queue full, entry dropped: %s / 审计队列已满", entry.action)
            return False
        self._pending += 1
        self._drained.clear()
        return True

    async def flush(self) -> None:
        """Wait until everything queued so far is on disk."""
        await self._drained.wait()

    async def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        while True:
            entries = [await self._queue.get()]
            while len(entries) < self._batch and not self._queue.empty():
                entries.append(self._queue.get_nowait())
            while True:
                try:
                    records = await asyncio.to_thread(_append, conn, entries)
                    break
                except sqlite3.OperationalError as exc:  # locked or disk full: retry
                    log.warning("audit log write failed, retrying: %s / 审计日志写入失败", exc)
                    await asyncio.sleep(0.5)
            self.written += len(records)
            self._pending -= len(entries)
            if self._pending <= 0:
                self._drained.set()
            for r in records:
                for listener in self.listeners:
                    try:
                        listener(r)
                    except Exception:  # a listener never stops the log
                        log.exception("audit listener failed")

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout=5.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
