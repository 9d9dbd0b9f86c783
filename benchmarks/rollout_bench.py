"""Control-plane benchmark: model rollout time to N nodes, and control-plane CPU per 1,000 nodes.

    python benchmarks/rollout_bench.py [--nodes 1,10,50] [--bundle-mb 5] [--sim-nodes 1000]
                                       [--window 30] [--json]

What one run does, all measured in this run on this machine:

1. **Rollout.** Starts a real ``nats-server`` (JetStream, temporary store) and a control plane
   (service, leader lease, reconciler) in this process. For each N, starts N *lightweight node
   agents* — the real :class:`~kefu.node.agent.agent.NodeAgent` (own NATS connection each, own data
   directory, watcher, planner, object-store download, SHA-256 check, unpack, signature and
   per-file hash verification into its model store, config validation and model pinning) whose
   target verifies the bundle once more instead of loading it into onnxruntime. A new, signed
   intent-model version of ``--bundle-mb`` MB is published, then the clock starts at
   ``assign`` (the API call behind ``kefu cp assign``) and stops when **every** agent reports
   that it serves the new version. Target: ≤ 2 s at 50 nodes.
2. **Control-plane CPU per 1,000 nodes.** Runs ``kefu control-plane run`` as its own process
   and simulates ``--sim-nodes`` nodes from this process: each sends its status heartbeat
   (``kefu_nodes`` KV put) every 5 s and a telemetry batch (3 aggregates) every 10 s, for
   ``--window`` seconds, while an operator lists the nodes every 5 s. Reports the control
   plane's CPU seconds per second (from /proc) and the nats-server's, scaled per 1,000 nodes.

Everything shares the machine's cores (2 on the development machines), so the rollout time
includes N agents competing with the control plane and NATS for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kefu.bundle import Manifest, pack, sha256_file, sign_bundle, verify_bundle, write_manifest
from kefu.config import TenantConfig
from kefu.control_plane.leader import LeaderLease
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.service import ControlPlane, ensure_layout
from kefu.keys import TrustStore, generate_keypair, load_public_key
from kefu.models.store import ModelStore, shipped_dir
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer
from kefu.node.agent.agent import AgentOptions, NodeAgent
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.wire import (
    BUCKET_NODES,
    BundleRef,
    CanarySplit,
    DesiredTenant,
    NodeStatus,
    ObservedTenant,
    TelemetryAggregate,
    TelemetryBatch,
    encode,
    telemetry_subject,
)

ACTOR = "bench"
REGION = "bench"


class LightTarget:
    """A node without onnxruntime: bundles are verified (signature + hashes), not loaded."""

    def __init__(self, trust: TrustStore):
        self.trust = trust
        self._loaded: set[str] = set()

    async def load_bundle(self, bundle: BundleRef, path: Path, *, activate: bool) -> None:
        await asyncio.to_thread(verify_bundle, path, self.trust)
        self._loaded.add(bundle.ref)

    async def apply_tenant(self, doc: DesiredTenant, config: TenantConfig) -> None:
        return None

    async def apply_canary_config(self, doc: DesiredTenant, config: TenantConfig | None) -> None:
        return None

    def apply_split(self, tenant: str, split: CanarySplit | None) -> None:
        return None

    def split_report(self, tenant: str) -> tuple[int, int, int]:
        return 0, 0, 0

    def capabilities(self) -> list[str]:
        return []

    async def remove_tenant(self, tenant: str) -> None:
        return None

    def loaded(self) -> frozenset[str]:
        return frozenset(self._loaded)

    def providers(self) -> list[str]:
        return ["none"]

    async def release_unused(self, grace_s: float) -> list[str]:
        return []


async def start_agents(
    url: str, work: Path, n: int, target: Callable[[], Any], trust: TrustStore
) -> list[NodeAgent]:
    """``n`` started lightweight agents of region ``bench``, each with its own NATS connection
    and data directory, driving ``target()``."""
    agents: list[NodeAgent] = []
    for i in range(n):
        data = work / f"n{n}-{i}"

        async def connect(name: str = f"bench-n{n}-{i}") -> NatsBus:
            return await NatsBus.connect(NatsOptions(servers=[url], name=name))

        opts = AgentOptions(
            node_id=f"n{n}-{i}", region=REGION, data_dir=data, heartbeat_s=5.0, telemetry_s=60.0
        )
        agent = NodeAgent(opts, target(), ModelStore(data / "models", trust), connect=connect)
        agents.append(await agent.start())
    return agents


def make_version(work: Path, key: Any, version: str, size_mb: float) -> bytes:
    """The shipped intent bundle re-signed as ``version``, padded so the packed bundle is
    about ``size_mb`` MB (the padding is listed, with its hash, in the signed manifest)."""
    dest = work / f"intent-{version}"
    shutil.copytree(shipped_dir() / "demo-shop-intent", dest)
    m = Manifest.from_bytes((dest / "manifest.json").read_bytes())
    m.version = version
    base = len(pack(dest))
    pad = max(0, int(size_mb * 1e6) - base)
    labels = dest / "labels.json"
    labels.write_text(json.dumps(m.labels) + " " * pad)
    m.files["labels.json"] = {"size": labels.stat().st_size, "sha256": sha256_file(labels)}
    write_manifest(dest, m)
    sign_bundle(dest, key)
    return pack(dest)


async def rollout(
    url: str, work: Path, counts: list[int], bundle_mb: float
) -> list[dict[str, Any]]:
    key = generate_keypair(work / "keys", "bench")
    trust = TrustStore([key.public, load_public_key(shipped_dir() / "kefu-release.pub")])
    bus = await NatsBus.connect(NatsOptions(servers=[url], name="bench-cp"))
    await ensure_layout(bus, [REGION])
    cp = ControlPlane(bus, trust=trust)
    rec = DesiredReconciler(bus, period_s=5.0)
    cp.on_change = rec.kick
    lease = LeaderLease(
        bus, "bench-cp", ttl_s=6.0, on_change=lambda lead: rec.start() if lead else None
    )
    lease.start()
    await cp.create_region(REGION, actor=ACTOR)
    await cp.create_tenant("demo-shop", actor=ACTOR)
    await cp.put_config("demo-shop", DEMO_TENANT_CONFIG.read_text(encoding="utf-8"), actor=ACTOR)
    for name in ("demo-shop-intent", "sentiment"):
        await cp.publish_model(pack(shipped_dir() / name), actor=ACTOR)
    sv = Manifest.from_bytes((shipped_dir() / "sentiment" / "manifest.json").read_bytes()).version
    v0 = make_version(work, key, "bench-0", bundle_mb)
    await cp.publish_model(v0, actor=ACTOR)
    await cp.assign(
        "demo-shop",
        REGION,
        models={"intent": "demo-shop-intent@bench-0", "sentiment": f"sentiment@{sv}"},
        actor=ACTOR,
    )
    results = []
    for n in counts:
        agents = await start_agents(url, work, n, lambda: LightTarget(trust), trust)

        def serving(version: str, agents: list[NodeAgent] = agents) -> bool:
            for a in agents:
                o = a.observed.get("demo-shop")
                if (
                    o is None
                    or o.state != "serving"
                    or o.models.get("intent") != f"demo-shop-intent@{version}"
                ):
                    return False
            return True

        # Warm-up (untimed): every agent fetches the current version.
        t_w = time.perf_counter()
        while not serving("bench-0"):
            await asyncio.sleep(0.01)
        warm_s = time.perf_counter() - t_w
        version = f"bench-{n}"
        packed = make_version(work, key, version, bundle_mb)
        await cp.publish_model(packed, actor=ACTOR)
        t0 = time.perf_counter()
        await cp.assign(
            "demo-shop", REGION, models={"intent": f"demo-shop-intent@{version}"}, actor=ACTOR
        )
        while not serving(version):
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        results.append(
            {
                "nodes": n,
                "bundle_bytes": len(packed),
                "assign_to_all_serving_s": round(elapsed, 3),
                "first_sync_s": round(warm_s, 3),
            }
        )
        print(
            f"rollout to {n:3d} node(s), {len(packed) / 1e6:.1f} MB bundle: "
            f"{elapsed:.2f} s from assign to all serving (first sync from scratch: {warm_s:.2f} s)",
            flush=True,
        )
        for a in agents:
            await a.close()
        # Back to bench-0 so the next round starts from the same state.
        await cp.assign(
            "demo-shop", REGION, models={"intent": "demo-shop-intent@bench-0"}, actor=ACTOR
        )
    await rec.stop()
    await lease.stop()
    await bus.close()
    return results


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cp_cpu(srv: NatsServer, work: Path, sim_nodes: int, window: float) -> dict[str, Any]:
    import grpc

    from kefu.v1 import control_plane_pb2 as pb
    from kefu.v1 import control_plane_pb2_grpc as pbg

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kefu.cli",
            "control-plane",
            "run",
            "--nats",
            srv.url,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(work / "cpdata"),
            "--replica",
            "cp-bench",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    bus = await NatsBus.connect(NatsOptions(servers=[srv.url], name="bench-sim"))
    try:
        await asyncio.sleep(2.0)  # let the replica settle (lease, first reconcile)
        ids = [f"sim-{i:04d}" for i in range(sim_nodes)]
        status = {
            i: NodeStatus(
                node_id=i,
                region=REGION,
                providers=["CPUExecutionProvider"],
                tenants={
                    "demo-shop": ObservedTenant(
                        state="serving", config_version=1, models={"intent": "demo-shop-intent@1"}
                    )
                },
            )
            for i in ids
        }
        seq = dict.fromkeys(ids, 0)
        stop = time.monotonic() + window
        sent = {"heartbeats": 0, "telemetry": 0}

        async def paced(period_s: float, send: Any) -> None:
            # Each node once per period, spread evenly; sleep only when ahead of schedule.
            gap, start, k = period_s / sim_nodes, time.monotonic(), 0
            while time.monotonic() < stop:
                await send(ids[k % sim_nodes])
                k += 1
                ahead = start + k * gap - time.monotonic()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)

        async def heartbeat(i: str) -> None:
            s = status[i]
            s.heartbeat_at = time.time()
            await bus.kv_put(BUCKET_NODES, i, encode(s))
            sent["heartbeats"] += 1

        async def telemetry(i: str) -> None:
            seq[i] += 1
            now = time.time()
            aggs = [
                TelemetryAggregate(
                    tenant="demo-shop",
                    scenario=sc,
                    model_version="demo-shop-intent@1",
                    window_start=now - 10,
                    window_s=10,
                    turns=random.randint(5, 50),
                    latency_sum_ms=300.0,
                    confidence_sum=20.0,
                )
                for sc in ("logistics", "returns", "general")
            ]
            batch = TelemetryBatch(node_id=i, region=REGION, seq=seq[i], aggregates=aggs)
            await bus.publish(telemetry_subject(REGION, i), encode(batch))
            sent["telemetry"] += 1

        async def operator() -> None:
            from kefu.control_plane.auth import TOKEN_FILE
            from kefu.v1 import bearer_metadata

            token = (work / "cpdata" / TOKEN_FILE).read_text(encoding="utf-8").strip()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pbg.ControlPlaneStub(ch)
                while time.monotonic() < stop:
                    r = await stub.ListNodes(
                        pb.ListNodesRequest(), metadata=bearer_metadata(token), timeout=30
                    )
                    sent["last_listed"] = len(r.nodes)
                    await asyncio.sleep(5.0)

        cp0, nats0, t0 = _cpu_s(proc.pid), _cpu_s(srv.proc.pid), time.monotonic()  # type: ignore[union-attr]
        await asyncio.gather(paced(5.0, heartbeat), paced(10.0, telemetry), operator())
        dt = time.monotonic() - t0
        cp_s, nats_s = _cpu_s(proc.pid) - cp0, _cpu_s(srv.proc.pid) - nats0  # type: ignore[union-attr]
    finally:
        await bus.close()
        proc.terminate()
        proc.wait(10)
    # Per 1,000 nodes at the nominal rate (1 heartbeat / 5 s + 1 batch / 10 s per node), in
    # case the simulator fell behind it on a busy machine.
    nominal = sim_nodes / 5 + sim_nodes / 10
    actual = (sent["heartbeats"] + sent["telemetry"]) / dt
    scale = 1000 / sim_nodes * nominal / actual
    out = {
        "simulated_nodes": sim_nodes,
        "messages_per_s": round(actual, 1),
        "nominal_messages_per_s": nominal,
        "window_s": round(dt, 1),
        "heartbeats_sent": sent["heartbeats"],
        "telemetry_batches_sent": sent["telemetry"],
        "nodes_listed": sent.get("last_listed", 0),
        "cp_cpu_s_per_s": round(cp_s / dt, 4),
        "cp_cpu_s_per_s_per_1000_nodes": round(cp_s / dt * scale, 4),
        "nats_cpu_s_per_s_per_1000_nodes": round(nats_s / dt * scale, 4),
    }
    cp_pct, nats_pct = cp_s / dt * scale * 100, nats_s / dt * scale * 100
    print(
        f"{sim_nodes} simulated nodes for {dt:.0f} s ({sent['heartbeats']} heartbeats, "
        f"{sent['telemetry']} telemetry batches): control plane {cp_pct:.1f} % of one core "
        f"per 1,000 nodes; nats-server {nats_pct:.1f} % per 1,000 nodes",
        flush=True,
    )
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", default="1,10,50")
    ap.add_argument("--bundle-mb", type=float, default=5.0)
    ap.add_argument("--sim-nodes", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kefu-rollout-bench-"))
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        with NatsServer(work / "nats") as srv:
            report["rollout"] = await rollout(
                srv.url, work, [int(x) for x in args.nodes.split(",")], args.bundle_mb
            )
            if not args.skip_cpu:
                report["control_plane_cpu"] = await cp_cpu(srv, work, args.sim_nodes, args.window)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
