"""The steady-state guard: the pure planner (telemetry folded into a live window and the same
version's trailing baseline, always-valid tests, latency objective, crash loops, recent
rollouts) and, on a real nats-server with the control plane, the leader's executor acting once
per finding: alert, audit with evidence, roll back the recently promoted rollout, mark a
crash-looping node drained."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cp_support import CpStack, control_plane, cp_node, seed_demo, shipped_packed, trust_with

from kefu.control_plane.alerts import list_alerts
from kefu.control_plane.guard import (
    BootHistory,
    Breach,
    Counts,
    GuardObserved,
    ReportRevert,
    RollBack,
    SteadyPolicy,
    VersionStats,
    fold,
    note_boots,
    plan,
    roll,
)
from kefu.control_plane.guard_controller import GuardController, drained_nodes
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rollout import RegionBaseline, Rollout, RolloutTarget, Step, Wave
from kefu.wire import (
    LATENCY_BOUNDS_MS,
    GuardRevert,
    NodeStatus,
    TelemetryAggregate,
    TelemetryBatch,
    encode,
    telemetry_subject,
)

POLICY = SteadyPolicy(window_s=300, min_turns=100, crash_loop_restarts=3, rollback_within_s=600)
NOW = 1_000_000.0


def counts(turns: int, errors: int = 0, *, slow: int = 0, corrections: int = 0, wrong: int = 0):  # type: ignore[no-untyped-def]
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[2] = turns - slow  # 25 ms
    buckets[-1] = slow  # over 1 s
    return Counts(
        turns=turns, errors=errors, corrections=corrections, wrong=wrong, latency_buckets=buckets
    )


def stats(base: Counts, live: Counts) -> VersionStats:
    return VersionStats(
        tenant="shop", region="r1", version="intent@2", baseline=base, live={str(NOW - 60): live}
    )


def kinds(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [a.kind if isinstance(a, Breach) else type(a).__name__ for a in actions]


def test_fold_and_roll_keep_a_live_window_and_a_trailing_baseline() -> None:
    s = VersionStats(tenant="shop", region="r1", version="v2")
    for at, turns, errors in ((NOW - 900, 10, 1), (NOW - 30, 5, 2)):
        s = fold(
            s,
            TelemetryAggregate(
                tenant="shop",
                scenario="",
                model_version="v2",
                window_start=at,
                window_s=10,
                turns=turns,
                errors=errors,
            ),
        )
    assert s.first_seen == NOW - 900 and len(s.live) == 2
    s = roll(s, NOW, 300)
    # Failed requests are requests too: 10 answered + 1 failed.
    assert (s.baseline.turns, s.baseline.errors) == (11, 1)
    assert [(c.turns, c.errors) for c in s.live.values()] == [(7, 2)]


def test_an_error_rate_up_significantly_alerts_a_steady_one_does_not() -> None:
    same = plan(GuardObserved(stats=[stats(counts(5000, 50), counts(500, 6))]), NOW, POLICY)
    assert same == []
    up = plan(GuardObserved(stats=[stats(counts(5000, 50), counts(500, 100))]), NOW, POLICY)
    assert kinds(up) == ["error"]
    b = up[0]
    assert isinstance(b, Breach) and b.evidence["worse"] and b.evidence["canary_rate"] == 0.2
    assert "1.0%" in b.title and "20.0%" in b.title
    # Too few requests in the live window: no verdict, however bad.
    few = plan(GuardObserved(stats=[stats(counts(5000, 50), counts(20, 20))]), NOW, POLICY)
    assert few == []


def test_wrong_intent_and_latency_objective() -> None:
    wrong = stats(counts(5000, corrections=1000, wrong=50), counts(500, corrections=200, wrong=60))
    assert kinds(plan(GuardObserved(stats=[wrong]), NOW, POLICY)) == ["wrong_intent"]
    slow = stats(counts(5000, slow=10), counts(500, slow=100))
    assert kinds(plan(GuardObserved(stats=[slow]), NOW, POLICY)) == ["latency"]
    # Always slow: not an anomaly of this version (the rollout analysis judges new versions).
    always = stats(counts(5000, slow=1000), counts(500, slow=100))
    assert plan(GuardObserved(stats=[always]), NOW, POLICY) == []


def node(node_id: str = "n1", boots: int = 1, guard: list[GuardRevert] | None = None) -> NodeStatus:
    return NodeStatus(node_id=node_id, region="r1", boots=boots, guard=guard or [])


def test_a_crash_loop_alerts_and_drains_the_node_once() -> None:
    h = BootHistory(node_id="n1")
    for i, at in enumerate((NOW - 2000, NOW - 200, NOW - 100, NOW - 50, NOW - 40)):
        h = note_boots(h, i + 1, at, POLICY.crash_loop_window_s)
    h = note_boots(h, 5, NOW, POLICY.crash_loop_window_s)  # unchanged: not a new entry
    assert [b for _, b in h.seen] == [1, 2, 3, 4, 5]
    obs = GuardObserved(nodes=[node(boots=5)], boots={"n1": h})
    actions = plan(obs, NOW, POLICY)
    assert kinds(actions) == ["DrainNode", "crash_loop"]
    assert actions[1].evidence["restarts"] == 4  # type: ignore[union-attr]
    done = frozenset(a.id for a in actions)
    assert plan(GuardObserved(nodes=obs.nodes, boots=obs.boots, done=done), NOW, POLICY) == []
    drained = GuardObserved(nodes=obs.nodes, boots=obs.boots, drained=frozenset({"n1"}))
    assert kinds(plan(drained, NOW, POLICY)) == ["crash_loop"]
    # Two restarts in the window: below the threshold.
    calm = BootHistory(node_id="n1", seen=[(NOW - 2000, 1), (NOW - 100, 2), (NOW - 50, 3)])
    assert plan(GuardObserved(nodes=[node(boots=3)], boots={"n1": calm}), NOW, POLICY) == []


def revert(id_: str = "guard-n1-shop-1") -> GuardRevert:
    return GuardRevert(
        id=id_,
        tenant="shop",
        slot="intent",
        bad_version="intent@3",
        reverted_to="intent@2",
        turns=20,
        errors=20,
        applied_at=NOW - 100,
        at=NOW - 90,
    )


def test_node_reverts_are_reported_once() -> None:
    obs = GuardObserved(nodes=[node(guard=[revert()])])
    (a,) = plan(obs, NOW, POLICY)
    assert isinstance(a, ReportRevert) and (a.node_id, a.revert.bad_version) == ("n1", "intent@3")
    assert plan(GuardObserved(nodes=obs.nodes, done=frozenset({a.id})), NOW, POLICY) == []


def rollout(phase: str, updated_at: float) -> Rollout:
    return Rollout(
        id="ro-abcdef12",
        tenant="shop",
        target=RolloutTarget(models={"intent": "intent@2"}),
        waves=[Wave(regions=["r1"])],
        steps=[Step(weight=1.0)],
        baseline={"r1": RegionBaseline(models={"intent": "intent@1"}, config_version=4)},
        phase=phase,  # type: ignore[arg-type]
        finalized=True,
        updated_at=updated_at,
    )


def test_a_finding_rolls_back_a_rollout_promoted_within_the_period() -> None:
    bad = [stats(counts(5000, 50), counts(500, 100))]
    recent = GuardObserved(stats=bad, rollouts={"shop": [rollout("promoted", NOW - 300)]})
    actions = plan(recent, NOW, POLICY)
    assert kinds(actions) == ["error", "RollBack"]
    rb = actions[1]
    assert isinstance(rb, RollBack) and rb.rollout_id == "ro-abcdef12"
    assert rb.regions == {"r1": {"models": {"intent": "intent@1"}, "config_version": 4}}
    old = GuardObserved(stats=bad, rollouts={"shop": [rollout("promoted", NOW - 6000)]})
    assert kinds(plan(old, NOW, POLICY)) == ["error"]
    rolled = GuardObserved(stats=bad, rollouts={"shop": [rollout("rolled_back", NOW - 10)]})
    assert kinds(plan(rolled, NOW, POLICY)) == ["error"]
    done = frozenset(a.id for a in actions)
    assert plan(GuardObserved(stats=bad, rollouts=recent.rollouts, done=done), NOW, POLICY) == []


def test_the_policy_refuses_nonsense() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SteadyPolicy(window_s=0)
    with pytest.raises(ValidationError):
        SteadyPolicy(typo=1)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- leader, real NATS


@asynccontextmanager
async def guard_on(
    stack: CpStack, policy: SteadyPolicy, clock: float = 0.0
) -> AsyncIterator[GuardController]:
    async def confirm() -> None:
        await stack.lease.confirm()

    for _ in range(50):
        if await stack.lease.step():
            break
        await asyncio.sleep(0.1)
    guard = GuardController(
        stack.cp,
        policy=policy,
        confirm=confirm,
        period_s=3600,
        clock=(lambda: clock) if clock else time.time,
    )
    yield guard


def batch(
    node_id: str, seq: int, at: float, turns: int, errors: int, version: str
) -> TelemetryBatch:
    """What a node sends: ``turns`` answered and ``errors`` failed requests of demo-shop, the
    failures (new sessions) with no model version, as the node's recorder keys them."""
    return TelemetryBatch(
        node_id=node_id,
        region="r1",
        started_at=1.0,
        seq=seq,
        sent_at=at,
        aggregates=[
            TelemetryAggregate(
                tenant="demo-shop",
                scenario="logistics",
                model_version=version,
                window_start=at,
                window_s=10,
                turns=turns,
            ),
            TelemetryAggregate(
                tenant="demo-shop",
                scenario="",
                model_version="",
                window_start=at,
                window_s=10,
                errors=errors,
            ),
        ],
    )


