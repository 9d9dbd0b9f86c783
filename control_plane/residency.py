"""Data residency and routes: validation of zones and tenants' allowed regions, and the route
planner (pure).

* A **region** belongs to a residency zone and lists, in order, where its tenants fail over
  to (:func:`check_region`: regions of the same zone only, never itself, no repeats).
* A **tenant's residency** (:func:`check_residency`) names its home region, the regions
  allowed to serve and store its conversations (always the home; never outside the home's
  zone — the zone is the contract's boundary), whether its sessions may be replicated, and
  its failover mode.
* The **route planner** (:func:`plan_routes`) picks, per tenant, the region serving its new
  conversations: the home while it serves traffic, else the first allowed region in the home's
  failover order (then the other allowed regions by name) that serves traffic — never a region
  outside ``allowed``; with none, ``unavailable``. ``manual`` tenants move only off a
  *drained* region (an operator's decision), ``never`` tenants never leave home. A tenant
  already served by a failover region stays there while it is healthy and home is not; each
  change of region or state bumps the route's epoch. An ``automatic`` route also lists its
  ``standby`` regions (allowed, healthy, ready, in preference order): a gateway that finds
  every node of the serving region dead by its own health checks may send *new*
  conversations there at once, before the leader's hysteresis has decided anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kefu.errors import PermanentError
from kefu.wire import (
    RegionHealth,
    RegionRecord,
    TenantRecord,
    TenantResidency,
    TenantRoute,
    check_id,
)

__all__ = [
    "ResidencyError",
    "RoutePlan",
    "candidates",
    "check_region",
    "check_residency",
    "plan_routes",
]

FAILOVER_MODES = ("automatic", "manual", "never")


class ResidencyError(PermanentError):
    """A zone, failover list or tenant residency that breaks the residency rules."""

    exit_code = 65


def _zone(r: RegionRecord) -> str:
    return r.zone or f"region:{r.id}"


def check_region(rec: RegionRecord, regions: Mapping[str, RegionRecord]) -> RegionRecord:
    """Validate a region's zone and failover order against the other regions."""
    if rec.zone:
        check_id(rec.zone, "zone")
    seen: set[str] = set()
    for other in rec.failover:
        check_id(other, "region")
        if other == rec.id:
            raise ResidencyError(
                f"region {rec.id!r} cannot fail over to itself / 区域不能故障切换到自身"
            )
        if other in seen:
            raise ResidencyError(
                f"region {other!r} is listed twice in the failover order / 故障切换顺序中重复"
            )
        seen.add(other)
        target = regions.get(other)
        if target is None:
            raise ResidencyError(f"no region {other!r} / 区域 {other!r} 不存在")
        if not rec.zone or target.zone != rec.zone:
            raise ResidencyError(
                f"region {other!r} (zone {target.zone or '-'!r}) is outside zone "
                f"{rec.zone or '-'!r} of {rec.id!r}: failover never leaves the residency zone / "
                f"区域 {other!r} 不在驻留区 {rec.zone or '-'!r} 内，故障切换不能跨驻留区"
            )
    return rec


def check_residency(res: TenantResidency, regions: Mapping[str, RegionRecord]) -> TenantResidency:
    """Validate (and normalise: home first, no repeats) a tenant's residency."""
    home = regions.get(check_id(res.home, "region"))
    if home is None:
        raise ResidencyError(f"no region {res.home!r} / 区域 {res.home!r} 不存在")
    if res.failover_mode not in FAILOVER_MODES:
        raise ResidencyError(
            f"failover mode {res.failover_mode!r}: use automatic, manual or never / "
            "故障切换模式只能是 automatic、manual 或 never"
        )
    allowed = [res.home]
    for r in res.allowed:
        check_id(r, "region")
        rec = regions.get(r)
        if rec is None:
            raise ResidencyError(f"no region {r!r} / 区域 {r!r} 不存在")
        if _zone(rec) != _zone(home):
            raise ResidencyError(
                f"region {r!r} (zone {rec.zone or '-'!r}) is outside the residency zone "
                f"{home.zone or '-'!r} of home region {home.id!r} / 区域 {r!r} 不在本地区域 "
                f"{home.id!r} 的驻留区 {home.zone or '-'!r} 内，不能允许"
            )
        if r not in allowed:
            allowed.append(r)
    return res.model_copy(update={"allowed": allowed})


