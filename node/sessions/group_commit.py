"""Group commit over one SQLite file: a writer thread, a reader thread, a bounded queue.

:class:`GroupCommitDB` runs callables against a WAL database with ``synchronous=FULL``:

* :meth:`GroupCommitDB.write` queues a write for the writer thread, which takes every write
  waiting (up to ``max_group``) into *one* ``BEGIN IMMEDIATE`` transaction — each in its own
  SAVEPOINT, so a write that raises rolls back alone — and commits them with one fsync. The
  caller is answered only after that commit. Under load the groups grow by themselves; an
  idle database commits at once (no timer).
* :meth:`GroupCommitDB.read` runs on a second thread with its own connection: WAL readers
  never wait for the writer's fsync.
* Processes sharing the file (worker processes) hand it over through a blocking ``flock``:
  SQLite's busy handler sleeps in millisecond steps and idles a waiting writer long after the
  lock is free. Other writers (tools, a restart overlap) are handled by ``BEGIN IMMEDIATE``
  with jittered, bounded retries, then :class:`StorageBusy`.
* Disk or quota full and I/O errors fail the whole group with :class:`StorageUnavailable`
  (rolled back, the file stays consistent); corruption is :class:`StorageCorrupt`.
* The queue is bounded (``max_pending``): beyond it calls fail fast with :class:`StorageBusy`.

Nothing here knows about sessions; :mod:`kefu.node.sessions.sqlite_store` builds the store on it.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kefu import tracing
from kefu.node.sessions.files import private_db_file
from kefu.node.sessions.session_db import (
    SQLiteStoreOptions,
    StoreStats,
    checkpoint,
    error_kind,
    rollback,
)
from kefu.node.sessions.store import StorageBusy, StorageCorrupt, StorageUnavailable

__all__ = ["GroupCommitDB", "Op"]

log = logging.getLogger(__name__)

R = TypeVar("R")
Op = Callable[[sqlite3.Connection], R]
_CLOSED = "session store is closed / 会话存储已关闭"


class GroupCommitDB:
    """One SQLite file behind a writer and a reader thread. Create it with :meth:`open`."""

    def __init__(
        self,
        *,
        path: Path,
        name: str,
        options: SQLiteStoreOptions,
        setup: Callable[[sqlite3.Connection], None],
        stats: StoreStats | None = None,
    ):
        self._path = path
        self._name = name
        self._options = options
        self._setup = setup  # schema creation / migration, on the writer thread at open
        self._conn: sqlite3.Connection | None = None  # the writer's; its thread only
        self._reader: sqlite3.Connection | None = None  # the reader's; its thread only
        self._lock_fd = -1  # the writers' lock file (see _commit_group)
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"kefu-sqlite-w-{name}"
        )
        self._reader_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"kefu-sqlite-r-{name}"
        )
        self._group: list[tuple[Op[Any], concurrent.futures.Future[Any]]] = []
        self._group_lock = threading.Lock()
        self._group_scheduled = False
        self._pending = 0
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None
        self.stats = stats or StoreStats()

    async def open(self) -> None:
        """Create the directory, connect, set the pragmas and run ``setup``; idempotent-safe."""
        try:
            await self._submit(self._writer_thread, self._open_sync)
        except BaseException:
            await self.close()
            raise

    async def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (after purges: text leaves disk)."""
        self._admit()
        await self._submit(self._writer_thread, self._checkpoint_sync)

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
            private_db_file(self._path)  # 0600 in 0700 directories, before SQLite opens it
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
            self._setup(conn)
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

    def _admit(self) -> None:
        if self._closed:
            raise StorageUnavailable(_CLOSED)
        if self._pending >= self._options.max_pending:
            self.stats.rejected += 1
            raise StorageBusy(
                f"session store of {self._name!r} is overloaded, retry later / "
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

    async def read(self, op: Op[R]) -> R:
        """Run ``op`` on the reader thread (its own connection, retried when busy)."""
        self._admit()
        return await self._submit(self._reader_thread, lambda: self._read_sync(op))

    def _read_sync(self, op: Op[R]) -> R:
        if self._closed and self._reader is None:
            raise StorageUnavailable(_CLOSED)

        def attempt() -> R:
            if self._reader is None:
                self._reader = self._connect()
                self._reader.execute("PRAGMA query_only = ON")
            return op(self._reader)

        try:
            return self._retry_busy(attempt)
        except sqlite3.Error as exc:
            raise self._translate(exc, error_kind(exc)) from exc

    async def write(self, op: Op[R]) -> R:
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
        # The span is this write's wait for its group's commit (others may share it).
        with tracing.span("sqlite commit", {"db.system": "sqlite", "kefu.store": self._name}):
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
            self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
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

    def _retry_busy(self, fn: Callable[[], R]) -> R:
        """``fn()``, retried with jittered backoff while SQLite says busy/locked; any other
        error, or busy after the last retry, is raised as is."""
        delay = self._options.backoff_initial_s
        for _ in range(self._options.busy_retries):
            try:
                return fn()
            except sqlite3.Error as exc:
                if error_kind(exc) != "busy":
                    raise
            self.stats.busy_retries += 1
            time.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._options.backoff_max_s)
        return fn()

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

    def _checkpoint_sync(self) -> None:  # on the writer thread, outside any transaction
        if self._conn is None:
            raise StorageUnavailable(_CLOSED)
        try:
            checkpoint(self._conn)
        except sqlite3.Error as exc:
            raise self._translate(exc, error_kind(exc)) from exc

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
