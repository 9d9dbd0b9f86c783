"""The console's seam to the control plane: a small protocol, its gRPC adapter, one snapshot.

Widgets never see gRPC: the app asks a :class:`ControlPlaneClient` for a :class:`Snapshot`
(the control-plane API's own reply messages, which are plain data) inside a worker, and hands
it down. Tests feed the same widgets from an in-memory client double.

Errors are translated at this edge: :class:`ConsoleUnavailable` (the control plane cannot be
reached or timed out: retry later) and :class:`ConsoleAuthError` (no, unknown or revoked token,
or a viewer token asking for a write: retrying will not help until the token changes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kefu.certstore import TlsFiles
from kefu.control_plane.client import DEFAULT_CP, TOKEN_ENV, resolve_operator_token
from kefu.errors import PermanentError, TemporaryError
from kefu.tls import secure_channel
from kefu.v1 import control_plane_pb2 as pb

__all__ = [
    "DEFAULT_CP",
    "DEFAULT_TIMEOUT_S",
    "REGION_COMMANDS",
    "TOKEN_ENV",
    "ConsoleAuthError",
    "ConsoleUnavailable",
    "ControlPlaneClient",
    "GrpcControlPlaneClient",
    "Snapshot",
    "fetch_snapshot",
    "resolve_operator_token",
]

DEFAULT_TIMEOUT_S = 5.0
TELEMETRY_SINCE_S = 3600.0
AUDIT_LIMIT = 100
#: Alerts shown, newest first.
ALERTS_LIMIT = 100
#: The region actions an admin may take from the Regions tab, and their RPCs.
REGION_COMMANDS = {"drain": "DrainRegion", "failback": "FailbackRegion"}


class ConsoleUnavailable(TemporaryError):
    """The control plane cannot be reached (or answered too slowly); retried next refresh."""


class ConsoleAuthError(PermanentError):
    """The operator token was refused (unauthenticated or not allowed)."""


class ControlPlaneClient(Protocol):
    """What the console needs from the control plane; every call is bounded by a timeout."""

    @property
    def target(self) -> str: ...

    async def status(self) -> pb.ControlPlaneStatus: ...

    async def nodes(self) -> pb.ListNodesReply: ...

    async def tenants(self) -> pb.ListTenantsReply: ...

    async def assignments(self) -> pb.ListAssignmentsReply: ...

    async def models(self) -> pb.ListModelsReply: ...

    async def telemetry(self) -> pb.QueryTelemetryReply: ...

    async def audit(self) -> pb.QueryAuditReply: ...

    async def set_tenant_enabled(self, tenant: str, enabled: bool) -> pb.Tenant: ...

    async def rollouts(self) -> pb.ListRolloutsReply: ...

    async def command_rollout(self, rollout_id: str, command: str) -> pb.Rollout: ...

    async def alerts(self) -> pb.ListAlertsReply: ...

    async def failover(self) -> pb.FailoverStatus: ...

    async def analysis(self, rollout_id: str) -> pb.RolloutAnalysis: ...

    async def command_region(self, region: str, command: str) -> pb.RegionHealth: ...

    async def close(self) -> None: ...


@dataclass(kw_only=True)
class Snapshot:
    """Everything one refresh fetched, handed down to every view as is."""

    status: pb.ControlPlaneStatus = field(default_factory=pb.ControlPlaneStatus)
    nodes: list[pb.Node] = field(default_factory=list)
    tenants: list[pb.Tenant] = field(default_factory=list)
    assignments: list[pb.Assignment] = field(default_factory=list)
    models: list[pb.ModelVersion] = field(default_factory=list)
    telemetry: pb.QueryTelemetryReply = field(default_factory=pb.QueryTelemetryReply)
    audit: list[pb.AuditEvent] = field(default_factory=list)
    rollouts: list[pb.Rollout] = field(default_factory=list)
    alerts: list[pb.AlertMessage] = field(default_factory=list)
    failover: pb.FailoverStatus = field(default_factory=pb.FailoverStatus)
    fetched_at: float = 0.0


async def fetch_snapshot(client: ControlPlaneClient, *, now: float) -> Snapshot:
    """All views' data in one round of concurrent calls; the first failure is raised."""
    # gather() is typed for up to six awaitables; the replies are checked by their use below.
    replies: list[Any] = await asyncio.gather(
        client.status(),
        client.nodes(),
        client.tenants(),
        client.assignments(),
        client.models(),
        client.telemetry(),
        client.audit(),
        client.rollouts(),
        client.alerts(),
        client.failover(),
    )
    status, nodes, tenants, assignments, models, telemetry, audit, rollouts, alerts, failover = (
        replies
    )
    return Snapshot(
        status=status,
        nodes=list(nodes.nodes),
        tenants=list(tenants.tenants),
        assignments=list(assignments.assignments),
        models=list(models.models),
        telemetry=telemetry,
        audit=list(audit.events),
        rollouts=list(rollouts.rollouts),
        alerts=list(alerts.alerts),
        failover=failover,
        fetched_at=now,
    )


TokenProvider = Callable[[], tuple[str, str]]


