# ruff: noqa: F811  (the imported `cp` fixture is a parameter name below)
"""Canary analysis in the control plane on the memory bus: node telemetry batches folded into
durable per-rollout totals (once each, resumed by a new folder from the stored cursor), the
controller rolling a bad canary back and promoting a good one on the analysis's verdicts, the
evidence in the audit stream, and the node recorder's per-arm counts."""

from __future__ import annotations

import json
import random

from cp_support import ACTOR
from test_rollouts_cp import TENANT, _leader, cp, report_as_node  # noqa: F401  (fixture)

from kefu.control_plane.canary_store import CanaryFolder, load_totals, load_verdict
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.rollouts import RolloutController
from kefu.control_plane.service import ControlPlane
from kefu.node.agent.telemetry import TelemetryRecorder, TurnSample
from kefu.rollout import Step, Wave, arm_for
from kefu.wire import encode, telemetry_subject

NODES = [("a1", "r1"), ("a2", "r1"), ("b1", "r2"), ("b2", "r2")]


async def _pass(cp: ControlPlane, ctl: RolloutController, rec: DesiredReconciler) -> None:
    await ctl.run_once()
    await rec.run_once()
    for node, region in NODES:
        await report_as_node(cp, node, region)


def _traffic(
    rec: TelemetryRecorder, ro_id: str, salt: str, weight: float, n: int, bad_canary: float,
    rng: random.Random,
) -> None:  # fmt: skip
    """``n`` two-turn sessions; the canary's turns fall back with ``bad_canary`` probability."""
    for i in range(n):
        sid = f"{rec.node_id}-{ro_id}-{rng.random()}-{i}"
        arm = arm_for(salt, sid, weight)
        for t in range(2):
            p = bad_canary if arm == "canary" else 0.05
            rec.record_turn(
                TurnSample(
                    tenant=TENANT, scenario="s", model_version="v", latency_ms=20.0,
                    fallback=rng.random() < p, session_id=sid, rollout_id=ro_id, arm=arm,
                    weight=weight if t == 0 else 0.0, new_session=t == 0,
                )
            )  # fmt: skip


async def _ship(cp: ControlPlane, rec: TelemetryRecorder) -> None:
    batch = rec.close_window()
    assert batch is not None
    await cp.bus.publish(
        telemetry_subject(rec.region, rec.node_id),
        encode(batch),
        msg_id=f"{rec.node_id}:{batch.started_at}:{batch.seq}",
    )


async def _start(cp: ControlPlane, steps: list[Step]) -> str:
    for node, region in NODES:
        await report_as_node(cp, node, region)
    ro = await cp.start_rollout(
        TENANT,
        models={"intent": "demo-shop-intent@9.0.0"},
        waves=[Wave(regions=["r1"])],
        steps=steps,
        actor=ACTOR,
        policy="default",
    )
    return ro.id


async def test_a_bad_canary_is_rolled_back_with_evidence(cp: ControlPlane) -> None:
    lease = await _leader(cp)
    ctl = RolloutController(cp, term=lambda: lease.term, confirm=lease.confirm)
    rec = DesiredReconciler(cp.bus, confirm=lease.confirm)
    ro_id = await _start(cp, [Step(weight=0.5, bake_s=3600)])
    for _ in range(3):
        await _pass(cp, ctl, rec)
    ro = await cp.get_rollout(ro_id)
    assert ro.phase == "running"
    rng = random.Random(5)
    for node in ("a1", "a2"):
        r = TelemetryRecorder(node_id=node, region="r1")
        _traffic(r, ro_id, ro.salt, 0.5, 300, bad_canary=0.40, rng=rng)
        await _ship(cp, r)
    await _pass(cp, ctl, rec)
    ro = await cp.get_rollout(ro_id)
    assert ro.phase == "rolled_back", ro.reason
    assert "canary analysis" in ro.reason and "fallback" in ro.reason
    verdict = await load_verdict(cp.bus, ro_id)
    assert verdict is not None and verdict.action == "rollback"
    events = [e for e in await cp.audit_log(tenant=TENANT) if e.action.startswith("rollout.an")]
    assert [e.action for e in events] == ["rollout.analysis.rollback"]
    evidence = json.loads(events[0].detail)
    fb = next(m for m in evidence["metrics"] if m["metric"] == "fallback")
    assert fb["worse"] and fb["canary_rate"] > 0.3 and fb["baseline_rate"] < 0.1
    assert fb["lower"] > 0 and fb["p_value"] < 0.01
    # the totals are durable: a new folder (a new leader) resumes, nothing counted twice
    totals = await load_totals(cp.bus, ro_id)
    started = sum(r.sessions_started for r in totals.rows.values())
    assert started == 600
    assert await CanaryFolder(cp.bus).poll_once() == 0
    assert sum(r.sessions_started for r in (await load_totals(cp.bus, ro_id)).rows.values()) == 600


