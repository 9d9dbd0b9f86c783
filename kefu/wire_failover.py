"""The failover part of the wire contract (:mod:`kefu.wire`): region health, the region serving
each tenant, and what gateways see of each region's nodes, in JetStream key-value buckets:

==========================  =========================  ======================================
bucket                      key                        document
==========================  =========================  ======================================
``kefu_region_health``      ``<region>``               :class:`RegionHealth` (the leader's)
``kefu_routes``             ``<tenant>``               :class:`TenantRoute` (gateways watch)
``kefu_reach``              ``<gateway>.<region>``     :class:`GatewayReach`
==========================  =========================  ======================================

Every name here is importable from :mod:`kefu.wire` too (the shared contract module).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BUCKET_REACH",
    "BUCKET_REGION_HEALTH",
    "BUCKET_ROUTES",
    "GatewayReach",
    "RegionHealth",
    "RegionState",
    "TenantRoute",
]


class _Doc(BaseModel):
    # As kefu.wire's documents: unknown fields are ignored (an older reader, a newer writer).
    model_config = ConfigDict(extra="ignore")


#: Region health as the leader decides it (``<region>`` → :class:`RegionHealth`).
BUCKET_REGION_HEALTH = "kefu_region_health"
#: Which region serves each tenant (``<tenant>`` → :class:`TenantRoute`); gateways watch it.
BUCKET_ROUTES = "kefu_routes"
#: What gateways see of each region's nodes (``<gateway>.<region>`` → :class:`GatewayReach`).
BUCKET_REACH = "kefu_reach"

RegionState = Literal["up", "suspect", "down", "recovering"]


class RegionHealth(_Doc):
    """One region's health state (:mod:`kefu.control_plane.region_health` decides it)."""

    region: str
    state: RegionState = "up"
    #: When the region entered ``state`` (leader's clock, epoch seconds).
    since: float = Field(default_factory=time.time)
    #: Since when the current run of bad (``up``/``suspect``) or good (``down``/``recovering``)
    #: observations lasts; 0 = none.
    streak_since: float = 0.0
    #: Times it fell back to ``down`` from ``recovering`` (each doubles the dwell, capped).
    relapses: int = 0
    #: When the pending transition (suspect → down, recovering → up) happens if the current
    #: streak lasts (the hysteresis countdown); 0 = none pending.
    next_at: float = 0.0
    #: Its nodes serve customers (per gateways) but do not reach NATS: not down, alerted.
    nats_partition: bool = False
    #: Set by ``kefu cp regions drain``: no tenant is routed here until ``failback``.
    drained: bool = False
    #: The evidence of the last evaluation (human-readable, no text of conversations).
    evidence: str = ""


class TenantRoute(_Doc):
    """The region serving a tenant's new conversations ("" with ``unavailable``)."""

    tenant: str
    region: str = ""
    state: Literal["serving", "unavailable"] = "serving"
    #: Increases each time ``region`` or ``state`` changes.
    epoch: int = 1
    home: str = ""
    reason: str = ""
    since: float = Field(default_factory=time.time)
    #: Allowed, healthy regions ready to serve the tenant, in preference order (automatic
    #: failover only): where a gateway sends new conversations while it reaches no node of
    #: ``region`` itself. Never outside the tenant's allowed regions.
    standby: list[str] = Field(default_factory=list)


class GatewayReach(_Doc):
    """A gateway's report of which of a region's nodes answer it (its health checks)."""

    gateway: str
    region: str
    reachable: list[str] = Field(default_factory=list)
    unreachable: list[str] = Field(default_factory=list)
    at: float = Field(default_factory=time.time)
