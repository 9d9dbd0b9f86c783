"""The failover part of ``kefu.v1.ControlPlane``: ConfigureRegion, SetTenantResidency,
GetFailoverStatus (viewer), DrainRegion and FailbackRegion, and their messages
(SetTenantResidency's reply is a tenant message, built in :mod:`.api`).

Handlers are named as their RPCs; :class:`~kefu.control_plane.api.ControlPlaneApi` wraps each
with authentication, authorization and error mapping (as for the rollout RPCs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from kefu.control_plane.region_health import serves_traffic
from kefu.errors import PermanentError
from kefu.v1 import control_plane_pb2 as pb
from kefu.wire import (
    FailoverMode,
    NodeStatus,
    RegionHealth,
    RegionRecord,
    TenantRecord,
    TenantResidency,
    TenantRoute,
    check_id,
)

if TYPE_CHECKING:
    from kefu.control_plane.service import ControlPlane

__all__ = [
    "ConfigureRegion",
    "DrainRegion",
    "FailbackRegion",
    "GetFailoverStatus",
    "health_msg",
    "region_msg",
    "residency_msg",
    "set_tenant_residency",
]


class _Api(Protocol):
    cp: ControlPlane

    def _actor_name(self) -> str: ...


def region_msg(r: RegionRecord) -> pb.Region:
    return pb.Region(
        id=r.id,
        description=r.description,
        created_at=r.created_at,
        zone=r.zone,
        failover=r.failover,
    )


def residency_msg(res: TenantResidency | None) -> pb.TenantResidency | None:
    if res is None:
        return None
    return pb.TenantResidency(
        home=res.home,
        allowed=res.allowed,
        replicate=res.replicate,
        failover_mode=res.failover_mode,
    )


def health_msg(
    h: RegionHealth, now: float, lag: tuple[float, bool] = (0.0, False)
) -> pb.RegionHealth:
    """``lag``: the region's largest replication lag its nodes report, and whether any of them
    replicates (see :func:`replication_lags`)."""
    return pb.RegionHealth(
        region=h.region,
        state=h.state,
        since=h.since,
        drained=h.drained,
        evidence=h.evidence,
        relapses=h.relapses,
        countdown_s=max(0.0, h.next_at - now) if h.next_at else 0.0,
        serves_traffic=serves_traffic(h),
        replication_lag_s=lag[0],
        replicating=lag[1],
    )


def replication_lags(nodes: list[NodeStatus]) -> dict[str, tuple[float, bool]]:
    """Per region: the largest replication lag of its nodes, and whether any replicates. Read
    from the node statuses at request time (the lag changes every heartbeat; region health is
    only written on transitions)."""
    out: dict[str, tuple[float, bool]] = {}
    for n in nodes:
        if not n.replication_streams and n.replication_lag_s <= 0:
            continue
        lag, _ = out.get(n.region, (0.0, True))
        out[n.region] = (max(lag, n.replication_lag_s), True)
    return out


def route_msg(r: TenantRoute) -> pb.TenantRoute:
    return pb.TenantRoute(
        tenant=r.tenant,
        region=r.region,
        state=r.state,
        epoch=r.epoch,
        home=r.home,
        reason=r.reason,
        since=r.since,
    )


async def ConfigureRegion(api: _Api, request: Any, context: Any) -> pb.Region:
    rec = await api.cp.configure_region(
        request.region,
        zone=request.zone,
        failover=list(request.failover),
        actor=api._actor_name(),
    )
    return region_msg(rec)


async def set_tenant_residency(api: _Api, request: Any) -> TenantRecord:
    """SetTenantResidency's work (the API module turns the record into its message)."""
    if not request.HasField("residency") or not request.residency.home:
        raise PermanentError("name the tenant's home region / 请指定租户的本地区域")
    r = request.residency
    mode = r.failover_mode or "automatic"
    if mode not in ("automatic", "manual", "never"):
        raise PermanentError(
            f"failover mode {mode!r}: use automatic, manual or never / "
            "故障切换模式只能是 automatic、manual 或 never"
        )
    res = TenantResidency(
        home=check_id(r.home, "region"),
        allowed=[check_id(x, "region") for x in r.allowed],
        replicate=r.replicate,
        failover_mode=cast(FailoverMode, mode),
    )
    return await api.cp.set_tenant_residency(request.tenant, res, actor=api._actor_name())


async def GetFailoverStatus(api: _Api, request: Any, context: Any) -> pb.FailoverStatus:
    now = time.time()
    lags = replication_lags(await api.cp.list_nodes())
    return pb.FailoverStatus(
        regions=[
            health_msg(h, now, lags.get(h.region, (0.0, False)))
            for h in await api.cp.region_health()
        ],
        routes=[route_msg(r) for r in await api.cp.routes()],
    )


async def DrainRegion(api: _Api, request: Any, context: Any) -> pb.RegionHealth:
    h = await api.cp.drain_region(request.region, actor=api._actor_name())
    return health_msg(h, time.time())


async def FailbackRegion(api: _Api, request: Any, context: Any) -> pb.RegionHealth:
    h = await api.cp.failback_region(request.region, actor=api._actor_name())
    return health_msg(h, time.time())
