"""The seam between Kefu and its message bus: key-value buckets, an object store, streams.

:class:`Bus` is what the control plane and the node agent program against. Two implementations:
:class:`MemoryBus` (here; one process, for unit tests of services and agents without a server)
and :class:`kefu.natsbus.NatsBus` (NATS JetStream; used in production and integration tests).

Semantics both honour:

* ``kv_create`` fails with :class:`Conflict` if the key holds a value; ``kv_update`` is a
  compare-and-set on the key's last revision (:class:`Conflict` if someone wrote in between).
* ``kv_watch`` yields the current value of every matching key, then ``None`` (the snapshot is
  complete), then every later change, deletes as entries with ``deleted=True``.
* ``publish`` appends to the stream owning the subject and returns the stream sequence; a
  repeated ``msg_id`` is stored once (a retry after a lost acknowledgement is not a duplicate).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kefu.errors import PermanentError, TemporaryError

__all__ = [
    "Bus",
    "BusUnavailable",
    "Conflict",
    "KvEntry",
    "MemoryBus",
    "NotFound",
    "ObjectInfo",
    "StreamMessage",
    "cancel_and_wait",
    "snapshot",
    "subject_matches",
]


class Conflict(PermanentError):
    """A create found the key present, or a compare-and-set lost the race."""


class NotFound(PermanentError):
    """The bucket, key or object does not exist."""


class BusUnavailable(TemporaryError):
    """The bus cannot be reached right now (or refused us access)."""


@dataclass(frozen=True, kw_only=True)
class KvEntry:
    key: str
    value: bytes
    revision: int
    created: float = 0.0
    deleted: bool = False


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class StreamMessage:
    subject: str
    data: bytes
    seq: int
    time: float


class Bus(Protocol):
    async def ensure_kv(self, bucket: str, *, history: int = 1) -> None: ...
    async def ensure_objects(self, bucket: str) -> None: ...
    async def ensure_stream(
        self, name: str, subjects: list[str], *, max_age_s: float = 0, max_msgs: int = -1
    ) -> None: ...

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None: ...
    async def kv_put(self, bucket: str, key: str, value: bytes) -> int: ...
    async def kv_create(self, bucket: str, key: str, value: bytes) -> int: ...
    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int: ...
    async def kv_delete(self, bucket: str, key: str) -> None: ...
    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]: ...
    async def kv_history(self, bucket: str, key: str) -> list[KvEntry]: ...
    def kv_watch(self, bucket: str, pattern: str = ">") -> AsyncIterator[KvEntry | None]: ...

    async def obj_put(self, bucket: str, name: str, data: bytes) -> ObjectInfo: ...
    async def obj_get(self, bucket: str, name: str, dest: Path) -> ObjectInfo: ...
    async def obj_info(self, bucket: str, name: str) -> ObjectInfo | None: ...

    async def publish(self, subject: str, data: bytes, *, msg_id: str = "") -> int: ...
    async def stream_read(
        self,
        stream: str,
        subject: str = ">",
        *,
        since: float = 0.0,
        since_seq: int = 0,
        limit: int = 10_000,
    ) -> list[StreamMessage]: ...

    async def close(self) -> None: ...


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` the rest (at least one token)."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass
class _Bucket:
    history: int
    seq: int = 0
    log: list[KvEntry] = field(default_factory=list)
    watchers: list[tuple[str, asyncio.Queue[KvEntry | None]]] = field(default_factory=list)

    def latest(self) -> dict[str, KvEntry]:
        out: dict[str, KvEntry] = {}
        for e in self.log:
            out[e.key] = e
        return out


class MemoryBus:
    """An in-process :class:`Bus` with the same CAS and watch semantics, for unit tests.

    Several clients of one ``MemoryBus`` see one shared state, like several NATS connections.
    ``online = False`` simulates an outage: every call raises :class:`BusUnavailable`.
    """

    def __init__(self) -> None:
        self._kv: dict[str, _Bucket] = {}
        self._objects: dict[str, dict[str, bytes]] = {}
        self._streams: dict[str, tuple[list[str], list[StreamMessage]]] = {}
        self._seq = 0
        self._msg_ids: dict[str, int] = {}
        self.online = True

    def _check(self) -> None:
        if not self.online:
            raise BusUnavailable("memory bus offline")

    def _bucket(self, bucket: str) -> _Bucket:
        self._check()
        try:
            return self._kv[bucket]
        except KeyError:
            raise NotFound(f"no key-value bucket {bucket!r}") from None

    async def ensure_kv(self, bucket: str, *, history: int = 1) -> None:
        self._check()
        self._kv.setdefault(bucket, _Bucket(history))

    async def ensure_objects(self, bucket: str) -> None:
        self._check()
        self._objects.setdefault(bucket, {})

    async def ensure_stream(
        self, name: str, subjects: list[str], *, max_age_s: float = 0, max_msgs: int = -1
    ) -> None:
        self._check()
        self._streams.setdefault(name, (subjects, []))

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        e = self._bucket(bucket).latest().get(key)
        return None if e is None or e.deleted else e

    def _append(self, bucket: str, key: str, value: bytes, *, deleted: bool = False) -> int:
        b = self._bucket(bucket)
        self._seq += 1
        entry = KvEntry(
            key=key, value=value, revision=self._seq, created=time.time(), deleted=deleted
        )
        b.log.append(entry)
        # Keep at most `history` entries per key, like JetStream's max_msgs_per_subject.
        mine = [e for e in b.log if e.key == key]
        if len(mine) > b.history:
            drop = {id(e) for e in mine[: len(mine) - b.history]}
            b.log = [e for e in b.log if id(e) not in drop]
        for pattern, q in b.watchers:
            if subject_matches(pattern, key):
                q.put_nowait(entry)
        return self._seq

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        return self._append(bucket, key, value)

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        if await self.kv_get(bucket, key) is not None:
            raise Conflict(f"{bucket}/{key} already exists")
        return self._append(bucket, key, value)

    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        cur = self._bucket(bucket).latest().get(key)
        if cur is None or cur.revision != last:
            raise Conflict(f"{bucket}/{key} changed (expected revision {last})")
        return self._append(bucket, key, value)

    async def kv_delete(self, bucket: str, key: str) -> None:
        self._append(bucket, key, b"", deleted=True)

    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]:
        latest = self._bucket(bucket).latest()
        return sorted(k for k, e in latest.items() if not e.deleted and subject_matches(pattern, k))

    async def kv_history(self, bucket: str, key: str) -> list[KvEntry]:
        return [e for e in self._bucket(bucket).log if e.key == key]

    async def kv_watch(self, bucket: str, pattern: str = ">") -> AsyncIterator[KvEntry | None]:
        b = self._bucket(bucket)
        q: asyncio.Queue[KvEntry | None] = asyncio.Queue()
        for e in sorted(b.latest().values(), key=lambda e: e.revision):
            if subject_matches(pattern, e.key):
                q.put_nowait(e)
        q.put_nowait(None)
        watcher = (pattern, q)
        b.watchers.append(watcher)
        try:
            while True:
                item = await q.get()
                self._check()
                yield item
        finally:
            b.watchers.remove(watcher)

    async def obj_put(self, bucket: str, name: str, data: bytes) -> ObjectInfo:
        self._check()
        self._objects.setdefault(bucket, {})[name] = bytes(data)
        return ObjectInfo(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def obj_get(self, bucket: str, name: str, dest: Path) -> ObjectInfo:
        self._check()
        data = self._objects.get(bucket, {}).get(name)
        if data is None:
            raise NotFound(f"no object {name!r} in {bucket!r}")
        dest.write_bytes(data)
        return ObjectInfo(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def obj_info(self, bucket: str, name: str) -> ObjectInfo | None:
        self._check()
        data = self._objects.get(bucket, {}).get(name)
        if data is None:
            return None
        return ObjectInfo(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def publish(self, subject: str, data: bytes, *, msg_id: str = "") -> int:
        self._check()
        if msg_id and msg_id in self._msg_ids:
            return self._msg_ids[msg_id]  # stored once, like JetStream's Nats-Msg-Id
        for subjects, msgs in self._streams.values():
            if any(subject_matches(p, subject) for p in subjects):
                self._seq += 1
                msgs.append(
                    StreamMessage(subject=subject, data=data, seq=self._seq, time=time.time())
                )
                if msg_id:
                    self._msg_ids[msg_id] = self._seq
                return self._seq
        raise NotFound(f"no stream for subject {subject!r}")

    async def stream_read(
        self,
        stream: str,
        subject: str = ">",
        *,
        since: float = 0.0,
        since_seq: int = 0,
        limit: int = 10_000,
    ) -> list[StreamMessage]:
        self._check()
        _, msgs = self._streams.get(stream, ([], []))
        out = [
            m
            for m in msgs
            if m.time >= since and m.seq >= since_seq and subject_matches(subject, m.subject)
        ]
        return out[-limit:] if limit else out

    async def close(self) -> None:
        return None


async def snapshot(bus: Bus, bucket: str, pattern: str = ">") -> dict[str, KvEntry]:
    """Current value of every key matching ``pattern`` (one watcher, not one get per key)."""
    out: dict[str, KvEntry] = {}
    watcher = bus.kv_watch(bucket, pattern)
    try:
        async for e in watcher:
            if e is None:
                break
            if e.deleted:
                out.pop(e.key, None)
            else:
                out[e.key] = e
    finally:
        await watcher.aclose()  # type: ignore[attr-defined]
    return out


async def cancel_and_wait(*tasks: asyncio.Task[None]) -> None:
    """Cancel background tasks and wait until they are really done.

    Repeats the cancellation: a client library that swallows one ``CancelledError`` (nats-py
    does inside some requests) must not leave a loop running while its owner waits forever.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
