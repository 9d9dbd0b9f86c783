"""Rollouts in the control plane on the memory bus: start (baseline captured, one active per
tenant), the compiled split in the region's desired document, the controller stepping through
waves as simulated nodes report, commands, promote / rollback writing assignments, audit
deduplicated by message id, and a stale leader refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cp_support import ACTOR, new_version, seed_demo, shipped_packed, trust_with

from kefu.bus import MemoryBus, snapshot
from kefu.control_plane.leader import LeaderLease, StaleLeader
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.rollout_plan import RolloutError
from kefu.control_plane.rollouts import RolloutController
from kefu.control_plane.service import ControlPlane, ensure_layout
from kefu.keys import SigningKey
from kefu.rollout import BUCKET_ROLLOUTS, CAPABILITY_SPLIT, Step, Wave, active_key
from kefu.wire import (
    BUCKET_NODES,
    DesiredTenant,
    NodeStatus,
    ObservedTenant,
    decode,
    desired_bucket,
    encode,
)

TENANT = "demo-shop"


@pytest.fixture
async def cp(ops_key: SigningKey, tmp_path: Path) -> ControlPlane:
    bus = MemoryBus()
    await ensure_layout(bus)
    cp = ControlPlane(bus, trust=trust_with(ops_key))
    await seed_demo(cp, "r1")
    await cp.create_region("r2", actor=ACTOR)
    _, iv = shipped_packed("demo-shop-intent")
    _, sv = shipped_packed("sentiment")
    await cp.assign(
        TENANT,
        "r2",
        models={"intent": f"demo-shop-intent@{iv}", "sentiment": f"sentiment@{sv}"},
        actor=ACTOR,
    )
    await cp.publish_model(new_version(tmp_path, ops_key, "9.0.0"), actor=ACTOR)
    return cp


async def _leader(cp: ControlPlane) -> LeaderLease:
    lease = LeaderLease(cp.bus, "cp-1", ttl_s=30.0)
    assert await lease.step()
    return lease


def _steps() -> list[Step]:
    return [Step(weight=0.1, bake_s=0), Step(weight=1.0, bake_s=0)]


async def report_as_node(cp: ControlPlane, node: str, region: str, *, capable: bool = True) -> None:
    """A simulated node: reports the weight its region's desired document gives it."""
    e = await cp.bus.kv_get(desired_bucket(region), TENANT)
    seen = ObservedTenant(state="serving")
    if e is not None:
        doc = decode(DesiredTenant, e.value)
        if doc.split is not None and capable:
            seen = seen.model_copy(
                update={
                    "rollout_id": doc.split.rollout_id,
                    "canary_weight": doc.split.weight_for(node),
                }
            )
    status = NodeStatus(
        node_id=node,
        region=region,
        capabilities=[CAPABILITY_SPLIT] if capable else [],
        heartbeat_at=time.time(),
        tenants={TENANT: seen},
    )
    await cp.bus.kv_put(BUCKET_NODES, node, encode(status))


NODES = [("a1", "r1"), ("a2", "r1"), ("b1", "r2"), ("b2", "r2")]


async def _pass(cp: ControlPlane, ctl: RolloutController, rec: DesiredReconciler) -> None:
    await ctl.run_once()
    await rec.run_once()
    for node, region in NODES:
        await report_as_node(cp, node, region, capable=node != "a2")


async def test_start_captures_baseline_and_allows_one_active_rollout(cp: ControlPlane) -> None:
    ro = await cp.start_rollout(
        TENANT,
        models={"intent": "demo-shop-intent@9.0.0"},
        waves=[Wave(regions=["r1"]), Wave(regions=["r2"])],
        steps=_steps(),
        actor=ACTOR,
    )
    assert ro.baseline["r1"].models["intent"] != "demo-shop-intent@9.0.0"
    assert ro.target.models == {"intent": "demo-shop-intent@9.0.0"}
    held = await cp.bus.kv_get(BUCKET_ROLLOUTS, active_key(TENANT))
    assert held is not None and held.value.decode() == ro.id
    with pytest.raises(RolloutError, match=ro.id):
        await cp.start_rollout(
            TENANT,
            models={"intent": "demo-shop-intent@9.0.0"},
            waves=[Wave(regions=["r1"])],
            steps=_steps(),
            actor=ACTOR,
        )
    assert [r.id for r in await cp.list_rollouts(TENANT)] == [ro.id]
    assert (await cp.get_rollout(ro.id)).phase == "pending"
    with pytest.raises(RolloutError, match="not assigned"):
        await cp.create_tenant("other", actor=ACTOR)
        await cp.start_rollout(
            "other",
            models={"intent": "demo-shop-intent@9.0.0"},
            waves=[Wave(regions=["r1"])],
            steps=_steps(),
            actor=ACTOR,
        )