async def test_a_good_canary_is_promoted_only_after_the_analysis_says_advance(
    cp: ControlPlane,
) -> None:
    lease = await _leader(cp)
    ctl = RolloutController(cp, term=lambda: lease.term, confirm=lease.confirm)
    rec = DesiredReconciler(cp.bus, confirm=lease.confirm)
    ro_id = await _start(cp, [Step(weight=0.5, bake_s=0)])
    for _ in range(4):
        await _pass(cp, ctl, rec)
    ro = await cp.get_rollout(ro_id)
    assert ro.phase == "running"  # baked (0 s) but no evidence yet: held
    verdict = await load_verdict(cp.bus, ro_id)
    assert verdict is not None and verdict.action == "continue"
    rng = random.Random(6)
    r = TelemetryRecorder(node_id="a1", region="r1")
    _traffic(r, ro_id, ro.salt, 0.5, 1500, bad_canary=0.05, rng=rng)
    await _ship(cp, r)
    for _ in range(4):
        await _pass(cp, ctl, rec)
    ro = await cp.get_rollout(ro_id)
    v = await load_verdict(cp.bus, ro_id)
    assert ro.phase == "promoted" and ro.finalized, (ro.history, v)
    actions = [e.action for e in await cp.audit_log(tenant=TENANT)]
    assert "rollout.analysis.advance" in actions and "rollout.analysis.rollback" not in actions


def test_recorder_counts_arms_attributes_errors_and_ignores_missing_ratings() -> None:
    rec = TelemetryRecorder(node_id="n1", region="r1", slow_ms=100.0)
    common = {"tenant": TENANT, "scenario": "order", "rollout_id": "ro-abcdef", "arm": "canary"}
    rec.record_turn(
        TurnSample(model_version="m@2", latency_ms=150.0, session_id="s1", weight=0.1,
                   new_session=True, **common)
    )  # fmt: skip
    rec.record_turn(TurnSample(model_version="m@2", latency_ms=10.0, session_id="s1", **common))
    rec.record_error(TENANT, "s1")
    rec.record_feedback(TENANT, rating=0, session_id="s1", resolved=True)  # no rating given
    rec.record_feedback(TENANT, rating=2, session_id="s1")
    rec.record_feedback(TENANT, corrected_intent="refund", predicted_intent="order",
                        session_id="s1")  # fmt: skip
    rec.record_session_end(TENANT, "s1")
    batch = rec.close_window()
    assert batch is not None
    (arm,) = batch.arms
    assert (arm.sessions_started, arm.expected_canary, arm.sessions_ended) == (1, 0.1, 1)
    assert (arm.turns, arm.errors, arm.slow_turns) == (2, 1, 1)
    assert arm.rated_sessions == 1 and arm.ratings == [0, 1, 0, 0, 0]
    assert (arm.resolved_yes, arm.corrected_wrong) == (1, 1)
    assert arm.tallies["error"].y == 1 and arm.tallies["error"].n == 3
    # the error is keyed to the version the session's turns ran on, not to an empty one
    by_version = {a.model_version: a for a in batch.aggregates}
    assert by_version["m@2"].errors == 1 and "" not in by_version
    assert by_version["m@2"].rated == 1 and by_version["m@2"].rating_sum == 2
