"""The :class:`~kefu.bus.Bus` over NATS JetStream (nats-py ≥ 2.14).

Thin on purpose: every nats-py exception is translated at this edge (``Conflict`` for a lost
compare-and-set, ``NotFound``, ``BusUnavailable`` for anything a retry may fix, including a
permission violation, which the server reports asynchronously). Known pitfalls handled here:
``kv.update`` is always given ``last``; objects are read by a consumer bound to their
stream, streamed into a file (nats-py's ``ObjectStore.get`` looks the stream up with
``STREAM.NAMES``, which a node may not call, and concatenates chunks quadratically); watchers end
with ``BusUnavailable`` after a reconnect so their owners re-create them (with backoff).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from kefu.bus import BusUnavailable, Conflict, KvEntry, NotFound, ObjectInfo, StreamMessage
from kefu.certstore import TlsFiles, check_pair
from kefu.tls import client_ssl_context, refresh_context

__all__ = ["NatsBus", "NatsOptions"]

_EMPTY_RECHECKS = 3  # re-watches of an empty start (see _watch)
#: Seconds the server keeps a watcher's consumer once nobody listens (see _watch).
_INACTIVE_S = 5.0
log = logging.getLogger("kefu.natsbus")

_T = TypeVar("_T")
_OBJ_DIGEST_PREFIX = "SHA-256="


@dataclass(kw_only=True)
class NatsOptions:
    servers: list[str]
    user: str | None = None
    password: str | None = None
    name: str = "kefu"
    #: Per-client inbox prefix so subject permissions can keep replies private.
    inbox_prefix: str = "_INBOX"
    #: Timeout of every request (KV get/put, stream info …).
    timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 1.0
    #: Verify the server against this CA and present this pair (NATS maps it to a user);
    #: None = plaintext (loopback development).
    tls: TlsFiles | None = None
    #: The JetStream domain holding the control plane's buckets, when this client sits on a
    #: leaf nats-server with a domain of its own (a region of the multi-region topology,
    #: :mod:`kefu.natstopology`): requests go to ``$JS.<domain>.API``. None = the server's own.
    domain: str | None = None
    #: Give up after the first failed connect attempt with its error (a wrong CA, TLS
    #: required, an unknown certificate) instead of retrying in the background.
    fail_fast: bool = False


def tls_hint(exc: BaseException, tls: TlsFiles | None) -> str:
    """The connect error, with what to do about a TLS mismatch (the bare messages are
    cryptic: ``CERTIFICATE_VERIFY_FAILED``, ``UNKNOWN_CA``, ``Authorization Violation``)."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if tls is None and ("certificate" in low or "ssl" in low or "tls" in low):
        return f"{text} (the server requires TLS: give its CA and a client certificate)"
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        ca = tls.ca_file if tls else "the CA"
        return f"{text} (the server's certificate is not signed by {ca}, or it expired)"
    if "unknown_ca" in low or "unknown ca" in low:
        return f"{text} (the server does not trust this client's certificate: another CA)"
    if "certificate_expired" in low or "certificate expired" in low:
        return f"{text} (this client's certificate has expired: renew it)"
    if "authorization violation" in low and tls is not None:
        return f"{text} (no NATS user matches this certificate's subject)"
    return text


def _telling(errors: list[BaseException]) -> BaseException:
    """The most telling of the errors of a failed connect: a TLS one when there is one."""
    for exc in errors:
        if isinstance(exc, ssl.SSLError) or "SSL" in str(exc):
            return exc
    return errors[0]


