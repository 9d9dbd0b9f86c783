"""The control-plane gRPC API (``kefu.v1.ControlPlane``): a thin adapter over :class:`ControlPlane`.

Every RPC first authenticates its operator token (``authorization: Bearer <token>``, checked
against the hashes in KV by :class:`~kefu.control_plane.tokens.OperatorTokens`) and asks the
pure :func:`~kefu.control_plane.auth.decide` whether the token's role may call it: no or a
bad token → UNAUTHENTICATED, a viewer calling a write → PERMISSION_DENIED (and an audit
event). The token's name is the audit actor; ``x-kefu-actor`` is kept only as a note. Then the
RPC calls the service and converts documents to messages. Errors are mapped once, in
:func:`_rpc`: a :class:`~kefu.errors.KefuError` becomes a status code with its bilingual
message, never a stack trace. Health and reflection are served beside it without a token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kefu import __version__
from kefu.auth_guard import FailedAuthGuard, peer_address
from kefu.bus import BusUnavailable, Conflict, NotFound
from kefu.certstore import TlsFiles
from kefu.control_plane import api_fleet as fleet
from kefu.control_plane import api_regions as regions
from kefu.control_plane import api_tenants as tenants
from kefu.control_plane.api_fleet import node_msg
from kefu.control_plane.auth import Operator, decide
from kefu.control_plane.leader import LeaderLease
from kefu.control_plane.region_health import FailbackRefused
from kefu.control_plane.service import (
    AUDIT_NOTE,
    MAX_CONFIG_TEXT,
    ControlPlane,
    NotFoundError,
)
from kefu.control_plane.telemetry import TelemetryIndex, percentile_ms, summarise
from kefu.control_plane.tokens import (
    LastAdminError,
    OperatorTokens,
    TokenNotFoundError,
)
from kefu.errors import ConfigError, KefuError, PermanentError, TemporaryError
from kefu.tls import bind
from kefu.v1 import api_key_from_metadata
from kefu.v1 import control_plane_pb2 as pb
from kefu.v1 import control_plane_pb2_grpc as pbg
from kefu.wire import (
    STREAM_TELEMETRY,
    Assignment,
    ConfigVersion,
    ModelVersion,
    TelemetryBatch,
    check_id,
    decode,
)

__all__ = [
    "ACTOR_METADATA_KEY",
    "MAX_CONFIG_BYTES",
    "MAX_MESSAGE_BYTES",
    "SERVICE_NAME",
    "UNAUTHENTICATED_MESSAGE",
    "ControlPlaneApi",
    "serve_api",
]

log = logging.getLogger("kefu.control_plane.api")

#: Optional free-text note for the audit log (never the identity: that is the token's name).
ACTOR_METADATA_KEY = "x-kefu-actor"
SERVICE_NAME = "kefu.v1.ControlPlane"
UNAUTHENTICATED_MESSAGE = (
    "missing, unknown or revoked operator token: send `authorization: Bearer <token>` "
    "(kefu cp --token / --token-file / $KEFU_CP_TOKEN) / "
    "缺少操作员令牌，或令牌无效、已吊销：请提供 `authorization: Bearer <令牌>`"
)
#: Bundles travel in one message; 64 MB leaves room for big models.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: A tenant config (PutConfig's YAML) larger than this is refused up front (INVALID_ARGUMENT),
#: before any parsing; the demo config is ~110 KB.
MAX_CONFIG_BYTES = MAX_CONFIG_TEXT
#: Free-text fields (comments, descriptions, names in requests) are refused beyond this.
MAX_TEXT_CHARS = 1000

_R = TypeVar("_R")


#: The authenticated caller of the RPC being served (set by :func:`_rpc` for its duration).
_CALLER: ContextVar[Operator | None] = ContextVar("kefu_cp_caller", default=None)


def _rpc(fn: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
    """Authenticate and authorize, then run the RPC with its errors mapped to status codes."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: ControlPlaneApi, request: Any, context: grpc.aio.ServicerContext) -> _R:
        operator = await self._authorize(method, context)
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        caller = _CALLER.set(operator)
        note = AUDIT_NOTE.set(_note(context))
        try:
            _check_sizes(request)
            return await fn(self, request, context)
        except (NotFoundError, NotFound, TokenNotFoundError) as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Conflict as exc:
            code = (
                grpc.StatusCode.ALREADY_EXISTS
                if "exist" in str(exc) or "immutable" in str(exc)
                else grpc.StatusCode.ABORTED
            )
            await context.abort(code, str(exc))
        except (LastAdminError, FailbackRefused) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (ConfigError, PermanentError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (BusUnavailable, TemporaryError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except KefuError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        finally:
            AUDIT_NOTE.reset(note)
            _CALLER.reset(caller)
        raise AssertionError("unreachable")  # abort() raises

    return wrapper


class _Malformed:
    """Stands in for a request whose bytes are not the RPC's protobuf message."""

    def __init__(self, message: str):
        self.message = message


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: malformed bytes become a :class:`_Malformed`,
    which the RPC answers with INVALID_ARGUMENT (after authentication) instead of gRPC's
    UNKNOWN and a logged traceback."""

    def go(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError and friends: the bytes are the caller's fault
            return _Malformed(
                f"malformed request: not a valid protobuf message ({type(exc).__name__}) / "
                "请求格式错误"
            )

    return go


def _check_sizes(request: Any) -> None:
    """Refuse oversized text up front (INVALID_ARGUMENT): the config's YAML beyond
    :data:`MAX_CONFIG_BYTES`, any other string field beyond :data:`MAX_TEXT_CHARS`."""
    for fd, value in request.ListFields():
        if not isinstance(value, str):  # repeated and map fields: bounded by the message size
            continue
        limit = MAX_CONFIG_BYTES if fd.name == "yaml" else MAX_TEXT_CHARS
        size = len(value.encode("utf-8")) if fd.name == "yaml" else len(value)
        if size > limit:
            unit = "bytes" if fd.name == "yaml" else "characters"
            raise PermanentError(
                f"field {fd.name!r} is too long: {size} {unit}, the limit is {limit} / "
                f"字段 {fd.name} 过长（上限 {limit}）"
            )


def _note(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA_KEY:
            return str(value)[:100]
    return ""


def _actor(context: grpc.aio.ServicerContext) -> str:
    """The audit actor: the authenticated token's name (set by :func:`_rpc`)."""
    operator = _CALLER.get()
    assert operator is not None, "RPC served without _rpc"
    return operator.name


def config_msg(c: ConfigVersion, *, with_yaml: bool = True) -> pb.ConfigVersion:
    return pb.ConfigVersion(
        tenant=c.tenant,
        version=c.version,
        yaml=c.yaml if with_yaml else "",
        digest=c.digest,
        author=c.author,
        comment=c.comment,
        created_at=c.created_at,
        rollback_of=c.rollback_of,
    )


def model_msg(m: ModelVersion) -> pb.ModelVersion:
    return pb.ModelVersion(
        name=m.name,
        version=m.version,
        task=m.task,
        family=m.family,
        labels=m.labels,
        size=m.size,
        sha256=m.sha256,
        signer=m.signer,
        created_at=m.created_at,
        metrics={k: float(v) for k, v in m.metrics.items() if isinstance(v, int | float)},
        published_at=m.published_at,
        published_by=m.published_by,
    )


def assignment_msg(a: Assignment) -> pb.Assignment:
    return pb.Assignment(
        tenant=a.tenant,
        region=a.region,
        config_version=a.config_version,
        models=a.models,
        scenario_models={k: pb.ScenarioModels(models=v) for k, v in a.scenario_models.items()},
        updated_at=a.updated_at,
        updated_by=a.updated_by,
    )


class ControlPlaneApi(pbg.ControlPlaneServicer):
    def __init__(
        self,
        cp: ControlPlane,
        *,
        lease: LeaderLease | None = None,
        telemetry: TelemetryIndex | None = None,
        tokens: OperatorTokens | None = None,
        auth_guard: FailedAuthGuard | None = None,
    ):
        self.cp = cp
        self.lease = lease
        self.telemetry = telemetry
        # One clock for key and token expiries (the service's: tests replace it there).
        self.tokens = tokens or OperatorTokens(cp.bus, clock=lambda: cp.clock())
        #: Refused tokens per peer: counted, logged (rate-limited), answered ever more slowly.
        self.auth_guard = auth_guard or FailedAuthGuard()

    def _actor_name(self) -> str:
        operator = _CALLER.get()
        assert operator is not None, "RPC served without _rpc"
        return operator.name

    # Rollouts (handlers in api_fleet.py): authenticated, authorized and error-mapped here.
    StartRollout = _rpc(fleet.StartRollout)
    ListRollouts = _rpc(fleet.ListRollouts)
    GetRollout = _rpc(fleet.GetRollout)
    CommandRollout = _rpc(fleet.CommandRollout)
    # Region failover (handlers in api_regions.py).
    ConfigureRegion = _rpc(regions.ConfigureRegion)
    GetFailoverStatus = _rpc(regions.GetFailoverStatus)
    DrainRegion = _rpc(regions.DrainRegion)
    FailbackRegion = _rpc(regions.FailbackRegion)
    GetRolloutAnalysis = _rpc(fleet.GetRolloutAnalysis)
    ListCanaryPolicies = _rpc(fleet.ListCanaryPolicies)
    PutCanaryPolicy = _rpc(fleet.PutCanaryPolicy)
    ListAlerts = _rpc(fleet.ListAlerts)
    AckAlert = _rpc(fleet.AckAlert)
    # Tenants, their API keys and operator tokens (handlers in api_tenants.py).
    CreateTenant = _rpc(tenants.CreateTenant)
    SetTenantEnabled = _rpc(tenants.SetTenantEnabled)
    ListTenants = _rpc(tenants.ListTenants)
    IssueApiKey = _rpc(tenants.IssueApiKey)
    RotateApiKey = _rpc(tenants.RotateApiKey)
    RevokeApiKey = _rpc(tenants.RevokeApiKey)
    IssueOperatorToken = _rpc(tenants.IssueOperatorToken)
    RotateOperatorToken = _rpc(tenants.RotateOperatorToken)
    ListOperatorTokens = _rpc(tenants.ListOperatorTokens)
    RevokeOperatorToken = _rpc(tenants.RevokeOperatorToken)

    async def _authorize(self, method: str, context: grpc.aio.ServicerContext) -> Operator:
        token = api_key_from_metadata(context.invocation_metadata())
        operator: Operator | None = None
        why = ""
        peer = peer_address(context.peer() or "")
        if token:
            try:
                operator, why = await self.tokens.check(token)
            except (BusUnavailable, TemporaryError) as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except KefuError as exc:
                await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        if operator is None:
            guard = self.auth_guard
            delay = guard.failed(peer)
            if (summary := guard.report(peer)) is not None:
                log.warning(
                    "control plane: operator token refused for %s / 操作员令牌认证失败", summary
                )
            else:
                log.debug("control-plane %s refused: no valid operator token", method)
            if delay:
                await asyncio.sleep(delay)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, why or UNAUTHENTICATED_MESSAGE)
            raise AssertionError("unreachable")  # abort() raises
        decision = decide(operator, method)
        if not decision.allowed:
            log.info("control-plane %s refused for %s (%s)", method, operator.name, operator.role)
            try:
                await self.cp.audit_denied(operator.name, method)
            except KefuError as exc:  # the refusal stands even when it cannot be recorded
                log.warning("cannot audit a refused call: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.message)
        return operator

    @_rpc
    async def SetTenantResidency(self, req: pb.SetTenantResidencyRequest, ctx: Any) -> pb.Tenant:
        return tenants.tenant_msg(await regions.set_tenant_residency(self, req))

    @_rpc
    async def CreateRegion(self, req: pb.CreateRegionRequest, ctx: Any) -> pb.Region:
        r = await self.cp.create_region(req.region, description=req.description, actor=_actor(ctx))
        return regions.region_msg(r)

    @_rpc
    async def ListRegions(self, req: pb.ListRegionsRequest, ctx: Any) -> pb.ListRegionsReply:
        return pb.ListRegionsReply(
            regions=[regions.region_msg(r) for r in await self.cp.list_regions()]
        )

    @_rpc
    async def PutConfig(self, req: pb.PutConfigRequest, ctx: Any) -> pb.ConfigVersion:
        cv = await self.cp.put_config(
            req.tenant, req.yaml, actor=_actor(ctx), comment=req.comment, staged=req.staged
        )
        return config_msg(cv, with_yaml=False)

    @_rpc
    async def ListConfigs(self, req: pb.ListConfigsRequest, ctx: Any) -> pb.ListConfigsReply:
        versions = await self.cp.list_configs(req.tenant)
        return pb.ListConfigsReply(versions=[config_msg(c, with_yaml=False) for c in versions])

    @_rpc
    async def GetConfig(self, req: pb.GetConfigRequest, ctx: Any) -> pb.ConfigVersion:
        return config_msg(await self.cp.get_config(req.tenant, req.version))

    @_rpc
    async def DiffConfig(self, req: pb.DiffConfigRequest, ctx: Any) -> pb.DiffConfigReply:
        diff = await self.cp.diff_config(req.tenant, req.from_version, req.to_version)
        return pb.DiffConfigReply(unified_diff=diff)

    @_rpc
    async def RollbackConfig(self, req: pb.RollbackConfigRequest, ctx: Any) -> pb.ConfigVersion:
        cv = await self.cp.rollback_config(req.tenant, req.version, actor=_actor(ctx))
        return config_msg(cv, with_yaml=False)

    @_rpc
    async def PublishModel(self, req: pb.PublishModelRequest, ctx: Any) -> pb.ModelVersion:
        return model_msg(await self.cp.publish_model(req.packed_bundle, actor=_actor(ctx)))

    @_rpc
    async def ListModels(self, req: pb.ListModelsRequest, ctx: Any) -> pb.ListModelsReply:
        return pb.ListModelsReply(
            models=[model_msg(m) for m in await self.cp.list_models(req.name)]
        )

    @_rpc
    async def GetModel(self, req: pb.GetModelRequest, ctx: Any) -> pb.ModelVersion:
        return model_msg(await self.cp.get_model(req.ref))

    @_rpc
    async def Assign(self, req: pb.AssignRequest, ctx: Any) -> pb.Assignment:
        a = await self.cp.assign(
            req.tenant,
            req.region,
            models=dict(req.models),
            scenario_models={k: dict(v.models) for k, v in req.scenario_models.items()},
            config_version=req.config_version if req.HasField("config_version") else None,
            remove=list(req.remove),
            actor=_actor(ctx),
        )
        return assignment_msg(a)

    @_rpc
    async def ListAssignments(
        self, req: pb.ListAssignmentsRequest, ctx: Any
    ) -> pb.ListAssignmentsReply:
        found = await self.cp.list_assignments(req.tenant)
        return pb.ListAssignmentsReply(assignments=[assignment_msg(a) for a in found])

    @_rpc
    async def ListNodes(self, req: pb.ListNodesRequest, ctx: Any) -> pb.ListNodesReply:
        if req.region:
            check_id(req.region, "region")
        now = time.time()
        return pb.ListNodesReply(
            nodes=[node_msg(n, now) for n in await self.cp.list_nodes(req.region)]
        )

    @_rpc
    async def QueryAudit(self, req: pb.QueryAuditRequest, ctx: Any) -> pb.QueryAuditReply:
        events = await self.cp.audit_log(tenant=req.tenant, limit=req.limit or 100)
        return pb.QueryAuditReply(
            events=[
                pb.AuditEvent(
                    seq=e.seq,
                    at=e.at,
                    actor=e.actor,
                    action=e.action,
                    resource=e.resource,
                    tenant=e.tenant,
                    before_digest=e.before,
                    after_digest=e.after,
                    detail=e.detail,
                    actor_note=e.actor_note,
                )
                for e in events
            ]
        )

    @_rpc
    async def QueryTelemetry(
        self, req: pb.QueryTelemetryRequest, ctx: Any
    ) -> pb.QueryTelemetryReply:
        if req.tenant:
            check_id(req.tenant, "tenant")
        since = time.time() - (req.since_s or 3600.0)
        bucket_s = req.bucket_s or 60.0
        if self.telemetry is not None:
            await self.telemetry.poll_once()  # include what arrived since the last poll
            batches = self.telemetry.batches
            dropped = sum(self.telemetry.dropped_by_node.values())
        else:
            msgs = await self.cp.bus.stream_read(STREAM_TELEMETRY, since=since, limit=0)
            batches = [decode(TelemetryBatch, m.data) for m in msgs]
            dropped = 0
        series = summarise(batches, tenant=req.tenant, since=since, bucket_s=bucket_s)
        nodes = {b.node_id for b in batches if b.sent_at >= since}
        out = []
        for s in series:
            r = s.rates()
            t = s.total
            out.append(
                pb.TelemetrySeries(
                    tenant=s.tenant,
                    scenario=s.scenario,
                    model_version=s.model_version,
                    turns=t.turns,
                    errors=t.errors,
                    feedback=t.feedback,
                    points=[
                        pb.TelemetryPoint(
                            at=at,
                            turns=p.turns,
                            errors=p.errors,
                            p95_ms=percentile_ms(p.latency_buckets, 0.95),
                        )
                        for at, p in sorted(s.points.items())
                    ],
                    **r,
                )
            )
        return pb.QueryTelemetryReply(series=out, nodes_reporting=len(nodes), dropped=dropped)

    @_rpc
    async def GetStatus(self, req: pb.GetStatusRequest, ctx: Any) -> pb.ControlPlaneStatus:
        return pb.ControlPlaneStatus(
            replica=self.cp.replica,
            leader=await self.cp.leader(),
            is_leader=bool(self.lease and self.lease.is_leader),
            software_version=__version__,
            caller=_actor(ctx),
            caller_role=_role(),
            auth_failures=self.auth_guard.total,
        )


def _role() -> str:
    operator = _CALLER.get()
    return operator.role.value if operator else ""


class _Collect:
    """Receives the generated code's method handlers so they can be wrapped."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


def _add_servicer(api: ControlPlaneApi, server: grpc.aio.Server) -> None:
    """Register the API with lenient request deserializers (see :func:`_lenient`)."""
    collect = _Collect()
    pbg.add_ControlPlaneServicer_to_server(api, collect)
    handlers = {
        name: h._replace(request_deserializer=_lenient(h.request_deserializer))
        for name, h in collect.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def serve_api(
    api: ControlPlaneApi, listen: str, tls: TlsFiles | None = None
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    _add_servicer(api, server)
    # Health and reflection need no token (load balancers, grpcurl); they reveal no state.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = bind(server, listen, tls, what="control-plane gRPC API")
    except RuntimeError as exc:
        raise PermanentError(f"cannot listen on {listen}: {exc}") from exc
    if not port:
        raise PermanentError(f"cannot listen on {listen} (address in use?) / 端口被占用")
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
