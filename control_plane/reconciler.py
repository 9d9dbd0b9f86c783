"""The leader's reconciler: keeps every region's desired-state bucket equal to the assignments.

Gathers inputs from the bus, asks the pure :func:`.desired.plan_desired` what to change, and
writes it. Triggered by a watch on the registry and assignment buckets (so a write through any
replica is seen), by :meth:`kick` after a local write, and every ``period_s`` as a safety net.
A restarted leader simply plans again from the buckets: nothing is remembered in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kefu.bus import Bus, NotFound, cancel_and_wait, snapshot
from kefu.control_plane.desired import (
    DeleteDesired,
    DesiredInputs,
    PutDesired,
    plan_desired,
)
from kefu.control_plane.leader import kick_on_change, run_on_kick
from kefu.errors import KefuError
from kefu.rollout import BUCKET_ROLLOUTS, Rollout
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_CONFIGS,
    BUCKET_MODELS,
    BUCKET_REGISTRY,
    Assignment,
    ConfigVersion,
    DesiredTenant,
    ModelVersion,
    RegionRecord,
    TenantRecord,
    config_key,
    decode,
    desired_bucket,
    encode,
)

__all__ = ["DesiredReconciler", "gather_inputs"]

log = logging.getLogger("kefu.control_plane.reconciler")


async def gather_inputs(bus: Bus) -> tuple[DesiredInputs, list[str]]:
    """Everything plan_desired needs, and the known regions."""
    registry = await snapshot(bus, BUCKET_REGISTRY)
    tenants: dict[str, TenantRecord] = {}
    regions: set[str] = set()
    for key, e in registry.items():
        if key.startswith("tenant."):
            t = decode(TenantRecord, e.value)
            tenants[t.id] = t
        elif key.startswith("region."):
            regions.add(decode(RegionRecord, e.value).id)
    assignments = [
        decode(Assignment, e.value) for e in (await snapshot(bus, BUCKET_ASSIGNMENTS)).values()
    ]
    wanted: set[tuple[str, int]] = set()
    for a in assignments:
        owner = tenants.get(a.tenant)
        if owner is not None:
            wanted.add((a.tenant, a.config_version or owner.current_config))
            regions.add(a.region)
    models = {}
    for e in (await snapshot(bus, BUCKET_MODELS)).values():
        mv = decode(ModelVersion, e.value)
        models[f"{mv.name}@{mv.version}"] = mv
    rollouts: dict[str, Rollout] = {}
    for key, e in (await snapshot(bus, BUCKET_ROLLOUTS, "r.>")).items():
        try:
            ro = decode(Rollout, e.value, what=f"rollout {key}")
        except KefuError as exc:
            log.error("%s", exc)
            continue
        if not ro.finalized and ro.phase != "pending":
            rollouts[ro.tenant] = ro  # at most one unfinished rollout per tenant
            # A config rollout needs its target and the regions' captured baselines.
            if ro.target.config_version:
                wanted.add((ro.tenant, ro.target.config_version))
                wanted |= {(ro.tenant, b.config_version) for b in ro.baseline.values()}
    configs: dict[tuple[str, int], ConfigVersion] = {}
    for tenant, version in sorted(wanted):
        found = await bus.kv_get(BUCKET_CONFIGS, config_key(tenant, version)) if version else None
        if found is not None:
            configs[(tenant, version)] = decode(ConfigVersion, found.value)
    inputs = DesiredInputs(
        tenants=tenants,
        assignments=assignments,
        configs=configs,
        models=models,
        rollouts=rollouts,
    )
    return inputs, sorted(regions)


async def _always() -> None:
    return None


class DesiredReconciler:
    def __init__(
        self,
        bus: Bus,
        *,
        period_s: float = 10.0,
        confirm: Callable[[], Awaitable[None]] = _always,
    ):
        self.bus = bus
        self.period_s = period_s
        #: Raises StaleLeader unless this replica still holds the lease: checked before writes.
        self.confirm = confirm
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.runs = 0
        self.writes = 0

    def kick(self) -> None:
        self._kick.set()

    async def run_once(self) -> int:
        """One reconcile pass; returns the number of documents written or deleted."""
        inputs, regions = await gather_inputs(self.bus)
        current: dict[tuple[str, str], str] = {}
        for region in regions:
            bucket = desired_bucket(region)
            await self.bus.ensure_kv(bucket, history=16)
            for tenant, e in (await snapshot(self.bus, bucket)).items():
                try:
                    current[(region, tenant)] = decode(DesiredTenant, e.value).fingerprint()
                except KefuError:
                    current[(region, tenant)] = ""  # unreadable: rewrite it
        actions = plan_desired(inputs, current)
        if actions:
            await self.confirm()  # a replica that lost the lease meanwhile writes nothing
        for action in actions:
            bucket = desired_bucket(action.region)
            if isinstance(action, PutDesired):
                await self.bus.kv_put(bucket, action.tenant, encode(action.doc))
                log.info(
                    "desired %s/%s → config v%d, models %s",
                    action.region,
                    action.tenant,
                    action.doc.config_version,
                    ", ".join(b.ref for b in action.doc.models.values()),
                )
            elif isinstance(action, DeleteDesired):
                with contextlib.suppress(NotFound):
                    await self.bus.kv_delete(bucket, action.tenant)
        self.runs += 1
        self.writes += len(actions)
        return len(actions)

    def start(self) -> None:
        if self._tasks:
            return
        self._kick.set()
        self._tasks = [
            asyncio.create_task(
                run_on_kick(self._kick, self.period_s, self.run_once, what="reconcile"),
                name="kefu-reconcile",
            ),
            *(
                asyncio.create_task(kick_on_change(self.bus, b, self._kick), name=f"kefu-watch-{b}")
                for b in (BUCKET_ASSIGNMENTS, BUCKET_REGISTRY, BUCKET_ROLLOUTS)
            ),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
