"""Staged-rollout benchmark: time from ``rollout start`` to the canary serving on every wave
node, and from ``rollout rollback`` to the baseline everywhere, for N simulated nodes.

    python benchmarks/staged_rollout_bench.py [--nodes 10,50] [--bundle-mb 5] [--json]

What one run does, all measured in this run on this machine: starts a real ``nats-server``
(JetStream, temporary store) and a control plane in this process — service, leader lease,
desired-state reconciler and the leader's rollout controller. For each N it starts N
*lightweight node agents*: the real :class:`~kefu.node.agent.agent.NodeAgent` (own NATS
connection, watcher, planner, object-store download, SHA-256 check, unpack, signature and
per-file hash verification into its model store, the split applied and reported) whose target
verifies the bundle instead of loading it into onnxruntime (``rollout_bench.LightTarget``) and
advertises the split capability. After an untimed first sync:

* **start → canary serving**: a new ``--bundle-mb`` MB intent version is published, the clock
  starts at ``start_rollout`` (one wave: every node of the region; one step at 10 %) and stops
  when every agent reports the rollout's split at 10 % — so it includes the controller
  choosing the wave, the reconciler compiling the split, every node downloading and verifying
  the canary bundle and applying the split.
* **rollback → baseline everywhere**: the clock starts at the ``rollback`` command and stops
  when every agent reports no split any more.

Target (issue 12): ≤ 2 s for 50 nodes, like the assignment benchmark. Everything shares the
machine's cores, so the times include N agents competing with the control plane and NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rollout_bench import ACTOR, REGION, LightTarget, make_version, start_agents

from kefu.bundle import Manifest, pack
from kefu.control_plane.leader import LeaderLease
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.rollouts import RolloutController
from kefu.control_plane.service import ControlPlane, ensure_layout
from kefu.keys import TrustStore, generate_keypair, load_public_key
from kefu.models.store import shipped_dir
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer
from kefu.node.agent.agent import NodeAgent
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.rollout import CAPABILITY_SPLIT, Step, Wave


class SplitTarget(LightTarget):
    def capabilities(self) -> list[str]:
        return [CAPABILITY_SPLIT]


async def _until(check: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the nodes never converged")
        await asyncio.sleep(0.005)


async def run(url: str, work: Path, counts: list[int], bundle_mb: float) -> list[dict[str, Any]]:
    key = generate_keypair(work / "keys", "bench")
    trust = TrustStore([key.public, load_public_key(shipped_dir() / "kefu-release.pub")])
    bus = await NatsBus.connect(NatsOptions(servers=[url], name="bench-cp"))
    await ensure_layout(bus, [REGION])
    cp = ControlPlane(bus, trust=trust)
    lease = LeaderLease(bus, "bench-cp", ttl_s=6.0)
    rec = DesiredReconciler(bus, period_s=5.0, confirm=lease.confirm)
    ctl = RolloutController(cp, term=lambda: lease.term, confirm=lease.confirm, period_s=0.5)

    def changed() -> None:
        rec.kick()
        ctl.kick()

    cp.on_change = changed
    assert await lease.step()
    lease.start()
    rec.start()
    ctl.start()
    await cp.create_region(REGION, actor=ACTOR)
    await cp.create_tenant("demo-shop", actor=ACTOR)
    await cp.put_config("demo-shop", DEMO_TENANT_CONFIG.read_text(encoding="utf-8"), actor=ACTOR)
    await cp.publish_model(pack(shipped_dir() / "sentiment"), actor=ACTOR)
    sv = Manifest.from_bytes((shipped_dir() / "sentiment" / "manifest.json").read_bytes()).version
    await cp.publish_model(make_version(work, key, "base", bundle_mb), actor=ACTOR)
    await cp.assign(
        "demo-shop",
        REGION,
        models={"intent": "demo-shop-intent@base", "sentiment": f"sentiment@{sv}"},
        actor=ACTOR,
    )
    results = []
    for n in counts:
        agents = await start_agents(url, work, n, lambda: SplitTarget(trust), trust)

        def split_everywhere(rollout_id: str, agents: list[NodeAgent] = agents) -> bool:
            for a in agents:
                o = a.observed.get("demo-shop")
                if o is None or o.state != "serving" or o.rollout_id != rollout_id:
                    return False
            return True

        await _until(lambda: split_everywhere(""))  # untimed first sync
        version = f"canary-{n}"
        await cp.publish_model(make_version(work, key, version, bundle_mb), actor=ACTOR)
        for a in agents:  # the controller sees every node's first heartbeat
            await a.reconcile_once()
        t0 = time.perf_counter()
        ro = await cp.start_rollout(
            "demo-shop",
            models={"intent": f"demo-shop-intent@{version}"},
            waves=[Wave(regions=[REGION])],
            steps=[Step(weight=0.1, bake_s=3600)],
            actor=ACTOR,
        )
        rid = ro.id
        await _until(lambda rid=rid: split_everywhere(rid))  # type: ignore[misc]
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        await cp.command_rollout(ro.id, "rollback", actor=ACTOR)
        await _until(lambda: split_everywhere(""))
        rollback_s = time.perf_counter() - t1
        for _ in range(200):  # the controller finalizes: the tenant may start another rollout
            if (await cp.get_rollout(ro.id)).finalized:
                break
            await asyncio.sleep(0.05)
        results.append(
            {
                "nodes": n,
                "start_to_canary_serving_s": round(start_s, 3),
                "rollback_to_baseline_s": round(rollback_s, 3),
            }
        )
        print(
            f"{n:3d} node(s): start → canary serving on all {start_s:.2f} s; "
            f"rollback → baseline everywhere {rollback_s:.2f} s",
            flush=True,
        )
        for a in agents:
            await a.close()
    await ctl.stop()
    await rec.stop()
    await lease.stop()
    await bus.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="10,50", help="comma-separated node counts")
    ap.add_argument("--bundle-mb", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.nodes.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="kefu-staged-bench-") as tmp:
        work = Path(tmp)
        with NatsServer(work / "nats") as srv:
            results = asyncio.run(run(srv.url, work, counts, args.bundle_mb))
    if args.json:
        print(json.dumps({"rollouts": results}, indent=2))


if __name__ == "__main__":
    main()
