"""The leader's steady-state guard: gathers what :func:`kefu.control_plane.guard.plan` needs,
then carries its actions out idempotently, each one audited with its evidence.

Every pass: fold the telemetry that arrived since the stored cursor into the per tenant × region
× version counts (``kefu_guard`` bucket, ``stats.*``; the cursor under ``cursor``), note each
node's boot counter (``boots.<node>``), read the nodes, rollouts and what was already done
(``done.<hash of the action id>``) and plan. An action is marked done only after it was carried
out; the alert (its id as the message id) and the audit event (``msg_id``) are deduplicated by
the streams, so a pass interrupted in between and run again by a new leader acts once.

A crash-looping node is marked drained under ``drain.<node>`` (:func:`drained_nodes`; shown by
the API's node listing). Failed requests a node could not attribute to a model version (no
session yet) are counted for the version that served most of that tenant's turns in the same
batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kefu.bus import Bus, cancel_and_wait, snapshot
from kefu.control_plane.alerts import Alert, raise_alert
from kefu.control_plane.guard import (
    BUCKET_GUARD,
    BootHistory,
    Breach,
    DrainNode,
    GuardAction,
    GuardObserved,
    ReportRevert,
    RollBack,
    SteadyPolicy,
    VersionStats,
    fold,
    note_boots,
    plan,
    roll,
    stats_key,
)
from kefu.control_plane.leader import run_on_kick
from kefu.control_plane.service import ControlPlane
from kefu.errors import KefuError
from kefu.rollout import Rollout
from kefu.wire import (
    BUCKET_NODES,
    STREAM_TELEMETRY,
    NodeStatus,
    TelemetryBatch,
    decode,
)

__all__ = ["GuardController", "done_key", "drained_nodes"]

log = logging.getLogger("kefu.control_plane.guard")

ACTOR = "guard"
#: Telemetry messages folded per pass at most (the next pass continues).
MAX_FOLD = 20_000


def done_key(action_id: str) -> str:
    return "done." + hashlib.sha256(action_id.encode()).hexdigest()[:32]


class _Done:
    """The done markers, asked by action id."""

    def __init__(self, keys: set[str]):
        self.keys = keys

    def __contains__(self, action_id: object) -> bool:
        return isinstance(action_id, str) and done_key(action_id) in self.keys


async def drained_nodes(bus: Bus) -> dict[str, dict[str, Any]]:
    """node id → its drain record (who, when, why)."""
    entries = await snapshot(bus, BUCKET_GUARD, "drain.>")
    return {k.removeprefix("drain."): json.loads(e.value) for k, e in entries.items()}


class GuardController:
    def __init__(
        self,
        cp: ControlPlane,
        *,
        policy: SteadyPolicy | None = None,
        confirm: Callable[[], Awaitable[None]],
        period_s: float = 5.0,
        bootstrap_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.cp = cp
        self.bus: Bus = cp.bus
        self.policy = policy or SteadyPolicy()
        self.confirm = confirm
        self.period_s = period_s
        #: With no cursor yet (a fresh deployment): how much past telemetry makes the baseline.
        self.bootstrap_s = bootstrap_s
        self.clock = clock
        self.runs = 0
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def kick(self) -> None:
        self._kick.set()

    # ------------------------------------------------------------------ observe

    async def _stats(self, now: float) -> list[VersionStats]:
        entries = await snapshot(self.bus, BUCKET_GUARD, "stats.>")
        stats = {k: decode(VersionStats, e.value, what=k) for k, e in entries.items()}
        cursor_e = await self.bus.kv_get(BUCKET_GUARD, "cursor")
        cursor = int(cursor_e.value) if cursor_e is not None else 0
        if cursor:
            msgs = await self.bus.stream_read(
                STREAM_TELEMETRY, since_seq=cursor + 1, limit=MAX_FOLD
            )
        else:
            msgs = await self.bus.stream_read(
                STREAM_TELEMETRY, since=now - self.bootstrap_s, limit=MAX_FOLD
            )
        changed: set[str] = set()
        for m in msgs:
            if m.seq <= cursor:
                continue
            cursor = m.seq
            try:
                batch = decode(TelemetryBatch, m.data, what="telemetry batch")
            except KefuError as exc:
                log.warning("guard: skipping telemetry message %d: %s", m.seq, exc)
                continue
            for key in self._fold_batch(stats, batch):
                changed.add(key)
        for key, s in list(stats.items()):
            rolled = roll(s, now, self.policy.window_s)
            if rolled != s:
                stats[key] = rolled
                changed.add(key)
        for key in sorted(changed):
            await self.bus.kv_put(BUCKET_GUARD, key, stats[key].model_dump_json().encode())
        if msgs:
            await self.bus.kv_put(BUCKET_GUARD, "cursor", str(cursor).encode())
        return list(stats.values())

    @staticmethod
    def _fold_batch(stats: dict[str, VersionStats], batch: TelemetryBatch) -> list[str]:
        main: dict[str, str] = {}  # tenant → the version that served most turns in the batch
        best: dict[str, int] = {}
        for a in batch.aggregates:
            if a.model_version and a.turns > best.get(a.tenant, -1):
                main[a.tenant], best[a.tenant] = a.model_version, a.turns
        keys = []
        for a in batch.aggregates:
            version = a.model_version or main.get(a.tenant, "")
            if not version or not a.tenant or a.tenant == "-":
                continue
            key = stats_key(a.tenant, batch.region, version)
            cur = stats.get(key) or VersionStats(
                tenant=a.tenant, region=batch.region, version=version
            )
            stats[key] = fold(cur, a)
            keys.append(key)
        return keys

    async def _boots(self, nodes: list[NodeStatus], now: float) -> dict[str, BootHistory]:
        out = {}
        saved = await snapshot(self.bus, BUCKET_GUARD, "boots.>")  # one read, not one per node
        for n in nodes:
            key = f"boots.{n.node_id}"
            e = saved.get(key)
            h = decode(BootHistory, e.value, what=key) if e else BootHistory(node_id=n.node_id)
            new = note_boots(h, n.boots, now, self.policy.crash_loop_window_s) if n.boots else h
            if new != h:
                await self.bus.kv_put(BUCKET_GUARD, key, new.model_dump_json().encode())
            out[n.node_id] = new
        return out

    async def observe(self, now: float) -> GuardObserved:
        nodes = [
            decode(NodeStatus, e.value) for e in (await snapshot(self.bus, BUCKET_NODES)).values()
        ]
        stats = await self._stats(now)
        boots = await self._boots(nodes, now)
        rollouts: dict[str, list[Rollout]] = {}
        for ro in await self.cp.list_rollouts():
            rollouts.setdefault(ro.tenant, []).append(ro)
        done = set(await self.bus.kv_keys(BUCKET_GUARD, "done.>"))
        drained = set((await drained_nodes(self.bus)).keys())
        return GuardObserved(
            nodes=nodes,
            stats=stats,
            boots=boots,
            rollouts=rollouts,
            done=_Done(done),
            drained=frozenset(drained),
        )

    # ------------------------------------------------------------------ act

    async def run_once(self) -> list[GuardAction]:
        await self.confirm()
        now = self.clock()
        actions = plan(await self.observe(now), now, self.policy)
        for a in actions:
            await self.confirm()
            await self.execute(a, now)
        self.runs += 1
        return actions

    async def execute(self, a: GuardAction, now: float) -> None:
        if isinstance(a, ReportRevert):
            r = a.revert
            detail = r.model_dump() | {"node_id": a.node_id, "region": a.region}
            await raise_alert(
                self.bus,
                Alert(
                    id=a.id,
                    kind="guard",
                    severity="warning",
                    at=r.at,
                    tenant=r.tenant,
                    resource=f"node/{a.node_id}",
                    title=(
                        f"node {a.node_id} reverted {r.tenant} from {r.bad_version} to "
                        f"{r.reverted_to} ({r.errors} of {r.turns} requests failed) / "
                        f"节点自动回退了失败的新版本"
                    ),
                    detail=detail,
                ),
            )
            await self._audit("guard.node_revert", f"nodes/{a.node_id}", r.tenant, detail, a.id)
        elif isinstance(a, Breach):
            await raise_alert(
                self.bus,
                Alert(
                    id=a.id,
                    kind="guard",
                    severity="critical" if a.kind == "crash_loop" else "warning",
                    at=now,
                    tenant=a.tenant,
                    resource=f"region/{a.region}",
                    title=a.title,
                    detail={"finding": a.kind, **a.evidence},
                ),
            )
            detail = {"id": a.id, "finding": a.kind, "region": a.region, **a.evidence}
            await self._audit(f"guard.{a.kind}", f"regions/{a.region}", a.tenant, detail, a.id)
        elif isinstance(a, RollBack):
            for region, base in a.regions.items():
                await self.cp.assign(
                    a.tenant,
                    region,
                    models=base.get("models") or None,
                    config_version=base.get("config_version") or None,
                    actor=ACTOR,
                )
            detail = {"rollout_id": a.rollout_id, "because": a.because, "regions": a.regions}
            await self._audit(
                "guard.rollback",
                f"tenant/{a.tenant}/rollouts/{a.rollout_id}",
                a.tenant,
                detail,
                a.id,
            )
            await raise_alert(
                self.bus,
                Alert(
                    id=a.id,
                    kind="guard",
                    severity="critical",
                    at=now,
                    tenant=a.tenant,
                    resource=f"rollout/{a.rollout_id}",
                    title=(
                        f"{a.tenant}: rolled back rollout {a.rollout_id} ({a.because}) / "
                        f"稳态守护：已回滚最近的灰度发布"
                    ),
                    detail=detail,
                ),
            )
        elif isinstance(a, DrainNode):
            record = {"node_id": a.node_id, "region": a.region, "at": now, "because": a.because}
            await self.bus.kv_put(BUCKET_GUARD, f"drain.{a.node_id}", json.dumps(record).encode())
            await self._audit("guard.drain", f"nodes/{a.node_id}", "", record, a.id)
        await self.bus.kv_put(BUCKET_GUARD, done_key(a.id), a.id.encode())
        log.warning("guard: %s", a.id)

    async def _audit(
        self, action: str, resource: str, tenant: str, detail: dict[str, Any], action_id: str
    ) -> None:
        await self.cp.audit(
            ACTOR,
            action,
            resource,
            tenant=tenant,
            detail=json.dumps(
                {"id": action_id, **detail}, ensure_ascii=False, sort_keys=True, default=str
            ),
            msg_id=f"guard:{hashlib.sha256(action_id.encode()).hexdigest()[:32]}",
        )

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        if self._tasks:
            return
        self._kick.set()
        self._tasks = [
            # Node reports and telemetry are read every period_s (not watched: a fleet's
            # heartbeats would re-run the planner many times a second for nothing).
            asyncio.create_task(
                run_on_kick(self._kick, self.period_s, self.run_once, what="steady-state guard"),
                name="kefu-guard",
            ),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