class NatsBus:
    """One NATS connection with JetStream; create with :meth:`connect`."""

    def __init__(self, nc: Any, options: NatsOptions):
        self.nc = nc
        self.js = nc.jetstream(timeout=options.timeout_s, domain=options.domain)
        self.options = options
        self._kv: dict[str, Any] = {}
        self._kv_write: dict[str, Any] = {}
        self._obj: dict[str, Any] = {}
        #: Bumped on every reconnect; watchers created under an older generation end.
        self.generation = 0
        self.last_error = ""
        self.closing = False

    @classmethod
    async def connect(cls, options: NatsOptions) -> NatsBus:
        holder: dict[str, NatsBus] = {}

        async def on_reconnect() -> None:
            if (bus := holder.get("bus")) is not None:
                bus.generation += 1
                log.info("nats: reconnected")

        ssl_ctx = None
        if options.tls is not None:
            check_pair(options.tls)  # missing, expired, mismatched: a clear ConfigError
            ssl_ctx = client_ssl_context(options.tls)

        async def on_disconnect() -> None:
            bus = holder.get("bus")
            if bus is None or not bus.closing:
                log.warning("nats: disconnected; reconnecting in the background")
            if ssl_ctx is not None and options.tls is not None:
                # A renewed client certificate is used from the next handshake on.
                refresh_context(ssl_ctx, options.tls)

        first_error: list[BaseException] = []
        failed = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            if "bus" not in holder:
                first_error.append(exc)
                if options.fail_fast and (len(first_error) >= 2 or "SSL" in str(exc)):
                    failed.set()
            if (bus := holder.get("bus")) is not None:
                bus.last_error = str(exc)
            log.warning("nats: %s", tls_hint(exc, options.tls))

        connecting = asyncio.ensure_future(
            nats.connect(
                servers=options.servers,
                user=options.user,
                password=options.password,
                name=options.name,
                inbox_prefix=options.inbox_prefix,
                connect_timeout=options.connect_timeout_s,
                reconnect_time_wait=options.reconnect_wait_s,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=on_error,
                reconnected_cb=on_reconnect,
                disconnected_cb=on_disconnect,
                tls=ssl_ctx,
            )
        )
        gave_up = asyncio.ensure_future(failed.wait())
        where = ", ".join(options.servers)
        try:
            await asyncio.wait({connecting, gave_up}, return_when=asyncio.FIRST_COMPLETED)
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting})  # its CancelledError stays in the task
                exc = _telling(first_error)
                raise BusUnavailable(
                    f"cannot connect to NATS at {where}: {tls_hint(exc, options.tls)} / "
                    f"无法连接 NATS"
                ) from exc
            nc = connecting.result()
        except asyncio.CancelledError:
            connecting.cancel()
            raise
        except BusUnavailable:
            raise
        except Exception as exc:
            raise BusUnavailable(
                f"cannot connect to NATS at {where}: {tls_hint(exc, options.tls)} / 无法连接 NATS"
            ) from exc
        finally:
            gave_up.cancel()
        bus = cls(nc, options)
        holder["bus"] = bus
        return bus

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def _call(self, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{what}: changed concurrently / 并发修改冲突") from exc
        except (
            nats.js.errors.BucketNotFoundError,
            nats.js.errors.ObjectNotFoundError,
            nats.js.errors.NotFoundError,
        ) as exc:
            raise NotFound(f"{what}: not found / 不存在") from exc
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):
                raise Conflict(f"{what}: changed concurrently / 并发修改冲突") from exc
            if getattr(exc, "code", None) == 404:
                raise NotFound(f"{what}: not found / 不存在") from exc
            raise BusUnavailable(f"{what}: {exc}") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            detail = self.last_error if "ermission" in self.last_error else str(exc)
            raise BusUnavailable(f"{what}: {detail or type(exc).__name__}") from exc

    # -- setup

    async def ensure_kv(self, bucket: str, *, history: int = 1) -> None:
        async def go() -> None:
            self._kv[bucket] = await self.js.create_key_value(
                bucket=bucket, history=history, direct=True
            )

        await self._call(f"create bucket {bucket}", go)

    async def ensure_objects(self, bucket: str) -> None:
        async def go() -> None:
            self._obj[bucket] = await self.js.create_object_store(bucket)

        await self._call(f"create object store {bucket}", go)

    async def ensure_stream(
        self, name: str, subjects: list[str], *, max_age_s: float = 0, max_msgs: int = -1
    ) -> None:
        cfg = api.StreamConfig(
            name=name,
            subjects=subjects,
            max_age=max_age_s or None,
            max_msgs=max_msgs,
            storage=api.StorageType.FILE,
        )

        async def go() -> None:
            try:
                await self.js.add_stream(cfg)
            except nats.js.errors.BadRequestError:
                await self.js.update_stream(cfg)

        await self._call(f"create stream {name}", go)

    async def _bucket(self, bucket: str) -> Any:
        kv = self._kv.get(bucket)
        if kv is None:

            async def go() -> Any:
                return await self.js.key_value(bucket)

            kv = self._kv[bucket] = await self._call(f"bucket {bucket}", go)
        return kv

    async def _writer(self, bucket: str) -> Any:
        """The bucket for writes. Across a leaf link to another domain a KV write is published
        to ``$JS.<domain>.API.$KV.<bucket>.<key>`` (the server maps it back to ``$KV...``):
        a plain ``$KV`` subject does not cross a domain boundary."""
        if not self.options.domain:
            return await self._bucket(bucket)
        kv = self._kv_write.get(bucket)
        if kv is None:
            from nats.js.kv import KeyValue

            read = await self._bucket(bucket)
            kv = self._kv_write[bucket] = KeyValue(
                name=bucket,
                stream=f"KV_{bucket}",
                pre=f"$JS.{self.options.domain}.API.$KV.{bucket}.",
                js=self.js,
                direct=read._direct,
            )
        return kv

    async def _store(self, bucket: str) -> Any:
        obs = self._obj.get(bucket)
        if obs is None:

            async def go() -> Any:
                return await self.js.object_store(bucket)

            obs = self._obj[bucket] = await self._call(f"object store {bucket}", go)
        return obs

    # -- key-value

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        kv = await self._bucket(bucket)

        async def go() -> KvEntry | None:
            try:
                e = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            return KvEntry(key=key, value=e.value or b"", revision=e.revision)

        return await self._call(f"get {bucket}/{key}", go)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        kv = await self._writer(bucket)
        return await self._call(f"put {bucket}/{key}", lambda: kv.put(key, value))

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        kv = await self._writer(bucket)
        return await self._call(f"create {bucket}/{key}", lambda: kv.create(key, value))

    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        kv = await self._writer(bucket)
        # `last` is never None here: nats-py treats a missing last as "must not exist".
        return await self._call(f"update {bucket}/{key}", lambda: kv.update(key, value, last=last))

    async def kv_delete(self, bucket: str, key: str) -> None:
        kv = await self._writer(bucket)
        await self._call(f"delete {bucket}/{key}", lambda: kv.delete(key))

    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]:
        out: list[str] = []
        async for e in self._watch(bucket, pattern, meta_only=True, once=True):
            if e is not None and not e.deleted:
                out.append(e.key)
        return sorted(out)

    async def kv_history(self, bucket: str, key: str) -> list[KvEntry]:
        kv = await self._bucket(bucket)

        async def go() -> list[KvEntry]:
            try:
                entries = await kv.history(key)
            except nats.js.errors.NoKeysError:
                return []
            return [_entry(e) for e in entries]

        return await self._call(f"history {bucket}/{key}", go)

    def kv_watch(self, bucket: str, pattern: str = ">") -> AsyncIterator[KvEntry | None]:
        return self._watch(bucket, pattern)

    async def _watch(
        self, bucket: str, pattern: str, *, meta_only: bool = False, once: bool = False
    ) -> AsyncIterator[KvEntry | None]:
        kv = await self._bucket(bucket)
        generation = self.generation
        # nats-py keeps an ordered consumer for 5 min after its watcher stopped; a stream
        # allows 1,000 consumers, so a leader snapshotting a bucket a few times a second ran
        # into "maximum consumers limit reached". A live watcher keeps its consumer (it
        # listens), and one cut off by a reconnect is re-created anyway: 5 s is enough.
        inactive_threshold = _INACTIVE_S
        for attempt in range(_EMPTY_RECHECKS + 1):
            watcher = await self._call(
                f"watch {bucket}/{pattern}",
                lambda: kv.watch(
                    pattern, meta_only=meta_only, inactive_threshold=inactive_threshold
                ),
            )
            initial = 0  # entries delivered before the "initial values done" marker
            done = False
            try:
                while True:
                    try:
                        e = await watcher.updates(timeout=1.0)
                    except nats.errors.TimeoutError:
                        if self.generation != generation or not self.connected:
                            raise BusUnavailable(
                                f"watch {bucket}/{pattern}: connection lost; re-create the watcher"
                            ) from None
                        continue
                    if e is None:
                        # Right after a server restart an ordered consumer can report nothing
                        # pending although the stream holds the keys (seen ~1 in 30 restarts):
                        # an empty start is checked against the stream and the watch redone.
                        if (
                            not done
                            and initial == 0
                            and attempt < _EMPTY_RECHECKS
                            and await self._holds_keys(bucket, pattern)
                        ):
                            await asyncio.sleep(0.05 * (attempt + 1))
                            break
                        done = True
                        yield None
                        if once:
                            return
                        continue
                    if not hasattr(e, "key"):  # the watcher's stop sentinel
                        return
                    if not done:
                        initial += 1
                    yield _entry(e)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    async def _holds_keys(self, bucket: str, pattern: str) -> bool:
        """Whether the bucket's stream has messages for ``pattern`` (False when unknown: a
        node's credentials may not allow stream info)."""
        try:
            info = await asyncio.wait_for(
                self.js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{pattern}"),
                timeout=2.0,
            )
        except Exception:  # only a hint; the watch result stands
            return False
        return bool(info.state.messages)

    # -- objects

    async def obj_put(self, bucket: str, name: str, data: bytes) -> ObjectInfo:
        obs = await self._store(bucket)
        await self._call(f"put object {bucket}/{name}", lambda: obs.put(name, data))
        return ObjectInfo(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def obj_get(self, bucket: str, name: str, dest: Path) -> ObjectInfo:
        """Stream an object into ``dest`` and check its SHA-256.

        Not ``ObjectStore.get``: nats-py (2.16) subscribes to the chunks without naming the
        stream, so it first asks ``$JS.API.STREAM.NAMES`` which stream holds the subject — a
        list-everything call a node's least-privilege user may not make. Here the consumer is
        bound to ``OBJ_<bucket>`` directly; the node needs only that stream's read subjects."""
        obs = await self._store(bucket)

        async def go() -> ObjectInfo:
            info = await obs.get_info(name)
            if not info.nuid or info.is_link():
                raise BusUnavailable(f"object {bucket}/{name} is a link or has no chunks")
            want = _obj_info(info)
            h = hashlib.sha256()
            with dest.open("wb") as fh:
                if info.size:
                    await self._read_chunks(bucket, info.nuid, fh, h)
            if h.hexdigest() != want.sha256:
                raise BusUnavailable(f"object {bucket}/{name}: SHA-256 mismatch while reading")
            return want

        return await self._call(f"get object {bucket}/{name}", go)

    async def _read_chunks(self, bucket: str, nuid: str, fh: Any, h: Any) -> None:
        sub = await self.js.subscribe(
            f"$O.{bucket}.C.{nuid}", stream=f"OBJ_{bucket}", ordered_consumer=True
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=self.options.timeout_s)
                await asyncio.to_thread(fh.write, msg.data)
                h.update(msg.data)
                if msg.metadata.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def obj_info(self, bucket: str, name: str) -> ObjectInfo | None:
        obs = await self._store(bucket)

        async def go() -> ObjectInfo | None:
            try:
                return _obj_info(await obs.get_info(name))
            except nats.js.errors.ObjectNotFoundError:
                return None

        return await self._call(f"object info {bucket}/{name}", go)

    # -- streams

    async def publish(self, subject: str, data: bytes, *, msg_id: str = "") -> int:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None

        async def go() -> int:
            ack = await self.js.publish(subject, data, headers=headers)
            return int(ack.seq)

        return await self._call(f"publish {subject}", go)

    async def stream_read(
        self,
        stream: str,
        subject: str = ">",
        *,
        since: float = 0.0,
        since_seq: int = 0,
        limit: int = 10_000,
    ) -> list[StreamMessage]:
        out: deque[StreamMessage] = deque(maxlen=limit or None)

        async def go() -> None:
            if since_seq:
                cfg = api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since_seq
                )
            elif since:
                cfg = api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_TIME,
                    opt_start_time=datetime.fromtimestamp(since, UTC),
                )
            else:
                cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
            sub = await self.js.subscribe(subject, stream=stream, ordered_consumer=True, config=cfg)
            try:
                info = await sub.consumer_info()
                if info.num_pending == 0 and sub.delivered == 0:
                    return
                while True:
                    msg = await sub.next_msg(timeout=self.options.timeout_s)
                    md = msg.metadata
                    out.append(
                        StreamMessage(
                            subject=msg.subject,
                            data=msg.data,
                            seq=md.sequence.stream,
                            time=md.timestamp.timestamp(),
                        )
                    )
                    if md.num_pending == 0:
                        return
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

        await self._call(f"read stream {stream}", go)
        return list(out)

    async def close(self) -> None:
        # Not wait_for: nats-py's close can ignore a cancellation, and wait_for would then wait
        # for it forever. Give it 5 s, then abandon it.
        self.closing = True
        task = asyncio.ensure_future(self.nc.close())
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:
            task.cancel()
            log.warning("nats: close did not finish in 5 s; abandoned")
        elif not task.cancelled() and task.exception() is not None:
            log.debug("nats: close: %s", task.exception())


def _entry(e: Any) -> KvEntry:
    created = e.created.timestamp() if hasattr(e.created, "timestamp") else time.time()
    return KvEntry(
        key=e.key,
        value=e.value or b"",
        revision=int(e.revision or 0),
        created=created,
        deleted=e.operation in ("DEL", "PURGE"),
    )


def _obj_info(info: Any) -> ObjectInfo:
    d = (info.digest or "").removeprefix(_OBJ_DIGEST_PREFIX).removeprefix("sha-256=")
    try:
        hexd = base64.urlsafe_b64decode(d).hex()
    except ValueError:
        hexd = ""
    return ObjectInfo(name=info.name, size=int(info.size or 0), sha256=hexd)
