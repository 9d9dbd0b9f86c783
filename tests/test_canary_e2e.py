"""Issue 13's end-to-end proof on a real nats-server, the control plane (ControlPlaneApp:
lease, reconciler, rollout controller with the canary analysis, webhook delivery) and two
``kefu node run`` processes, with the traffic simulator as the customers at 20 sessions/s
(2–4 turn zh/en sessions from the demo tenant's held-out data, feedback by whether the bot
understood):

* a **bad canary** — the shipped intent bundle re-signed with its labels rotated by one — is
  rolled back by the analysis (a metric significantly worse, not a hard stop on errors: the
  model serves confidently, only wrong), with at most 5 % of the sessions in that time ever
  seeing it, an alert with a valid HMAC signature delivered to an aiohttp receiver, and the
  audit event carrying the per-metric evidence;
* a **good canary** (the same model as a new version) is promoted through every step with no
  alert.

The policy suits a test's few hundred sessions (named ``e2e``: min 30 trials per arm, tolerance
20 points per metric, α 1 % family-wise as the default); bake times are a few seconds. No
assertion is on wall-clock time (the timed version is ``benchmarks/canary_e2e_bench.py``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from canary_e2e_support import TENANT, canary_stack, run_canary
from cp_support import ACTOR, new_version

from kefu.canary_stats import METRICS
from kefu.control_plane.alerts import list_alerts
from kefu.control_plane.canary import CanaryPolicy
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rollout import Step

pytestmark = pytest.mark.slow

RATE = 20.0  # sessions per second, over both nodes
POLICY = CanaryPolicy(
    name="e2e", tolerance={m: 0.2 for m in METRICS}, min_trials=30, min_sessions=10
)


async def test_bad_canary_rolled_back_and_good_canary_promoted(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with canary_stack(tmp_path, nats_server.url, ops_key) as stack:
        cp = stack.cp
        await cp.publish_model(new_version(tmp_path, ops_key, "e2e-bad", permute=True), actor=ACTOR)
        await cp.publish_model(new_version(tmp_path, ops_key, "e2e-good"), actor=ACTOR)

        # (a) the bad canary: 2 % of new sessions (a few hundred sessions pass before the
        # rollback, so the exposed share is 2 % ± 1 point: ≤ 5 % holds by > 3 standard
        # errors), a long bake (it must never advance)
        bad = await run_canary(
            stack, "e2e-bad", policy=POLICY, steps=[Step(weight=0.02, bake_s=600)], rate=RATE
        )
        ro = bad.rollout
        print("bad canary:", bad.to_json())  # shown with -s
        assert ro.phase == "rolled_back", (ro.phase, ro.reason, bad.to_json())
        assert "canary analysis" in ro.reason and "hard stop" not in ro.reason, ro.reason
        assert bad.t_first_canary and bad.t_removed, bad.to_json()  # served, then removed
        exposed, total = bad.exposed(bad.t_removed)
        assert 0 < exposed <= 0.05 * total, bad.to_json()
        # the customers noticed: the canary's turns were misunderstood
        canary_turns = [t for s in bad.sessions for t in s.turns if t.model_version == bad.canary]
        assert sum(t.understood for t in canary_turns) < 0.3 * len(canary_turns)
        # the audit event carries the evidence: a metric significantly worse, counts per arm
        events = [
            e for e in await cp.audit_log(tenant=TENANT, limit=500)
            if e.action == "rollout.analysis.rollback" and ro.id in e.resource
        ]  # fmt: skip
        assert len(events) == 1
        evidence = json.loads(events[0].detail)
        worse = [m for m in evidence["metrics"] if m["worse"]]
        assert worse and {m["metric"] for m in worse} <= {"wrong_intent", "low_rating",
                                                            "fallback", "handoff"}  # fmt: skip
        for m in worse:
            assert m["lower"] > 0 and m["p_value"] < POLICY.alpha
            assert m["canary_trials"] >= POLICY.min_trials <= m["baseline_trials"]
            assert m["canary_rate"] > m["baseline_rate"]
        # the alert reached the webhook, signed (the receiver checked the HMAC header)
        assert stack.receiver.bad_signatures == 0
        rollback_alerts = [a for a in stack.receiver.alerts if a["kind"] == "rollback"]
        for _ in range(100):
            if rollback_alerts:
                break
            await asyncio.sleep(0.1)
            rollback_alerts = [a for a in stack.receiver.alerts if a["kind"] == "rollback"]
        assert [a["detail"]["rollout_id"] for a in rollback_alerts] == [ro.id]
        assert rollback_alerts[0]["detail"]["evidence"]["action"] == "rollback"
        alerts_before = len(await list_alerts(stack.app.bus, tenant=TENANT))  # type: ignore[arg-type]

        # (b) the good canary: every step, promoted, no alert
        good = await run_canary(
            stack,
            "e2e-good",
            policy=POLICY,
            steps=[Step(weight=0.1, bake_s=2), Step(weight=0.5, bake_s=2)],
            rate=RATE,
            seed=14,
        )
        ro = good.rollout
        print("good canary:", good.to_json())
        assert ro.phase == "promoted" and ro.finalized, (ro.phase, ro.reason, good.to_json())
        assert {a.models["intent"] for a in await cp.list_assignments(TENANT)} == {good.canary}
        actions = [
            e.action for e in await cp.audit_log(tenant=TENANT, limit=500) if ro.id in e.resource
        ]
        assert actions.count("rollout.analysis.advance") == 2, actions
        assert (
            "rollout.analysis.rollback" not in actions and "rollout.analysis.pause" not in actions
        )
        assert len(await list_alerts(stack.app.bus, tenant=TENANT)) == alerts_before  # type: ignore[arg-type]
        assert not [a for a in stack.receiver.alerts if a["detail"].get("rollout_id") == ro.id]
        canary_turns = [t for s in good.sessions for t in s.turns if t.model_version == good.canary]
        assert canary_turns and sum(t.understood for t in canary_turns) > 0.7 * len(canary_turns)