def candidates(res: TenantResidency, regions: Mapping[str, RegionRecord]) -> list[str]:
    """The tenant's allowed regions in preference order: home, home's failover order, rest."""
    order = [res.home]
    home = regions.get(res.home)
    for r in [*(home.failover if home else []), *sorted(res.allowed)]:
        if r in res.allowed and r not in order:
            order.append(r)
    return order


@dataclass(frozen=True, kw_only=True)
class RoutePlan:
    #: Routes that differ from the current ones (write these).
    changed: list[TenantRoute]
    #: Tenants whose route should be removed (no residency any more, or deleted).
    removed: list[str]


def _choose(
    tenant: str,
    res: TenantResidency,
    regions: Mapping[str, RegionRecord],
    health: Mapping[str, RegionHealth],
    current: TenantRoute | None,
    serves: Callable[[RegionHealth], bool],
    ready: Callable[[str, str], bool],
) -> tuple[str, str]:
    """(serving region or "", reason)."""

    def ok(r: str) -> bool:
        h = health.get(r)
        return h is not None and serves(h)

    def why_not(r: str) -> str:
        h = health.get(r)
        if h is None:
            return f"{r}: no health yet"
        return f"{r}: {'drained' if h.drained else h.state}"

    if ok(res.home):
        return res.home, "home"
    home_h = health.get(res.home)
    if res.failover_mode == "never":
        return "", f"{why_not(res.home)}; failover mode never"
    if res.failover_mode == "manual" and not (home_h is not None and home_h.drained):
        return "", f"{why_not(res.home)}; failover mode manual (drain to move)"
    if current is not None and current.region in res.allowed and ok(current.region):
        return current.region, f"{why_not(res.home)}; stays on {current.region}"
    for r in candidates(res, regions)[1:]:
        if ok(r) and ready(r, tenant):
            return r, f"{why_not(res.home)}; failover to {r}"
    return "", "; ".join(
        why_not(r) if r == res.home or not ok(r) else f"{r}: not serving {tenant} yet"
        for r in candidates(res, regions)
    )


def plan_routes(
    tenants: Sequence[TenantRecord],
    regions: Mapping[str, RegionRecord],
    health: Mapping[str, RegionHealth],
    current: Mapping[str, TenantRoute],
    now: float,
    serves: Callable[[RegionHealth], bool],
    ready: Callable[[str, str], bool] = lambda region, tenant: True,
) -> RoutePlan:
    """Every tenant's route from residency and region health; unchanged routes are left out.

    ``serves`` says whether a region may take traffic
    (:func:`kefu.control_plane.region_health.serves_traffic`); ``ready(region, tenant)``
    whether a node of that region reports serving the tenant's desired state — traffic fails
    over only to a region that is ready (its home is always eligible).
    """
    changed: list[TenantRoute] = []
    wanted: set[str] = set()
    for t in tenants:
        if t.residency is None or not t.enabled:
            continue
        wanted.add(t.id)
        res = t.residency
        cur = current.get(t.id)
        region, reason = _choose(t.id, res, regions, health, cur, serves, ready)
        state: Literal["serving", "unavailable"] = "serving" if region else "unavailable"
        standby = (
            [
                r
                for r in candidates(res, regions)
                if r != region and r in health and serves(health[r]) and ready(r, t.id)
            ]
            if region and res.failover_mode == "automatic"
            else []
        )
        if cur is not None and cur.region == region and cur.state == state:
            if (cur.home, cur.standby) != (res.home, standby):
                changed.append(cur.model_copy(update={"home": res.home, "standby": standby}))
            continue
        changed.append(
            TenantRoute(
                tenant=t.id,
                region=region,
                state=state,
                epoch=(cur.epoch + 1) if cur is not None else 1,
                home=res.home,
                reason=reason,
                since=now,
                standby=standby,
            )
        )
    removed = sorted(k for k in current if k not in wanted)
    return RoutePlan(changed=changed, removed=removed)
