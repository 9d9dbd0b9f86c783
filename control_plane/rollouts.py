"""Staged rollouts in the control plane: the operators' side and the leader's controller.

:class:`RolloutOps` (part of :class:`~kefu.control_plane.service.ControlPlane`) starts,
lists, shows and commands rollouts. A start resolves the target to concrete versions, captures
the baseline from the tenant's assignments, takes ``active.<tenant>`` with a create (so two
concurrent starts cannot both win) and writes ``r.<tenant>.<id>``; a command is a
compare-and-set on the rollout's revision. Every change goes to the audit stream with a message
id naming the rollout revision it produced, so a retried publish is stored once.

:class:`RolloutController` runs in the leader only. Each pass reads every unfinished rollout
and the nodes' status, asks the pure :func:`~kefu.control_plane.rollout_plan.plan` what to do,
and executes it idempotently: the rollout is written first (compare-and-set on its revision,
stamped with the leader's term), then the assignments, then the rollout is marked finalized.
Before any write the controller confirms its lease (holder and term) in the bus; a rollout
already written by a higher term is refused — a stale leader can change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from kefu.bus import Bus, Conflict, NotFound, cancel_and_wait, snapshot
from kefu.config import parse_tenant_config
from kefu.control_plane.alerts import Alert, raise_alert
from kefu.control_plane.canary import CanaryPolicy, Verdict, analyse
from kefu.control_plane.canary_store import (
    CanaryFolder,
    StoredVerdict,
    UnknownPolicy,
    load_policy,
    load_totals,
    save_policy,
    save_verdict,
)
from kefu.control_plane.catalog import Catalog
from kefu.control_plane.leader import StaleLeader, kick_on_change, run_on_kick
from kefu.control_plane.rollout_plan import (
    NodeFacts,
    Plan,
    ReleaseActive,
    RolloutError,
    SetModels,
    apply_command,
    check_config_target,
    plan,
    start_rollout,
)
from kefu.control_plane.state import NotFoundError, StateStore
from kefu.errors import KefuError
from kefu.rollout import (
    BUCKET_ROLLOUTS,
    CAPABILITY_SPLIT,
    Rollout,
    Step,
    Wave,
    active_key,
    rollout_key,
)
from kefu.wire import (
    BUCKET_ASSIGNMENTS,
    BUCKET_NODES,
    Assignment,
    NodeStatus,
    assignment_key,
    check_id,
    decode,
    encode,
)

__all__ = ["RolloutController", "RolloutOps", "StaleLeader"]

log = logging.getLogger("kefu.control_plane.rollouts")


class RolloutOps(Catalog):
    async def start_rollout(
        self,
        tenant: str,
        *,
        models: Mapping[str, str],
        waves: Sequence[Wave],
        steps: Sequence[Step],
        actor: str,
        reason: str = "",
        config_version: int = 0,
        policy: str = "",
    ) -> Rollout:
        rec = await self._tenant(tenant)
        if policy:
            await load_policy(self.bus, policy)  # refuses an unknown name before anything
        concrete: dict[str, str] = {}
        for slot, ref in models.items():
            mv = await self.get_model(ref)  # ``name`` alone = its newest published version
            concrete[slot] = f"{mv.name}@{mv.version}"
        entries = await snapshot(self.bus, BUCKET_ASSIGNMENTS, f"{tenant}.*")
        assignments = [decode(Assignment, e.value) for e in entries.values()]
        for region in {r for w in waves for r in w.regions}:
            await self._region(region)
        ro = start_rollout(
            tenant=tenant,
            target=concrete,
            target_config=config_version,
            current_config=rec.current_config,
            waves=waves,
            steps=steps,
            assignments=assignments,
            actor=actor,
            now=time.time(),
        )
        if config_version:
            cv = await self.get_config(tenant, config_version)
            source = f"{tenant}@v{config_version}"
            config = await asyncio.to_thread(parse_tenant_config, cv.yaml, source=source)
            check_config_target(config, ro, assignments)
        if reason:
            ro = ro.model_copy(update={"reason": reason})
        if policy:
            ro = ro.model_copy(update={"policy": policy})
        try:
            await self.bus.kv_create(BUCKET_ROLLOUTS, active_key(tenant), ro.id.encode())
        except Conflict as exc:
            held = await self.bus.kv_get(BUCKET_ROLLOUTS, active_key(tenant))
            other = held.value.decode() if held is not None else "?"
            raise RolloutError(
                f"tenant {tenant!r} already has rollout {other} in progress: finish, roll back "
                f"or abort it first / 租户已有进行中的灰度发布 {other}"
            ) from exc
        rev = await self.bus.kv_create(BUCKET_ROLLOUTS, rollout_key(tenant, ro.id), encode(ro))
        await self.audit(
            actor,
            "rollout.start",
            f"tenant/{tenant}/rollouts/{ro.id}",
            tenant=tenant,
            after=ro,
            detail=ro.describe() + (f": {reason}" if reason else ""),
            msg_id=f"rollout:{ro.id}:{rev}",
        )
        self.on_change()
        return ro

    async def list_rollouts(self, tenant: str = "", *, active_only: bool = False) -> list[Rollout]:
        pattern = f"r.{check_id(tenant, 'tenant')}.*" if tenant else "r.>"
        entries = await snapshot(self.bus, BUCKET_ROLLOUTS, pattern)
        out = [decode(Rollout, e.value, what=f"rollout {k}") for k, e in entries.items()]
        if active_only:
            out = [r for r in out if r.active]
        return sorted(out, key=lambda r: (r.created_at, r.id))

    async def _find_rollout(self, rollout_id: str) -> tuple[str, Rollout, int]:
        if not rollout_id.startswith("ro-") or not rollout_id[3:].isalnum():
            raise RolloutError(f"invalid rollout id {rollout_id!r} / 灰度发布编号无效")
        entries = await snapshot(self.bus, BUCKET_ROLLOUTS, f"r.*.{rollout_id}")
        for key, e in entries.items():
            return key, decode(Rollout, e.value, what=f"rollout {key}"), e.revision
        raise NotFoundError(f"no rollout {rollout_id!r} / 灰度发布 {rollout_id!r} 不存在")

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return (await self._find_rollout(rollout_id))[1]

    async def set_canary_policy(self, policy: CanaryPolicy, *, actor: str) -> CanaryPolicy:
        """Store a named canary-analysis policy (new, or replacing a stored or built-in one);
        audited with the digests before and after and the policy itself."""
        try:
            before: CanaryPolicy | None = await load_policy(self.bus, policy.name)
        except UnknownPolicy:
            before = None
        await save_policy(self.bus, policy)
        await self.audit(
            actor,
            "canary_policy.set",
            f"canary_policies/{policy.name}",
            before=before,
            after=policy,
            detail=json.dumps(policy.model_dump(), ensure_ascii=False, sort_keys=True),
        )
        return policy

    async def command_rollout(
        self, rollout_id: str, command: str, *, actor: str, why: str = ""
    ) -> Rollout:
        """``pause``, ``resume``, ``promote``, ``rollback`` or ``abort`` (compare-and-set)."""
        key, _, _ = await self._find_rollout(rollout_id)
        for _ in range(8):
            _, ro, rev = await self._find_rollout(rollout_id)
            new = apply_command(ro, command, actor=actor, now=time.time(), why=why)
            try:
                rev = await self.bus.kv_update(BUCKET_ROLLOUTS, key, encode(new), last=rev)
            except Conflict:
                continue  # the controller moved it meanwhile: apply to the newer state
            await self.audit(
                actor,
                f"rollout.{command}",
                f"tenant/{ro.tenant}/rollouts/{ro.id}",
                tenant=ro.tenant,
                before=ro,
                after=new,
                detail=new.reason,
                msg_id=f"rollout:{ro.id}:{rev}",
            )
            self.on_change()
            return new
        raise Conflict(f"rollout {rollout_id}: too many concurrent writers / 并发写入过多，请重试")


def node_facts(
    statuses: Sequence[NodeStatus], tenant: str, *, now: float, fresh_s: float
) -> list[NodeFacts]:
    """What the planner needs of each node's status for one tenant."""
    out = []
    for s in statuses:
        seen = s.tenants.get(tenant)
        out.append(
            NodeFacts(
                node_id=s.node_id,
                region=s.region,
                capable=CAPABILITY_SPLIT in s.capabilities,
                fresh=now - s.heartbeat_at <= fresh_s,
                rollout_id=seen.rollout_id if seen is not None else "",
                weight=seen.canary_weight if seen is not None else 0.0,
                error=seen.error if seen is not None else "",
            )
        )
    return out


