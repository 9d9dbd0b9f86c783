"""One control-plane replica: NATS connection, leader lease, reconciler, telemetry, gRPC API.

:class:`ControlPlaneApp` is an async context manager. Every replica serves the API (reads and
validated writes go straight to JetStream); only the lease holder runs the desired-state
reconciler and the rollout controller, and they stop the moment the lease is lost. Nothing is
kept in memory that a restart would miss: the telemetry index is rebuilt from the stream, the
reconciler and the controller re-plan.

On the first start against an empty operator-token bucket the replica creates the ``admin``
token (:meth:`OperatorTokens.bootstrap`), writes it to ``admin_token_file`` (mode 0600) and
keeps it in :attr:`ControlPlaneApp.first_token` for the caller to print once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kefu.certstore import TlsFiles
from kefu.control_plane.alerts import Webhook, WebhookDelivery
from kefu.control_plane.api import ControlPlaneApi, serve_api
from kefu.control_plane.failover import FailoverController, FailoverOptions
from kefu.control_plane.guard import SteadyPolicy
from kefu.control_plane.guard_controller import GuardController
from kefu.control_plane.leader import LeaderLease
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.rollouts import RolloutController
from kefu.control_plane.service import ControlPlane, ensure_layout
from kefu.control_plane.telemetry import TelemetryIndex
from kefu.control_plane.tokens import OperatorTokens, write_token_file
from kefu.keys import TrustStore
from kefu.natsbus import NatsBus, NatsOptions

__all__ = ["ControlPlaneApp", "ControlPlaneOptions", "default_replica_id"]

log = logging.getLogger("kefu.control_plane")


def default_replica_id() -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:40]
    return f"cp-{host.strip('-') or 'local'}"


@dataclass(kw_only=True)
class ControlPlaneOptions:
    nats_url: str
    trust: TrustStore
    nats_user: str | None = None
    nats_password: str | None = None
    replica: str = field(default_factory=default_replica_id)
    listen: str = "127.0.0.1:7500"
    lease_ttl_s: float = 6.0
    reconcile_period_s: float = 10.0
    #: How often the leader's rollout controller plans at the latest (it also runs on every
    #: rollout or node-status change).
    rollout_period_s: float = 1.0
    regions: list[str] = field(default_factory=list)
    #: Region health and routes (docs/failover.md): tick period, heartbeat timeout, hysteresis.
    failover: FailoverOptions = field(default_factory=FailoverOptions)
    #: Where the first-start admin token is written (0600); None = kept in memory only.
    admin_token_file: Path | None = None
    #: TLS of the gRPC API (re-read on renewal); None = plaintext (loopback development).
    tls: TlsFiles | None = None
    #: TLS to NATS: verify the server, present this pair (mapped to the NATS user).
    nats_tls: TlsFiles | None = None
    #: Where the leader delivers alerts (signed JSON POSTs).
    webhooks: list[Webhook] = field(default_factory=list)
    #: The steady-state guard (docs/control-plane.md); its pass period.
    guard: SteadyPolicy = field(default_factory=SteadyPolicy)
    guard_period_s: float = 5.0


class ControlPlaneApp:
    def __init__(self, options: ControlPlaneOptions):
        self.options = options
        self.bus: NatsBus | None = None
        self.cp: ControlPlane | None = None
        self.reconciler: DesiredReconciler | None = None
        self.rollouts: RolloutController | None = None
        self.failover: FailoverController | None = None
        self.alerts: WebhookDelivery | None = None
        self.guard: GuardController | None = None
        self.lease: LeaderLease | None = None
        self.telemetry: TelemetryIndex | None = None
        self.tokens: OperatorTokens | None = None
        #: The admin token this replica created on an empty store (None when it existed).
        self.first_token: str | None = None
        self.server: grpc.aio.Server | None = None
        self.api: ControlPlaneApi | None = None
        self.port = 0
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> ControlPlaneApp:
        o = self.options
        self.bus = await NatsBus.connect(
            NatsOptions(
                servers=[o.nats_url],
                user=o.nats_user,
                password=o.nats_password,
                name=f"kefu-{o.replica}",
                tls=o.nats_tls,
            )
        )
        await ensure_layout(self.bus, o.regions)
        self.cp = ControlPlane(self.bus, trust=o.trust, replica=o.replica)
        cp = self.cp
        self.tokens = OperatorTokens(self.bus, clock=lambda: cp.clock())
        self.first_token = await self.tokens.bootstrap(actor=o.replica)
        if self.first_token and o.admin_token_file is not None:
            try:
                write_token_file(o.admin_token_file, self.first_token)
                log.info("created the first admin operator token in %s", o.admin_token_file)
            except OSError as exc:  # the caller still prints first_token once
                log.error("cannot write the admin token to %s: %s", o.admin_token_file, exc)
        self.lease = LeaderLease(self.bus, o.replica, ttl_s=o.lease_ttl_s, on_change=self._leader)
        lease = self.lease
        self.reconciler = DesiredReconciler(
            self.bus, period_s=o.reconcile_period_s, confirm=lease.confirm
        )
        self.rollouts = RolloutController(
            self.cp, term=lambda: lease.term, confirm=lease.confirm, period_s=o.rollout_period_s
        )
        self.failover = FailoverController(self.cp, o.failover, confirm=lease.confirm)
        reconciler, rollouts, failover = self.reconciler, self.rollouts, self.failover
        self.alerts = WebhookDelivery(self.bus, o.webhooks)
        self.guard = GuardController(
            self.cp, policy=o.guard, confirm=lease.confirm, period_s=o.guard_period_s
        )

        def changed() -> None:
            reconciler.kick()
            rollouts.kick()
            failover.kick()

        self.cp.on_change = changed
        self.lease.start()
        self.telemetry = TelemetryIndex(self.bus)
        self.telemetry.start()
        api = ControlPlaneApi(
            self.cp, lease=self.lease, telemetry=self.telemetry, tokens=self.tokens
        )
        self.api = api
        self.server, self.port = await serve_api(api, o.listen, o.tls)
        log.info("control plane %s serving on port %d", o.replica, self.port)
        return self

    def _leader(self, leading: bool) -> None:
        assert self.reconciler is not None and self.rollouts is not None
        assert self.failover is not None
        if leading:
            self.reconciler.start()
            self.rollouts.start()
            self.failover.start()
            if self.alerts is not None:
                self.alerts.start()
            if self.guard is not None:
                self.guard.start()
        else:
            stops = [self.reconciler.stop(), self.rollouts.stop(), self.failover.stop()]
            if self.alerts is not None:
                stops.append(self.alerts.stop())
            if self.guard is not None:
                stops.append(self.guard.stop())
            for stop in stops:
                task = asyncio.create_task(stop)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(2.0)
            self.server = None
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.rollouts is not None:
            await self.rollouts.stop()
        if self.failover is not None:
            await self.failover.stop()
        if self.alerts is not None:
            await self.alerts.stop()
        if self.guard is not None:
            await self.guard.stop()
        if self.lease is not None:
            await self.lease.stop()  # hands the lease over at once
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.bus is not None:
            await self.bus.close()
            self.bus = None

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

    async def __aenter__(self) -> ControlPlaneApp:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())


def trust_for_control_plane(data_dir: Path, extra: list[str] | None = None) -> TrustStore:
    """Same trusted keys as a node on this machine (release key, data-dir keys, --trust)."""
    from kefu.models.store import trust_for

    return trust_for(data_dir, extra)