async def test_leader_guard_alerts_with_evidence_and_resumes_from_kv(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    policy = SteadyPolicy(window_s=120, min_turns=100, rollback_within_s=3600)
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        await seed_demo(stack.cp)
        cp = stack.cp
        _, version = shipped_packed("demo-shop-intent")
        ref = f"demo-shop-intent@{version}"
        now = time.time()
        # A week-old baseline of this version: 1 % errors; then a live window at 30 %.
        for i in range(10):
            b = batch("n1", i + 1, now - 3000 + 60 * i, 990, 10, ref)
            await stack.bus.publish(telemetry_subject("r1", "n1"), encode(b), msg_id=f"n1:{i}")
        async with guard_on(stack, policy, now) as guard:
            assert await guard.run_once() == []  # baseline only
            for i in range(3):
                b = batch("n1", 20 + i, now - 30 + 10 * i, 140, 60, ref)
                await stack.bus.publish(telemetry_subject("r1", "n1"), encode(b), msg_id=f"l:{i}")
            actions = await guard.run_once()
        assert kinds(actions) == ["error"]
        # A new leader (same KV, no memory) resumes from the stored stats and does not act again.
        async with guard_on(stack, policy, now) as again:
            assert await again.run_once() == []
        alerts = [a for a in await list_alerts(stack.bus) if a.kind == "guard"]
        assert len(alerts) == 1 and alerts[0].detail["finding"] == "error"
        assert alerts[0].detail["baseline_trials"] == 10_000
        audit = [e for e in await cp.audit_log(tenant="demo-shop") if e.action == "guard.error"]
        assert len(audit) == 1 and json.loads(audit[0].detail)["canary_rate"] == 0.3


async def test_a_crash_looping_node_is_marked_drained(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    policy = SteadyPolicy(crash_loop_restarts=2, crash_loop_window_s=600)
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        await seed_demo(stack.cp)
        async with guard_on(stack, policy) as guard:
            for boot in (1, 2, 3):  # the same node (data dir) started three times
                async with cp_node(tmp_path, nats_server.url, ops_key) as (_, agent):
                    assert agent.boots == boot
                    await wait_boots(stack, boot)
                    await guard.run_once()
            drained = await drained_nodes(stack.bus)
        assert set(drained) == {"n1"} and "restarted 2 times" in drained["n1"]["because"]
        (n1,) = await stack.cp.list_nodes()
        assert n1.drained == drained["n1"]["because"]  # in the node's listed status
        alerts = [a for a in await list_alerts(stack.bus) if a.kind == "guard"]
        assert [a.detail["finding"] for a in alerts] == ["crash_loop"]
        assert alerts[0].severity == "critical"
        audit = [e.action for e in await stack.cp.audit_log(limit=500)]
        assert audit.count("guard.drain") == 1 and audit.count("guard.crash_loop") == 1


async def wait_boots(stack: CpStack, boots: int) -> None:
    for _ in range(100):
        nodes = {n.node_id: n for n in await stack.cp.list_nodes()}
        if "n1" in nodes and nodes["n1"].boots == boots:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"node never reported boot {boots}")