async def test_controller_steps_through_waves_and_promotes(cp: ControlPlane) -> None:
    lease = await _leader(cp)
    ctl = RolloutController(cp, term=lambda: lease.term, confirm=lease.confirm)
    rec = DesiredReconciler(cp.bus, confirm=lease.confirm)
    for node, region in NODES:
        await report_as_node(cp, node, region, capable=node != "a2")
    ro = await cp.start_rollout(
        TENANT,
        models={"intent": "demo-shop-intent@9.0.0"},
        waves=[Wave(regions=["r1"]), Wave(regions=["r2"], node_share=0.5)],
        steps=_steps(),
        actor=ACTOR,
    )
    await _pass(cp, ctl, rec)
    ro = await cp.get_rollout(ro.id)
    assert ro.phase == "running" and [m.node_id for m in ro.members] == ["a1"]
    assert ro.excluded_nodes == ["a2"] and ro.term == lease.term
    doc = decode(DesiredTenant, (await cp.bus.kv_get(desired_bucket("r1"), TENANT)).value)  # type: ignore[union-attr]
    assert doc.split is not None and doc.split.weights == {"a1": 0.1}
    assert doc.split.canary["intent"].ref == "demo-shop-intent@9.0.0"
    assert "demo-shop-intent@9.0.0" in {b.ref for b in doc.bundles()}
    r2 = decode(DesiredTenant, (await cp.bus.kv_get(desired_bucket("r2"), TENANT)).value)  # type: ignore[union-attr]
    assert r2.split is not None and r2.split.weights == {}  # outside the wave: baseline only
    for _ in range(12):
        await _pass(cp, ctl, rec)
        ro = await cp.get_rollout(ro.id)
        if ro.finalized:
            break
    assert ro.phase == "promoted" and ro.finalized
    assert {m.node_id for m in ro.members} == {"a1", "b1"}  # 50 % of r2
    for a in await cp.list_assignments(TENANT):
        assert a.models["intent"] == "demo-shop-intent@9.0.0"
    assert await cp.bus.kv_get(BUCKET_ROLLOUTS, active_key(TENANT)) is None
    await rec.run_once()
    doc = decode(DesiredTenant, (await cp.bus.kv_get(desired_bucket("r1"), TENANT)).value)  # type: ignore[union-attr]
    assert doc.split is None and doc.models["intent"].ref == "demo-shop-intent@9.0.0"
    events = [e for e in await cp.audit_log(tenant=TENANT) if e.action.startswith("rollout")]
    details = " | ".join(e.detail for e in events)
    assert "wave 2/2 begins in r2" in details and "promoting" in details
    assert "kept out of wave 1: a2" in details
    assert any(e.actor == "controller" and e.action == "assign" for e in await cp.audit_log())


async def test_rollback_restores_the_captured_baseline_at_once(cp: ControlPlane) -> None:
    lease = await _leader(cp)
    ctl = RolloutController(cp, term=lambda: lease.term, confirm=lease.confirm)
    rec = DesiredReconciler(cp.bus, confirm=lease.confirm)
    before = {a.region: a.models for a in await cp.list_assignments(TENANT)}
    for node, region in NODES:
        await report_as_node(cp, node, region)
    ro = await cp.start_rollout(
        TENANT,
        models={"intent": "demo-shop-intent@9.0.0"},
        waves=[Wave(regions=["r1", "r2"])],
        steps=[Step(weight=0.5, bake_s=3600)],
        actor=ACTOR,
    )
    for _ in range(2):
        await _pass(cp, ctl, rec)
    paused = await cp.command_rollout(ro.id, "pause", actor="bob", why="latency up")
    assert paused.phase == "paused"
    # Someone changes r1's assignment meanwhile: the rollback still returns the baseline.
    await cp.assign(TENANT, "r1", models={"intent": "demo-shop-intent@9.0.0"}, actor=ACTOR)
    rolled = await cp.command_rollout(ro.id, "rollback", actor="bob", why="errors")
    assert rolled.phase == "rolled_back"
    await rec.run_once()  # the compiled documents switch before the controller's writes
    for region in ("r1", "r2"):
        doc = decode(DesiredTenant, (await cp.bus.kv_get(desired_bucket(region), TENANT)).value)  # type: ignore[union-attr]
        assert doc.split is None and doc.models["intent"].ref == before[region]["intent"]
    await ctl.run_once()
    assert {a.region: a.models for a in await cp.list_assignments(TENANT)} == before
    assert (await cp.get_rollout(ro.id)).finalized
    with pytest.raises(RolloutError, match="already rolled_back"):
        await cp.command_rollout(ro.id, "resume", actor="bob")
    actions = [e.action for e in await cp.audit_log(tenant=TENANT)]
    assert "rollout.pause" in actions and "rollout.rollback" in actions


