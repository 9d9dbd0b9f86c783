"""Replicated sessions, the NATS adapter: the region's streams by reconcile, the outbox shipper,
and the import of a failed-over session's history.

It runs on the node's **replication connection** (node.yaml ``replication:``), which logs into
the region leaf server's ``ZONE`` account: JetStream there is the region's own domain, and the
account is linked (leaf node) only to the hub account of this residency zone, so the streams are
reachable from the zone's other regions and from nowhere else (docs/failover.md).

* **Streams**: :func:`~kefu.node.replication.records.plan_streams` over the tenants this node
  serves (residency from the desired state, retention from the tenant's config) gives the wanted
  streams; each pass creates or updates them (idempotent) and deletes replica streams of tenants
  no longer wanted here (so a tenant moved out of this region stops being sourced).
* **Shipper**: per shipping tenant, the oldest ``batch`` outbox rows are published to their
  session's subject with ``Nats-Msg-Id`` (JetStream drops a re-sent one) and deleted only
  after the stream acknowledged them. Failures back off; the rows stay on disk, so a restart
  resumes where the last ack left off.
* **Import**: a turn for a session this node does not have → every replica stream of the
  tenant is read for that session's subject (direct get, next-by-subject), the changes are
  opened with the zone key and applied in one SQLite transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource

from kefu.bus import cancel_and_wait
from kefu.errors import TemporaryError
from kefu.natsbus import NatsBus, NatsOptions
from kefu.node.replication.records import (
    OutboxWriter,
    ReplicaPlan,
    ReplicationError,
    StreamSpec,
    ZoneKey,
    open_change,
    plan_streams,
    session_subject,
    turns_stream,
)
from kefu.node.sessions.sqlite_store import SQLiteSessionStore
from kefu.wire import TenantResidency

__all__ = ["Replication", "ReplicationOptions"]

log = logging.getLogger("kefu.node.replication")

REPLICA_PREFIX = "KEFU_REPLICA_"


@dataclass(kw_only=True)
class ReplicationOptions:
    region: str
    zone_key: ZoneKey
    nats: NatsOptions
    #: Outbox rows published per batch (and awaited together).
    batch: int = 64
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    #: How often the streams are reconciled (and the lag re-read) without a change.
    reconcile_s: float = 5.0
    #: Timeout of each JetStream request (publish ack, stream API, direct get).
    timeout_s: float = 5.0
    #: At most this many changes are imported for one session.
    max_import: int = 10_000
    #: Seconds in a retention day (tests shorten it to see max_age purge a replica).
    day_s: float = 86400.0


@dataclass
class _State:
    residency: dict[str, TenantResidency | None] = field(default_factory=dict)
    retention: dict[str, int] = field(default_factory=dict)
    stores: dict[str, SQLiteSessionStore] = field(default_factory=dict)
    plan: ReplicaPlan = field(default_factory=ReplicaPlan)


class Replication:
    """One per node. :meth:`tenant_applied` / :meth:`tenant_removed` are called by the agent's
    target as desired state is applied; the rest runs in background tasks."""

    def __init__(
        self,
        options: ReplicationOptions,
        *,
        connect: Callable[[], Awaitable[NatsBus]] | None = None,
    ):
        self.options = options
        self._connect = connect or (lambda: NatsBus.connect(options.nats))
        self.bus: NatsBus | None = None
        self.cipher = options.zone_key.cipher()
        self.state = _State()
        self._wake = asyncio.Event()
        self._replan = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        #: Seconds the oldest unshipped change has waited (0 = outbox empty); rows waiting.
        self.lag_s = 0.0
        self.backlog = 0
        self.shipped = 0
        self.imported = 0
        #: Replica stream → (messages, source lag in messages, last error) from the last pass.
        self.replicas: dict[str, tuple[int, int, str]] = {}
        self.last_error = ""

    # ------------------------------------------------------------------ desired state

    def writer(self) -> OutboxWriter:
        return OutboxWriter(region=self.options.region, cipher=self.cipher, notify=self._wake.set)

    def tenant_applied(
        self,
        tenant: str,
        store: Any,
        residency: TenantResidency | None,
        retention_days: int,
    ) -> None:
        """The tenant is served here with this residency: turn its outbox on or off at once
        (synchronously, so no turn commits between the apply and this) and re-plan."""
        s = self.state
        s.residency[tenant] = residency
        s.retention[tenant] = retention_days
        if isinstance(store, SQLiteSessionStore):
            s.stores[tenant] = store
        self._plan()

    def tenant_removed(self, tenant: str) -> None:
        s = self.state
        s.residency.pop(tenant, None)
        s.retention.pop(tenant, None)
        s.stores.pop(tenant, None)
        self._plan()

    def _plan(self) -> None:
        s = self.state
        s.plan = plan_streams(
            self.options.region, s.residency, s.retention, day_s=self.options.day_s
        )
        for tenant, store in s.stores.items():
            on = tenant in s.plan.ship
            if on and store.outbox is None:
                store.outbox = self.writer()
            elif not on:
                store.outbox = None
        self._replan.set()
        self._wake.set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Replication:
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="kefu-replication-connect"),
            asyncio.create_task(self._streams_loop(), name="kefu-replication-streams"),
            asyncio.create_task(self._ship_loop(), name="kefu-replication-ship"),
        ]
        return self

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        if self.bus is not None:
            bus, self.bus = self.bus, None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.options.timeout_s):
                    await bus.close()

    async def __aenter__(self) -> Replication:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _backoff(self, attempt: int) -> float:
        o = self.options
        return min(o.retry_max_s, o.retry_initial_s * (2 ** min(attempt, 16)))

    async def _connect_loop(self) -> None:
        attempt = 0
        while self.bus is None:
            try:
                self.bus = await self._connect()
                self._connected.set()
                log.info("replication: connected to the zone's JetStream")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"connect: {exc}"
                log.warning("replication: cannot connect (%s); retrying", exc)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1

    # ------------------------------------------------------------------ streams

    def _config(self, spec: StreamSpec) -> StreamConfig:
        if spec.origin:
            return StreamConfig(
                name=spec.name,
                storage=StorageType.FILE,
                max_age=spec.max_age_s,
                allow_direct=True,
                duplicate_window=min(120.0, spec.max_age_s),
                sources=[
                    StreamSource(
                        name=turns_stream(spec.origin),
                        filter_subject=spec.filter_subject,
                        external=ExternalStream(api=f"$JS.{spec.origin}.API"),
                    )
                ],
            )
        return StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=StorageType.FILE,
            max_age=spec.max_age_s,
            allow_direct=True,
            duplicate_window=min(120.0, spec.max_age_s),
        )

    async def reconcile_streams(self) -> None:
        """One pass: every wanted stream exists with the wanted config; replica streams not
        wanted any more are deleted (with what they held)."""
        await self._connected.wait()
        assert self.bus is not None
        js = self.bus.js
        wanted = self.state.plan.wanted()
        existing: set[str] = set()
        async with asyncio.timeout(self.options.timeout_s * 4):
            names = await js.streams_info()
        existing = {i.config.name for i in names if i.config.name}
        for name, spec in wanted.items():
            cfg = self._config(spec)
            if name in existing:
                info = next(i for i in names if i.config.name == name)
                if info.config.max_age != cfg.max_age:
                    await js.update_stream(cfg)
            else:
                await js.add_stream(cfg)
                log.info("replication: stream %s created", name)
        for name in sorted(existing - set(wanted)):
            if name.startswith(REPLICA_PREFIX):
                await js.delete_stream(name)
                log.info("replication: replica %s deleted (tenant no longer here)", name)
        replicas: dict[str, tuple[int, int, str]] = {}
        for i in names:
            n = i.config.name or ""
            if n in wanted and n.startswith(REPLICA_PREFIX):
                src = (i.sources or [None])[0]
                err = str(src.error) if src is not None and src.error else ""
                lag = src.lag or 0 if src is not None else 0
                replicas[n] = (i.state.messages, lag, err)
        self.replicas = replicas

    async def _streams_loop(self) -> None:
        async def step() -> bool:
            await self.reconcile_streams()
            return False

        await self._repeat("streams", step, self._replan)

    async def _repeat(
        self, what: str, step: Callable[[], Awaitable[bool]], kick: asyncio.Event
    ) -> None:
        """Run ``step`` again when ``kick`` is set or every ``reconcile_s`` (at once when it
        returns True: more work waiting); failures back off exponentially."""
        attempt = 0
        while True:
            try:
                kick.clear()
                if await step():
                    continue
                attempt = 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.reconcile_s):
                        await kick.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{what}: {exc}"
                log.warning("replication: %s failed (%s); retrying", what, exc)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1

    # ------------------------------------------------------------------ shipper

    async def ship_once(self) -> int:
        """Publish one batch per shipping tenant; returns how many rows were acknowledged."""
        await self._connected.wait()
        assert self.bus is not None
        js = self.bus.js
        done = 0
        lag, backlog = 0.0, 0
        s = self.state
        for tenant in sorted(s.plan.ship):
            store = s.stores.get(tenant)
            if store is None:
                continue
            batch = await store.outbox_batch(self.options.batch)
            if batch:
                acks = await asyncio.gather(
                    *(
                        js.publish(
                            r["subject"],
                            r["payload"].encode(),
                            timeout=self.options.timeout_s,
                            headers={"Nats-Msg-Id": r["msg_id"]},
                        )
                        for r in batch
                    ),
                    return_exceptions=True,
                )
                ok = [
                    r["id"]
                    for r, a in zip(batch, acks, strict=True)
                    if not isinstance(a, BaseException)
                ]
                await store.outbox_delete(ok)
                done += len(ok)
                self.shipped += len(ok)
                failed = [a for a in acks if isinstance(a, BaseException)]
                if failed:
                    for a in failed:
                        if isinstance(a, asyncio.CancelledError):
                            raise a
                    raise TemporaryError(f"publish to the turns stream failed: {failed[0]}")
            waiting, oldest = await store.outbox_state()
            backlog += waiting
            if oldest is not None:
                lag = max(lag, time.time() - oldest)
        self.lag_s, self.backlog = lag, backlog
        return done

    async def _ship_loop(self) -> None:
        async def step() -> bool:
            return await self.ship_once() >= self.options.batch  # more waiting: no pause

        await self._repeat("shipping", step, self._wake)

    # ------------------------------------------------------------------ import

    async def read_session(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        """The session's changes in this region's replica streams, oldest first (opened)."""
        if self.bus is None:
            return []
        js = self.bus.js
        found: list[tuple[str, int, dict[str, Any]]] = []
        plan = self.state.plan
        region = self.options.region
        # Another node of this region shipped it to the region's own stream; another region's
        # node to its stream, sourced into a replica here.
        lookups = [(turns_stream(region), region)] + [
            (name, plan.wanted()[name].origin) for name in plan.replicas_by_tenant.get(tenant, ())
        ]
        for name, origin in lookups:
            subject = session_subject(origin, tenant, session_id)
            seq = 1
            while len(found) < self.options.max_import:
                try:
                    msg = await js.get_msg(name, seq=seq, subject=subject, next=True, direct=True)
                except nats.js.errors.NotFoundError:
                    break
                found.append(
                    (name, msg.seq or seq, open_change(self.cipher, tenant, msg.data or b""))
                )
                seq = (msg.seq or seq) + 1
        # One session lives in one origin at a time; within it, stream order is commit order.
        return [c for _, _, c in sorted(found, key=lambda f: (f[0], f[1]))]

    async def import_session(self, tenant: str, session_id: str) -> bool:
        """Import a session this node does not have from the replicas; True when found."""
        store = self.state.stores.get(tenant)
        if store is None or tenant not in self.state.plan.replicas_by_tenant:
            return False
        try:
            async with asyncio.timeout(self.options.timeout_s):
                changes = await self.read_session(tenant, session_id)
        except ReplicationError as exc:  # a wrong zone key: the operator's to fix, not a crash
            self.last_error = f"import: {exc}"
            log.error("replication: %s", exc)
            return False
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("replication: import of a %s session failed: %s", tenant, exc)
            return False
        if not changes:
            return False
        await store.import_changes(changes)
        self.imported += 1
        log.info(
            "replication: imported a session of %s (%d changes)",
            tenant,
            len(changes),
            extra={"fields": {"tenant": tenant, "session_id": session_id}},
        )
        return True

    def report(self) -> dict[str, Any]:
        return {
            "replication_lag_s": round(self.lag_s, 3),
            "replication_backlog": self.backlog,
            "replication_streams": {
                n: {"messages": m, "lag": lag, "error": e}
                for n, (m, lag, e) in sorted(self.replicas.items())
            },
        }
