"""Assemble and run a node: tenants, models, conversation service, gRPC server.

``Node`` is an async context manager: ``start()`` loads tenants and models and binds the gRPC
port; ``drain()`` stops accepting, lets in-flight turns finish within a grace period, then
closes the runtime and the SQLite stores. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kefu import tracing
from kefu.certstore import TlsFiles
from kefu.errors import PermanentError, TemporaryError
from kefu.models.store import ModelStore, trust_for
from kefu.node.audit.chain import AuditEntry, safe_id
from kefu.node.audit.journal import AuditJournal
from kefu.node.dialog.conversation import ConversationService
from kefu.node.dialog.split import SplitBoard
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG, Tenant, TenantRegistry
from kefu.node.nlu.inference import BatchingModelRuntime, InferenceOptions
from kefu.node.serving.admission import AdmissionController, LoopLag
from kefu.node.serving.grpc_api import KefuNodeService, generic_handler
from kefu.node.serving.metrics import NodeMetrics
from kefu.node.sessions.files import private_dir
from kefu.node.sessions.session_db import SQLiteStoreOptions
from kefu.node.sessions.sqlite_store import sqlite_store_opener
from kefu.node.sessions.tenant_keys import EncryptionOptions
from kefu.tls import bind
from kefu.v1 import SERVICE_NAME

__all__ = ["Node", "NodeOptions", "NodeStatus", "PortInUse"]

log = logging.getLogger("kefu.node")


class PortInUse(PermanentError):
    exit_code = 69


class NodeStatus(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(kw_only=True)
class NodeOptions:
    data_dir: Path = Path("kefu-data")
    listen: str = "127.0.0.1:7400"
    tenant_configs: list[Path] = field(default_factory=lambda: [DEMO_TENANT_CONFIG])
    # Sized by throughput x target latency (~300 turns/s x ~30 ms on 2 cores, see README):
    # more in flight only queues inside the node and inflates everyone's latency. Measured:
    # 8 meets the latency targets; 16 admits ~1.8x more at peak with p99 about twice as long.
    max_in_flight: int = 8
    max_queue: int = 256
    queue_timeout_s: float = 0.05
    #: Refuse new turns while the event loop runs timers this late (the process is out of CPU).
    max_loop_lag_s: float = 0.025
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    grace_s: float = 10.0
    #: How often the retention job purges sessions past their tenant's retention period.
    retention_interval_s: float = 3600.0
    #: SQLite tuning per tenant store (busy retries, queue bound, group size, disk quota).
    store: SQLiteStoreOptions | None = None
    #: Off in all but one worker process: the job is idempotent, N copies only waste I/O.
    run_retention: bool = True
    #: Prometheus /metrics address; None = no metrics endpoint.
    metrics_listen: str | None = "127.0.0.1:7401"
    #: grpcio turns SO_REUSEPORT on by default; a second node on the same port would then start
    #: silently and steal half the traffic. Only set this when worker processes share a port.
    reuse_port: bool = False
    #: False when a control-plane agent will bring the tenants (start with none).
    require_tenants: bool = True
    #: TLS of the gRPC listener (re-read on renewal); None = plaintext, for loopback
    #: development only (warned loudly at start).
    tls: TlsFiles | None = None
    #: Mutual TLS: clients (gateways, channels) must present a certificate of the CA.
    client_auth: bool = False
    #: Encryption at rest of conversation text and slots (per-tenant keys); None = off.
    encryption: EncryptionOptions | None = None
    #: OpenTelemetry spans to this OTLP/HTTP traces URL; None = tracing off (free).
    otlp_endpoint: str | None = None
    otel_service_name: str = "kefu-node"
    #: The hash-chained audit log of admin and agent actions (``<data-dir>/audit.db``).
    audit: bool = True


class Node:
    def __init__(self, options: NodeOptions):
        self.options = options
        self.status = NodeStatus.NEW
        self.port = 0
        self._tracing = False
        self.registry: TenantRegistry | None = None
        #: Rollout splits and version-pinned sessions (set by the agent, used by every turn).
        self.splits = SplitBoard()
        self.runtime: BatchingModelRuntime | None = None
        self.server: grpc.aio.Server | None = None
        self.service: ConversationService | None = None
        self.metrics: NodeMetrics | None = None
        #: The gRPC adapter (its failed-authentication guard is tunable in tests).
        self.api: KefuNodeService | None = None
        #: The node audit log (None when ``options.audit`` is off).
        self.audit: AuditJournal | None = None
        self.metrics_port = 0
        self._retention: asyncio.Task[None] | None = None
        self._lag: LoopLag | None = None
        self._lag_task: asyncio.Task[None] | None = None
        #: Turns still running when the drain deadline (``grace_s``) expired; they were
        #: cancelled. Set by :meth:`drain`; 0 = every in-flight turn finished.
        self.turns_cut = 0

    async def start(self) -> Node:
        if self.status is not NodeStatus.NEW:
            return self
        opts = self.options
        if opts.otlp_endpoint:
            tracing.configure(service_name=opts.otel_service_name, otlp_endpoint=opts.otlp_endpoint)
            self._tracing = True
        private_dir(opts.data_dir)  # conversations live here: 0700
        if opts.audit:
            self.audit = await AuditJournal(opts.data_dir).start()
        store = ModelStore(opts.data_dir / "models", trust_for(opts.data_dir))
        store.seed_shipped()
        self.registry = await TenantRegistry.open(
            opts.data_dir,
            opts.tenant_configs,
            open_store=sqlite_store_opener(opts.store, opts.encryption),
        )
        if not self.registry.tenants and opts.require_tenants:
            errors = "; ".join(e.error for e in self.registry.errors) or "no tenant configs"
            raise PermanentError(f"no tenant could be loaded: {errors}")
        self.runtime = BatchingModelRuntime(trust=store.trust, store=store, options=opts.inference)
        tenants = list(self.registry.tenants.values())
        defaults = {r for t in tenants for r in (t.config.models.intent, t.config.models.sentiment)}
        pins = {
            r
            for t in tenants
            for s in t.config.scenarios
            for r in (s.models.intent, s.models.sentiment)
            if r is not None
        } - defaults
        for ref in sorted(defaults, key=lambda r: r.ref):
            await self.runtime.load(ref.name, ref.ref)
        for ref in sorted(pins, key=lambda r: r.ref):
            # A scenario's pinned version (a canary) must not become the name's active one.
            await self.runtime.load(ref.name, ref.ref, activate=ref.version is None)
        self._lag = LoopLag()
        self._lag_task = asyncio.create_task(self._lag.run(), name="kefu-loop-lag")
        admission = AdmissionController(
            opts.max_in_flight,
            opts.max_queue,
            opts.queue_timeout_s,
            loop_lag=self._lag,
            max_loop_lag=opts.max_loop_lag_s,
        )
        self.service = ConversationService(
            registry=self.registry, runtime=self.runtime, admission=admission, splits=self.splits
        )
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if opts.reuse_port else 0)])
        self.metrics = NodeMetrics(
            runtime_stats=self.runtime.stats, admission_stats=admission.stats
        )
        self.metrics.subscribe(self.service.events)
        metrics = self.metrics
        self.registry.listeners.append(
            lambda tid, tenant: metrics.forget_tenant(tid) if tenant is None else None
        )
        if self.audit is not None:
            self.registry.listeners.append(self._audit_config)
        if opts.metrics_listen:
            self.metrics_port = self.metrics.serve(opts.metrics_listen)
        self.api = KefuNodeService(self.service, audit=self.audit)
        server.add_generic_rpc_handlers((generic_handler(self.api),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = bind(
                server, opts.listen, opts.tls, what="node gRPC API", mutual=opts.client_auth
            )
        except RuntimeError as exc:
            raise PortInUse(f"cannot listen on {opts.listen}: {exc}") from exc
        if not self.port:
            raise PortInUse(f"cannot listen on {opts.listen} (address in use?)")
        await server.start()
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        if opts.run_retention:
            self._retention = asyncio.create_task(self._retention_loop(), name="kefu-retention")
        self.status = NodeStatus.SERVING
        log.info(
            "node serving on port %d with tenants %s", self.port, sorted(self.registry.tenants)
        )
        return self

    async def purge_expired(self, now: datetime | None = None) -> dict[str, int]:
        """Delete sessions idle for longer than their tenant's retention; counts per tenant.

        Retention is per business line in the config, but the store purges per tenant, so the
        longest period configured for the tenant applies: nothing a business line must keep
        is ever deleted early.
        """
        assert self.registry is not None
        now = now or datetime.now(UTC)
        purged: dict[str, int] = {}
        for tenant in self.registry.tenants.values():
            days = tenant.config.session_policy.longest_retention_days()
            purged[tenant.id] = await tenant.store.purge_expired(now, timedelta(days=days))
            if purged[tenant.id] and self.audit is not None:
                await self.audit.record(
                    AuditEntry(
                        ts=now.timestamp(),
                        actor="node:retention",
                        action="data.purged",
                        tenant=tenant.id,
                        detail={"sessions": purged[tenant.id], "retention_days": days},
                    )
                )
        return purged

    def _audit_config(self, tenant_id: str, tenant: Tenant | None) -> None:
        """A tenant config applied or removed (at start, by the control plane, on reload)."""
        assert self.audit is not None
        source = tenant.source if tenant is not None else None
        from_cp = source is not None and str(source).startswith("control-plane:")
        self.audit.record_nowait(
            AuditEntry(
                ts=time.time(),
                actor="control-plane" if from_cp else "node",
                action="config.applied" if tenant is not None else "config.removed",
                tenant=tenant_id,
                target=safe_id(source.name if source is not None else ""),
                detail={"scenarios": len(tenant.config.scenarios)} if tenant else {},
            )
        )

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.retention_interval_s)
            try:
                counts = await self.purge_expired()
            except TemporaryError as exc:  # disk busy or full: try again next round
                log.warning("retention job failed, will retry: %s", exc)
                continue
            if any(counts.values()):
                log.info("retention job purged sessions", extra={"fields": {"purged": counts}})

    async def drain(self) -> None:
        if self.status in (NodeStatus.DRAINING, NodeStatus.STOPPED):
            return
        self.status = NodeStatus.DRAINING
        for task in (self._retention, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.server is not None:
            # Stop accepting at once; in-flight RPCs get grace_s, then grpc cancels them.
            stopping = asyncio.ensure_future(self.server.stop(self.options.grace_s))
            done, _ = await asyncio.wait({stopping}, timeout=self.options.grace_s)
            if not done and self.service is not None:
                self.turns_cut = self.service.admission.in_flight
            await stopping
        if self.runtime is not None:
            await self.runtime.close()
        if self.registry is not None:
            await self.registry.close()
        if self.metrics is not None:
            self.metrics.close()
        if self._tracing:  # flush the spans still buffered
            await asyncio.to_thread(tracing.shutdown)
        if self.audit is not None:
            await self.audit.close()
        self.status = NodeStatus.STOPPED

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

    async def __aenter__(self) -> Node:
        try:
            return await self.start()
        except BaseException:
            await self.drain()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.drain())
