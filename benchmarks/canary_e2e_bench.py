"""Bad-canary benchmark: how fast the canary analysis rolls back a bad intent model end to end,
and how many sessions saw it.

    .venv/bin/python benchmarks/canary_e2e_bench.py [--runs 3] [--rate 30] [--weight 0.03] \\
        [--policy default] [--telemetry-s 1] [--json]

What one invocation does, all real and on this machine: a ``nats-server`` (JetStream, temporary
store), the control plane (``ControlPlaneApp``: lease, reconciler, rollout controller with the
canary analysis, webhook delivery to an aiohttp receiver), two ``kefu node run`` processes in
one region (telemetry every ``--telemetry-s`` seconds, heartbeats every 0.5 s) and the traffic
simulator (``kefu demo traffic``'s library) at ``--rate`` sessions/s over both nodes — the
scenario of ``tests/test_canary_e2e.py`` (``tests/canary_e2e_support.py``). Then, ``--runs``
times: a new bad version (the shipped intent bundle re-signed with its labels rotated by one)
is published and rolled out at ``--weight`` of new sessions (one step, bake 600 s: it can only
end by a rollback) under the named built-in policy, and measured:

* **first canary turn → rollback applied**: from the first turn the simulator saw answered by
  the canary to the moment every node's status heartbeat reports the split removed (so it
  includes telemetry batching, folding, the analysis, the controller, the reconciler and the
  nodes applying the rollback, and up to one heartbeat);
* **exposed**: of the sessions started from the rollout start until then, the share that ever
  had a turn answered by the canary.

Target (issue 13): ≤ 30 s and ≤ 5 % exposed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # the scenario lives with the tests that prove it

from canary_e2e_support import canary_stack, run_canary  # noqa: E402
from cp_support import ACTOR, new_version  # noqa: E402

from kefu.control_plane.canary import DEFAULT_POLICIES  # noqa: E402
from kefu.keys import generate_keypair  # noqa: E402
from kefu.natsserver import NatsServer  # noqa: E402
from kefu.rollout import Step  # noqa: E402


async def bench(a: argparse.Namespace) -> dict[str, object]:
    policy = DEFAULT_POLICIES[a.policy]
    with tempfile.TemporaryDirectory(prefix="kefu-canary-bench-") as tmp:
        work = Path(tmp)
        key = generate_keypair(work / "keys", "ops")
        with NatsServer(work / "nats") as nats:
            async with canary_stack(work, nats.url, key, telemetry_s=a.telemetry_s) as stack:
                runs = []
                for i in range(a.runs):
                    version = f"bad-{i + 1}"
                    bundle = new_version(work, key, version, permute=True)
                    await stack.cp.publish_model(bundle, actor=ACTOR)
                    run = await run_canary(
                        stack, version, policy=policy, rate=a.rate, seed=100 + i,
                        steps=[Step(weight=a.weight, bake_s=600)], timeout_s=a.timeout,
                    )  # fmt: skip
                    j = run.to_json()
                    j["rollout_id"] = run.rollout.id
                    runs.append(j)
                    print(json.dumps(j, ensure_ascii=False), file=sys.stderr, flush=True)
                for _ in range(50):  # delivery polls the alert stream every second
                    ids = {x["detail"].get("rollout_id") for x in stack.receiver.alerts}
                    if all(r["rollout_id"] in ids for r in runs):
                        break
                    await asyncio.sleep(0.2)
                for r in runs:
                    r["alert_delivered"] = r["rollout_id"] in ids
                assert stack.receiver.bad_signatures == 0
    secs = [r["first_canary_turn_to_rollback_applied_s"] for r in runs]
    done = [s for s in secs if s is not None]
    shares = [float(r["exposed_share"]) for r in runs]  # type: ignore[arg-type]
    return {
        "rate_sessions_per_s": a.rate,
        "weight": a.weight,
        "policy": a.policy,
        "telemetry_s": a.telemetry_s,
        "runs": runs,
        "rolled_back": sum(r["phase"] == "rolled_back" for r in runs),
        "seconds_p50": statistics.median(done) if done else None,
        "seconds_max": max(done) if done else None,
        "exposed_p50": statistics.median(shares),
        "exposed_max": max(shares),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=30.0, help="sessions per second (%(default)s)")
    ap.add_argument("--weight", type=float, default=0.03, help="the canary's step weight")
    ap.add_argument("--policy", choices=sorted(DEFAULT_POLICIES), default="default")
    ap.add_argument("--telemetry-s", type=float, default=1.0, help="node telemetry interval")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per run at most")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = asyncio.run(bench(a))
    if a.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return
    print(
        f"bad canary at {a.weight:.0%} of new sessions, {a.rate:g} sessions/s over 2 nodes, "
        f"policy {a.policy}, telemetry every {a.telemetry_s:g} s: "
        f"{out['rolled_back']}/{a.runs} rolled back"
    )
    for i, r in enumerate(out["runs"], 1):  # type: ignore[arg-type]
        print(
            f"  run {i}: {r['phase']}, first canary turn -> rollback applied "
            f"{r['first_canary_turn_to_rollback_applied_s']} s, exposed "
            f"{r['sessions_exposed']}/{r['sessions_in_window']} ({r['exposed_share']:.2%}), "
            f"worse: {', '.join(r['worse_metrics']) or '-'}, alert delivered: "
            f"{'yes' if r['alert_delivered'] else 'no'}, sessions with a failed call: canary "
            f"{sum(r['client_errors']['canary'].values())}, baseline "
            f"{sum(r['client_errors']['baseline'].values())}"
        )
    print(
        f"seconds p50 {out['seconds_p50']}, max {out['seconds_max']} (target <= 30); "
        f"exposed p50 {out['exposed_p50']:.2%}, max {out['exposed_max']:.2%} (target <= 5 %)"
    )


if __name__ == "__main__":
    main()