async def test_failover_resumes_at_the_same_step_and_a_stale_leader_changes_nothing(
    cp: ControlPlane,
) -> None:
    clock = [1000.0]
    old = LeaderLease(cp.bus, "cp-old", ttl_s=6.0, clock=lambda: clock[0])
    assert await old.step()
    first = RolloutController(
        cp, term=lambda: old.term, confirm=old.confirm, clock=lambda: clock[0]
    )
    rec = DesiredReconciler(cp.bus, confirm=old.confirm)
    for node, region in NODES:
        await report_as_node(cp, node, region)
    ro = await cp.start_rollout(
        TENANT,
        models={"intent": "demo-shop-intent@9.0.0"},
        waves=[Wave(regions=["r1"])],
        steps=[Step(weight=0.1, bake_s=3600), Step(weight=1.0, bake_s=0)],
        actor=ACTOR,
    )
    assert await first.run_once() == 1  # wave 1 begins at 10 % under the old leader
    await rec.run_once()
    for node, region in NODES:
        await report_as_node(cp, node, region)
    before = await cp.get_rollout(ro.id)
    assert (before.phase, before.wave, before.step, before.term) == ("running", 0, 0, old.term)
    # The old leader is paused past its lease; another replica takes over (term + 1).
    clock[0] += 60
    new = LeaderLease(cp.bus, "cp-new", ttl_s=6.0, clock=lambda: clock[0])
    assert await new.step() and new.term == old.term + 1
    fresh = RolloutController(
        cp, term=lambda: new.term, confirm=new.confirm, clock=lambda: clock[0]
    )
    assert await fresh.run_once() == 1  # sees the nodes serving 10 %: the bake starts
    after_new = await cp.get_rollout(ro.id)
    assert (after_new.wave, after_new.step, after_new.members) == (0, 0, before.members)
    assert after_new.term == new.term and after_new.converged_at == clock[0]
    # An operator rolls back; the stale leader (still believing its term) tries to finish it.
    after_new = await cp.command_rollout(ro.id, "rollback", actor="bob")
    stale = RolloutController(
        cp, term=lambda: old.term, confirm=old.confirm, clock=lambda: clock[0]
    )
    with pytest.raises(StaleLeader):
        await stale.run_once()
    with pytest.raises(StaleLeader):
        await old.confirm()
    stale_rec = DesiredReconciler(cp.bus, confirm=old.confirm)
    await cp.assign(TENANT, "r2", models={"intent": "demo-shop-intent@9.0.0"}, actor=ACTOR)
    with pytest.raises(StaleLeader):
        await stale_rec.run_once()
    assert await cp.get_rollout(ro.id) == after_new  # not finalized by the stale leader
    assert await fresh.run_once() == 1  # the real leader finishes it
    assert (await cp.get_rollout(ro.id)).finalized


async def test_audit_of_a_transition_is_stored_once(cp: ControlPlane) -> None:
    ro = await cp.start_rollout(
        TENANT,
        models={"intent": "demo-shop-intent@9.0.0"},
        waves=[Wave(regions=["r1"])],
        steps=_steps(),
        actor=ACTOR,
    )
    entries = await snapshot(cp.bus, BUCKET_ROLLOUTS, "r.>")
    rev = next(iter(entries.values())).revision
    for _ in range(2):  # a retried publish of the same decision
        await cp.audit(
            ACTOR,
            "rollout.start",
            f"tenant/{TENANT}/rollouts/{ro.id}",
            tenant=TENANT,
            msg_id=f"rollout:{ro.id}:{rev}",
        )
    starts = [e for e in await cp.audit_log(tenant=TENANT) if e.action == "rollout.start"]
    assert len(starts) == 1
