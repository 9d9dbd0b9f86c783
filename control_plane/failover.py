"""The leader's failover loop: region health from heartbeats and gateway reports, routes per
tenant, the failover target compiled before traffic moves, every transition audited.

Each tick (every ``period_s``, and on a kick after a drain/failback or residency change):

1. **Signals.** Node status keys (``kefu_nodes``) and gateway reports (``kefu_reach``) are
   read; a key counts as fresh while its *revision* changed less than ``heartbeat_timeout_s``
   ago on this leader's monotonic clock — the time the update reached the server and then the
   leader, never a timestamp a node or gateway wrote. A new leader gives every key one timeout
   of grace (it cannot know when it was last written).
2. **Health.** :func:`~.region_health.judge` and :func:`~.region_health.step` per region; the
   result is written to ``kefu_region_health`` with compare-and-set (an operator's drain wins a
   race and the tick is re-planned). Each transition is audited with its evidence through
   :func:`_alert` (audit event + alert); so is the
   onset of a NATS-only partition (nodes serve per gateways, but do not heartbeat).
3. **Warm standby.** For every tenant with a residency, each allowed region without an
   assignment gets a copy of the home region's assignment, so the reconciler compiles the
   tenant's desired state (config, models, keys) into it and its nodes load it *before* any
   traffic moves. A route only fails over to a region where a fresh node reports the tenant
   ``serving``. No assignment is ever created outside the allowed regions.
4. **Routes.** :func:`~.residency.plan_routes`; changed routes are written to ``kefu_routes``
   (gateways watch it) and audited.

Nothing here is remembered across restarts except what is in the buckets: a new leader resumes
from the stored health and routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kefu.bus import Bus, Conflict, NotFound, cancel_and_wait, snapshot
from kefu.control_plane.alerts import Alert, raise_alert
from kefu.control_plane.leader import kick_on_change, run_on_kick
from kefu.control_plane.region_health import (
    HealthPolicy,
    RegionSignals,
    Transition,
    judge,
    serves_traffic,
    step,
)
from kefu.control_plane.residency import plan_routes
from kefu.control_plane.state import StateStore
from kefu.errors import KefuError
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_NODES,
    BUCKET_REACH,
    BUCKET_REGION_HEALTH,
    BUCKET_REGISTRY,
    BUCKET_ROUTES,
    Assignment,
    GatewayReach,
    NodeStatus,
    RegionHealth,
    RegionRecord,
    TenantRecord,
    TenantRoute,
    assignment_key,
    decode,
    encode,
)

__all__ = ["FAILOVER_ACTOR", "FailoverController", "FailoverOptions"]

log = logging.getLogger("kefu.control_plane.failover")

#: The audit actor of the leader's own decisions.
FAILOVER_ACTOR = "failover"


async def _always() -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class FailoverOptions:
    period_s: float = 1.0
    #: A node (or gateway report) whose key did not change for this long is silent.
    heartbeat_timeout_s: float = 15.0
    policy: HealthPolicy = field(default_factory=HealthPolicy)


@dataclass
class _Seen:
    revision: int
    at: float  # leader's monotonic clock when this revision was first seen


async def _alert(
    store: StateStore, action: str, resource: str, detail: str, *, msg_id: str
) -> None:
    """One region-health alert: an audit event with its evidence, and an alert on the alerts
    stream (webhooks, `kefu cp alerts`), both stored once per ``msg_id``."""
    log.warning("failover alert %s %s: %s", action, resource, detail)
    await store.audit(FAILOVER_ACTOR, action, resource, detail=detail, msg_id=msg_id)
    down = action in ("region.down", "region.nats_partition")
    await raise_alert(
        store.bus,
        Alert(
            id=msg_id,
            kind="failover",
            severity="critical" if down else "warning" if action != "region.up" else "info",
            resource=resource,
            title=f"{resource}: {action.removeprefix('region.')} / 区域状态变化",
            detail={"action": action, "evidence": detail},
        ),
    )


class FailoverController:
    def __init__(
        self,
        store: StateStore,
        options: FailoverOptions | None = None,
        *,
        confirm: Callable[[], Awaitable[None]] = _always,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.bus: Bus = store.bus
        self.options = options or FailoverOptions()
        self.confirm = confirm
        self.clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ticks = 0

    def kick(self) -> None:
        self._kick.set()

    # ------------------------------------------------------------------ signals

    def _fresh(self, bucket: str, key: str, revision: int, now: float) -> bool:
        seen = self._seen.get((bucket, key))
        if seen is None or seen.revision != revision:
            seen = _Seen(revision, now)
            self._seen[(bucket, key)] = seen
        return now - seen.at < self.options.heartbeat_timeout_s

    async def _signals(
        self, regions: list[str], now: float
    ) -> tuple[dict[str, RegionSignals], dict[str, set[str]]]:
        """Signals per region, and per region the tenants a fresh node reports serving."""
        nodes: dict[str, int] = dict.fromkeys(regions, 0)
        beating: dict[str, int] = dict.fromkeys(regions, 0)
        serving: dict[str, set[str]] = {r: set() for r in regions}
        for key, e in (await snapshot(self.bus, BUCKET_NODES)).items():
            try:
                st = decode(NodeStatus, e.value, what=f"node {key}")
            except KefuError:
                continue
            nodes[st.region] = nodes.get(st.region, 0) + 1
            if self._fresh(BUCKET_NODES, key, e.revision, now):
                beating[st.region] = beating.get(st.region, 0) + 1
                serving.setdefault(st.region, set()).update(
                    t for t, o in st.tenants.items() if o.state == "serving"
                )
        reach: dict[str, int] = {}
        for key, e in (await snapshot(self.bus, BUCKET_REACH)).items():
            try:
                rep = decode(GatewayReach, e.value, what=f"gateway report {key}")
            except KefuError:
                continue
            if self._fresh(BUCKET_REACH, key, e.revision, now):
                reach[rep.region] = max(reach.get(rep.region, 0), len(rep.reachable))
        signals = {
            r: RegionSignals(
                nodes=nodes.get(r, 0),
                heartbeating=beating.get(r, 0),
                gateway_reachable=reach.get(r),
            )
            for r in regions
        }
        return signals, serving

    # ------------------------------------------------------------------ one tick

    async def run_once(self) -> None:
        mono, wall = self.clock(), time.time()
        registry = await snapshot(self.bus, BUCKET_REGISTRY)
        regions: dict[str, RegionRecord] = {}
        tenants: list[TenantRecord] = []
        for key, e in registry.items():
            if key.startswith("region."):
                rec = decode(RegionRecord, e.value)
                regions[rec.id] = rec
            elif key.startswith("tenant."):
                tenants.append(decode(TenantRecord, e.value))
        signals, serving = await self._signals(sorted(regions), mono)
        health = {r: await self._evaluate(r, signals[r], wall) for r in sorted(regions)}
        await self._warm_standby(tenants)
        await self._route(tenants, regions, health, serving, wall)
        self.ticks += 1

    async def _evaluate(self, region: str, signals: RegionSignals, now: float) -> RegionHealth:
        verdict = judge(signals)
        e = await self.bus.kv_get(BUCKET_REGION_HEALTH, region)
        old = decode(RegionHealth, e.value) if e else RegionHealth(region=region, since=now)
        new, transition = step(old, verdict, now, self.options.policy)
        partition_onset = verdict.nats_partition and not old.nats_partition
        new.nats_partition = verdict.nats_partition
        changed = (
            e is None
            or transition is not None
            or new.nats_partition != old.nats_partition
            or new.next_at != old.next_at
        )
        if not changed:
            return new
        await self.confirm()
        if e is None:
            rev = await self.bus.kv_create(BUCKET_REGION_HEALTH, region, encode(new))
        else:
            rev = await self.bus.kv_update(
                BUCKET_REGION_HEALTH, region, encode(new), last=e.revision
            )
        if transition is not None:
            await self._transition(transition, rev)
        if partition_onset:
            await _alert(
                self.store,
                "region.nats_partition",
                f"region/{region}",
                f"NATS link lost, nodes still serve customers: no failover / "
                f"NATS 连接中断但节点仍在服务，不切换 ({verdict.evidence})",
                msg_id=f"health:{region}:partition:{rev}",
            )
        return new

    async def _transition(self, t: Transition, rev: int) -> None:
        await _alert(
            self.store,
            f"region.{t.after}",
            f"region/{t.region}",
            f"{t.before} → {t.after}"
            + (" (moves traffic / 切换流量)" if t.moves_traffic else "")
            + f": {t.evidence}",
            msg_id=f"health:{t.region}:{rev}",
        )

    async def _warm_standby(self, tenants: list[TenantRecord]) -> None:
        """Copy each residency tenant's home assignment into its other allowed regions."""
        for t in tenants:
            res = t.residency
            if res is None or not t.enabled:
                continue
            home = await self.bus.kv_get(BUCKET_ASSIGNMENTS, assignment_key(t.id, res.home))
            if home is None:
                continue
            base = decode(Assignment, home.value)
            for region in res.allowed:
                if region == res.home:
                    continue
                key = assignment_key(t.id, region)
                if await self.bus.kv_get(BUCKET_ASSIGNMENTS, key) is not None:
                    continue
                copy = base.model_copy(
                    update={
                        "region": region,
                        "updated_at": time.time(),
                        "updated_by": FAILOVER_ACTOR,
                    }
                )
                await self.confirm()
                with contextlib.suppress(Conflict):
                    await self.bus.kv_create(BUCKET_ASSIGNMENTS, key, encode(copy))
                    await self.store.audit(
                        FAILOVER_ACTOR,
                        "assign.standby",
                        f"tenant/{t.id}/regions/{region}",
                        tenant=t.id,
                        after=copy,
                        detail=f"warm standby of {res.home} (failover target)",
                    )
                    self.store.on_change()

    async def _route(
        self,
        tenants: list[TenantRecord],
        regions: dict[str, RegionRecord],
        health: dict[str, RegionHealth],
        serving: dict[str, set[str]],
        now: float,
    ) -> None:
        entries = await snapshot(self.bus, BUCKET_ROUTES)
        current = {k: decode(TenantRoute, e.value) for k, e in entries.items()}
        plan = plan_routes(
            tenants,
            regions,
            health,
            current,
            now,
            serves_traffic,
            lambda region, tenant: tenant in serving.get(region, set()),
        )
        if plan.changed or plan.removed:
            await self.confirm()
        for route in plan.changed:
            e = entries.get(route.tenant)
            if e is None:
                await self.bus.kv_create(BUCKET_ROUTES, route.tenant, encode(route))
            else:
                await self.bus.kv_update(
                    BUCKET_ROUTES, route.tenant, encode(route), last=e.revision
                )
            before = current.get(route.tenant)
            if before is None or (before.region, before.state) != (route.region, route.state):
                await self.store.audit(
                    FAILOVER_ACTOR,
                    "route.change",
                    f"tenant/{route.tenant}/route",
                    tenant=route.tenant,
                    before=before,
                    after=route,
                    detail=f"epoch {route.epoch}: {route.state} {route.region or '-'} "
                    f"({route.reason})",
                    msg_id=f"route:{route.tenant}:{route.epoch}",
                )
                log.info(
                    "route %s → %s %s (%s)", route.tenant, route.state, route.region, route.reason
                )
        for tenant in plan.removed:
            with contextlib.suppress(NotFound):
                await self.bus.kv_delete(BUCKET_ROUTES, tenant)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._tasks:
            return
        self._kick.set()
        self._tasks = [
            asyncio.create_task(
                run_on_kick(self._kick, self.options.period_s, self.run_once, what="failover"),
                name="kefu-failover",
            ),
            *(
                asyncio.create_task(kick_on_change(self.bus, b, self._kick), name=f"kefu-fo-{b}")
                for b in (BUCKET_REGISTRY, BUCKET_REGION_HEALTH)
            ),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        self._seen.clear()