class GrpcControlPlaneClient:
    """The gRPC adapter. The channel is opened lazily, on the event loop that first calls.

    The token comes from ``token_provider`` (``(token, where from)``, e.g.
    :func:`kefu.control_plane.client.resolve_operator_token`), asked again after every refusal,
    so an operator who fixes the token file does not have to restart the console.
    """

    def __init__(
        self,
        target: str,
        token_provider: TokenProvider,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: TlsFiles | None = None,
    ) -> None:
        self._target = target
        self._tls = tls
        self._provider = token_provider
        self._token: str | None = None  # None: ask the provider before the next call
        self._token_source = ""
        self.timeout_s = timeout_s
        self._channel: Any = None
        self._stub: Any = None

    async def _current_token(self) -> str:
        if self._token is None:
            try:
                # A file read: off the event loop.
                token, self._token_source = await asyncio.to_thread(self._provider)
            except PermanentError as exc:
                raise ConsoleAuthError(str(exc)) from exc
            self._token = token
            return token
        return self._token

    @property
    def target(self) -> str:
        return self._target

    def _ensure(self) -> Any:
        if self._stub is None:
            from kefu.control_plane.api import MAX_MESSAGE_BYTES
            from kefu.v1 import control_plane_pb2_grpc as pbg

            self._channel = secure_channel(
                self._target,
                self._tls,
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    # Reconnect about as often as the console refreshes, not up to 2 min later.
                    ("grpc.initial_reconnect_backoff_ms", 500),
                    ("grpc.max_reconnect_backoff_ms", 5000),
                ],
            )
            self._stub = pbg.ControlPlaneStub(self._channel)
        return self._stub

    async def _call(self, method: str, request: Any) -> Any:
        import grpc

        from kefu.v1 import bearer_metadata

        token = await self._current_token()
        stub = self._ensure()
        md = bearer_metadata(token) if token else ()
        try:
            return await getattr(stub, method)(request, metadata=md, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            msg = f"{code.name}: {exc.details()}"
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                where = (
                    f"token from {self._token_source}"
                    if token
                    else f"no token found ({self._token_source or 'none given'})"
                )
                self._token = None  # re-read before the next call
                raise ConsoleAuthError(f"{msg} [{where}]") from exc
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ConsoleUnavailable(f"{self._target}: {msg}") from exc
            raise PermanentError(msg) from exc

    async def status(self) -> pb.ControlPlaneStatus:
        return await self._call("GetStatus", pb.GetStatusRequest())

    async def nodes(self) -> pb.ListNodesReply:
        return await self._call("ListNodes", pb.ListNodesRequest())

    async def tenants(self) -> pb.ListTenantsReply:
        return await self._call("ListTenants", pb.ListTenantsRequest())

    async def assignments(self) -> pb.ListAssignmentsReply:
        return await self._call("ListAssignments", pb.ListAssignmentsRequest())

    async def models(self) -> pb.ListModelsReply:
        return await self._call("ListModels", pb.ListModelsRequest())

    async def telemetry(self) -> pb.QueryTelemetryReply:
        return await self._call(
            "QueryTelemetry", pb.QueryTelemetryRequest(since_s=TELEMETRY_SINCE_S, bucket_s=60)
        )

    async def audit(self) -> pb.QueryAuditReply:
        return await self._call("QueryAudit", pb.QueryAuditRequest(limit=AUDIT_LIMIT))

    async def set_tenant_enabled(self, tenant: str, enabled: bool) -> pb.Tenant:
        return await self._call(
            "SetTenantEnabled", pb.SetTenantEnabledRequest(tenant=tenant, enabled=enabled)
        )

    async def rollouts(self) -> pb.ListRolloutsReply:
        return await self._call("ListRollouts", pb.ListRolloutsRequest())

    async def alerts(self) -> pb.ListAlertsReply:
        return await self._call("ListAlerts", pb.ListAlertsRequest(limit=ALERTS_LIMIT))

    async def failover(self) -> pb.FailoverStatus:
        return await self._call("GetFailoverStatus", pb.GetFailoverStatusRequest())

    async def analysis(self, rollout_id: str) -> pb.RolloutAnalysis:
        """The latest canary-analysis verdict with its evidence (``kefu cp rollout analysis``)."""
        return await self._call("GetRolloutAnalysis", pb.GetRolloutRequest(rollout_id=rollout_id))

    async def command_region(self, region: str, command: str) -> pb.RegionHealth:
        """``drain`` (move traffic away on purpose) or ``failback`` (let it take traffic back)."""
        rpc = REGION_COMMANDS.get(command)
        if rpc is None:
            raise PermanentError(f"unknown region command {command!r} / 未知区域操作")
        return await self._call(rpc, pb.RegionActionRequest(region=region))

    async def command_rollout(self, rollout_id: str, command: str) -> pb.Rollout:
        return await self._call(
            "CommandRollout",
            pb.CommandRolloutRequest(
                rollout_id=rollout_id, command=command, reason="from the operator console"
            ),
        )

    async def close(self) -> None:
        """Idempotent."""
        ch, self._channel, self._stub = self._channel, None, None
        if ch is not None:
            await ch.close()