def verdict_alert(ro: Rollout, verdict: Verdict) -> Alert:
    """The alert a rollback or pause by the canary analysis raises (one per rollout and kind)."""
    srm = any(s.mismatch for s in verdict.srm) and verdict.action == "pause"
    kind = "rollback" if verdict.action == "rollback" else "srm" if srm else "inconclusive"
    title = {
        "rollback": f"canary of {ro.tenant} rolled back / {ro.tenant} 金丝雀已自动回滚",
        "srm": f"sample ratio mismatch in rollout of {ro.tenant}: paused / 样本比例失衡，已暂停",
        "inconclusive": f"rollout of {ro.tenant} inconclusive: paused / 结论不明，已暂停",
    }[kind]
    return Alert(
        id=f"{kind}:{ro.id}:{ro.wave}:{ro.step}",
        kind=kind,
        severity="critical" if kind == "rollback" else "warning",
        tenant=ro.tenant,
        resource=f"tenant/{ro.tenant}/rollouts/{ro.id}",
        title=title,
        detail={"rollout_id": ro.id, "reasons": verdict.reasons, "evidence": verdict.to_json()},
    )


class RolloutController:
    """The leader's executor of rollout plans (see the module text)."""

    def __init__(
        self,
        store: StateStore,
        *,
        term: Callable[[], int],
        confirm: Callable[[], Awaitable[None]],
        period_s: float = 1.0,
        fresh_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.bus: Bus = store.bus
        self.term = term
        #: Raises :class:`StaleLeader` unless this replica still holds the lease of ``term()``.
        self.confirm = confirm
        self.period_s = period_s
        self.fresh_s = fresh_s
        self.clock = clock
        self.runs = 0
        self.folder = CanaryFolder(self.bus)
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def kick(self) -> None:
        self._kick.set()

    async def run_once(self) -> int:
        """One pass over every unfinished rollout; returns how many it changed."""
        entries = await snapshot(self.bus, BUCKET_ROLLOUTS, "r.>")
        statuses = [
            decode(NodeStatus, e.value) for e in (await snapshot(self.bus, BUCKET_NODES)).values()
        ]
        changed = 0
        now = self.clock()
        for key, e in sorted(entries.items()):
            try:
                ro = decode(Rollout, e.value, what=f"rollout {key}")
            except KefuError as exc:
                log.error("%s", exc)
                continue
            if ro.finalized:
                continue
            facts = node_facts(statuses, ro.tenant, now=now, fresh_s=self.fresh_s)
            verdict = await self._judge(ro, facts, now) if ro.policy else None
            p = plan(ro, facts, now, verdict)
            if p.changed:
                await self.execute(key, ro, e.revision, p)
                changed += 1
                if verdict is not None and verdict.action != "continue":
                    await self._evidence(ro, verdict, p)
        self.runs += 1
        return changed

    async def _judge(self, ro: Rollout, facts: Sequence[NodeFacts], now: float) -> Verdict | None:
        """The canary analysis of a running rollout (None: not running, nothing to judge)."""
        if ro.phase != "running":
            return None
        await self.folder.poll_once()
        totals = await load_totals(self.bus, ro.id)
        policy = await load_policy(self.bus, ro.policy)
        members = {m.node_id for m in ro.members}
        refusing = [f.node_id for f in facts if f.node_id in members and f.error]
        verdict = analyse(
            list(totals.rows.values()),
            policy,
            step_age_s=now - ro.converged_at if ro.converged_at else 0.0,
            bake_s=policy.bake_for(ro.steps[ro.step].bake_s),
            refusing_nodes=refusing,
        )
        await save_verdict(
            self.bus,
            StoredVerdict(
                rollout_id=ro.id,
                at=now,
                policy=policy.name,
                action=verdict.action,
                reasons=verdict.reasons,
                evidence=verdict.to_json(),
            ),
        )
        return verdict

    async def _evidence(self, ro: Rollout, verdict: Verdict, p: Plan) -> None:
        """The verdict that moved the rollout, with its evidence, in the audit stream."""
        await self.store.audit(
            "controller",
            f"rollout.analysis.{verdict.action}",
            f"tenant/{ro.tenant}/rollouts/{ro.id}",
            tenant=ro.tenant,
            detail=json.dumps(verdict.to_json(), ensure_ascii=False, sort_keys=True),
            msg_id=f"analysis:{ro.id}:{p.next.updated_at}:{verdict.action}",
        )
        if verdict.action in ("rollback", "pause"):
            await raise_alert(self.bus, verdict_alert(ro, verdict))

    async def _guard(self, ro: Rollout) -> int:
        term = self.term()
        if ro.term > term:
            raise StaleLeader(
                f"rollout {ro.id} was written in term {ro.term}, this replica leads term {term}"
            )
        await self.confirm()
        return term

    async def execute(self, key: str, ro: Rollout, revision: int, p: Plan) -> None:
        """Write the plan: the rollout (CAS + term), its assignments, then ``finalized``.
        Every step is idempotent, so a crash in between is finished by the next pass."""
        term = await self._guard(ro)
        nxt = p.next.model_copy(update={"term": term, "finalized": False})
        rev = await self.bus.kv_update(BUCKET_ROLLOUTS, key, encode(nxt), last=revision)
        for i, reason in enumerate(p.reasons):
            await self.store.audit(
                "controller",
                "rollout.step",
                f"tenant/{ro.tenant}/rollouts/{ro.id}",
                tenant=ro.tenant,
                before=ro,
                after=nxt,
                detail=f"{reason} (term {term})",
                msg_id=f"rollout:{ro.id}:{rev}:{i}",
            )
        if not p.next.finalized:
            return
        for action in p.actions:
            await self._guard(nxt)
            if isinstance(action, SetModels):
                await self._set_models(ro, action, term)
            elif isinstance(action, ReleaseActive):
                held = await self.bus.kv_get(BUCKET_ROLLOUTS, active_key(action.tenant))
                if held is not None and held.value.decode() == ro.id:
                    with contextlib.suppress(NotFound):
                        await self.bus.kv_delete(BUCKET_ROLLOUTS, active_key(action.tenant))
        await self._guard(nxt)
        done = nxt.model_copy(update={"finalized": True})
        await self.bus.kv_update(BUCKET_ROLLOUTS, key, encode(done), last=rev)

    async def _set_models(self, ro: Rollout, action: SetModels, term: int) -> None:
        key = assignment_key(ro.tenant, action.region)
        for _ in range(8):
            e = await self.bus.kv_get(BUCKET_ASSIGNMENTS, key)
            if e is None:
                log.warning("rollout %s: %s has no assignment any more", ro.id, key)
                return
            old = decode(Assignment, e.value)
            models = {**old.models, **action.models}
            cfg = old.config_version if action.config_version is None else action.config_version
            if models == old.models and cfg == old.config_version:
                return
            new = old.model_copy(
                update={
                    "models": models,
                    "config_version": cfg,
                    "updated_at": self.clock(),
                    "updated_by": "controller",
                }
            )
            try:
                rev = await self.bus.kv_update(
                    BUCKET_ASSIGNMENTS, key, encode(new), last=e.revision
                )
            except Conflict:
                continue
            await self.store.audit(
                "controller",
                "assign",
                f"tenant/{ro.tenant}/regions/{action.region}",
                tenant=ro.tenant,
                before=old,
                after=new,
                detail=f"rollout {ro.id} {ro.phase} (term {term}): "
                + ", ".join(f"{k}={v}" for k, v in sorted(models.items())),
                msg_id=f"assign:{key}:{rev}",
            )
            return
        raise Conflict(f"{key}: too many concurrent writers / 并发写入过多")

    def start(self) -> None:
        if self._tasks:
            return
        self._kick.set()
        self._tasks = [
            asyncio.create_task(
                run_on_kick(self._kick, self.period_s, self.run_once, what="rollout controller"),
                name="kefu-rollouts",
            ),
            # Node reports are read every period_s (not watched: a fleet's heartbeats would
            # re-run the planner many times a second for nothing).
            asyncio.create_task(
                kick_on_change(self.bus, BUCKET_ROLLOUTS, self._kick), name="kefu-watch-rollouts"
            ),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
