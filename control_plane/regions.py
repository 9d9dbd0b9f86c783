"""Residency and failover operations on the registry: zones, failover orders, tenants' residency,
drain and failback, and the read of region health and routes.

Validation is the pure :mod:`kefu.control_plane.residency` and
:mod:`kefu.control_plane.region_health`; this module reads and writes the KV buckets with
compare-and-set and audits every change. The leader's loop (:mod:`.failover`) decides health
and routes; an operator's drain or failback is one write to ``kefu_region_health`` that the
loop picks up on its next tick (the ``on_change`` kick makes that immediate on the leader).
"""

from __future__ import annotations

import time

from kefu.bus import snapshot
from kefu.control_plane.region_health import drain, failback
from kefu.control_plane.residency import ResidencyError, check_region, check_residency
from kefu.control_plane.state import StateStore
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_REGION_HEALTH,
    BUCKET_REGISTRY,
    BUCKET_ROUTES,
    Assignment,
    RegionHealth,
    RegionRecord,
    TenantRecord,
    TenantResidency,
    TenantRoute,
    check_id,
    decode,
)

__all__ = ["RegionOps"]


class RegionOps(StateStore):
    async def _regions(self) -> dict[str, RegionRecord]:
        entries = await snapshot(self.bus, BUCKET_REGISTRY, "region.*")
        out = {}
        for _, e in entries.items():
            rec = decode(RegionRecord, e.value)
            out[rec.id] = rec
        return out

    async def configure_region(
        self, region: str, *, zone: str, failover: list[str], actor: str
    ) -> RegionRecord:
        """Set a region's residency zone and failover order (validated against the others)."""
        await self._region(region)
        regions = await self._regions()

        def change(old: RegionRecord | None) -> RegionRecord:
            assert old is not None
            new = old.model_copy(update={"zone": zone, "failover": list(failover)})
            return check_region(new, {**regions, region: new})

        old, new = await self._mutate(RegionRecord, BUCKET_REGISTRY, f"region.{region}", change)
        await self._audit(
            actor,
            "region.residency",
            f"region/{region}",
            before=old,
            after=new,
            detail=f"zone={zone or '-'} failover={','.join(failover) or '-'}",
        )
        self.on_change()
        return new

    async def set_tenant_residency(
        self, tenant: str, residency: TenantResidency, *, actor: str
    ) -> TenantRecord:
        """Set where a tenant may be served and stored (admin only, validated)."""
        await self._tenant(tenant)
        res = check_residency(residency, await self._regions())
        assigned = await snapshot(self.bus, BUCKET_ASSIGNMENTS, f"{tenant}.*")
        outside = sorted(
            a.region
            for a in (decode(Assignment, e.value) for e in assigned.values())
            if a.region not in res.allowed
        )
        if outside:
            raise ResidencyError(
                f"tenant {tenant!r} is assigned to {', '.join(outside)}, outside the allowed "
                f"regions: unassign it there first / 租户已分配到不允许的区域 "
                f"{', '.join(outside)}，请先取消分配"
            )

        def change(old: TenantRecord | None) -> TenantRecord:
            assert old is not None
            return old.model_copy(update={"residency": res})

        old, new = await self._mutate(TenantRecord, BUCKET_REGISTRY, f"tenant.{tenant}", change)
        await self._audit(
            actor,
            "tenant.residency",
            f"tenant/{tenant}/residency",
            tenant=tenant,
            before=old,
            after=new,
            detail=(
                f"home={res.home} allowed={','.join(res.allowed)} replicate={res.replicate} "
                f"failover={res.failover_mode}"
            ),
        )
        self.on_change()
        return new

    async def region_health(self) -> list[RegionHealth]:
        """Health of every registered region (a region the leader has not judged yet is up)."""
        regions = await self._regions()
        entries = await snapshot(self.bus, BUCKET_REGION_HEALTH, "*")
        seen = {
            decode(RegionHealth, e.value).region: decode(RegionHealth, e.value)
            for e in entries.values()
        }
        return [
            seen.get(r) or RegionHealth(region=r, evidence="not evaluated yet")
            for r in sorted(regions)
        ]

    async def routes(self) -> list[TenantRoute]:
        entries = await snapshot(self.bus, BUCKET_ROUTES, "*")
        return sorted(
            (decode(TenantRoute, e.value) for e in entries.values()), key=lambda r: r.tenant
        )

    async def _set_health(self, region: str, actor: str, action: str) -> RegionHealth:
        await self._region(check_id(region, "region"))
        now = time.time()

        def change(old: RegionHealth | None) -> RegionHealth:
            cur = old or RegionHealth(region=region, since=now)
            return drain(cur) if action == "drain" else failback(cur, now)[0]

        old, new = await self._mutate(RegionHealth, BUCKET_REGION_HEALTH, region, change)
        await self._audit(
            actor,
            f"region.{action}",
            f"region/{region}",
            before=old,
            after=new,
            detail=f"state={new.state} drained={new.drained}",
        )
        self.on_change()
        return new

    async def drain_region(self, region: str, *, actor: str) -> RegionHealth:
        return await self._set_health(region, actor, "drain")

    async def failback_region(self, region: str, *, actor: str) -> RegionHealth:
        return await self._set_health(region, actor, "failback")
