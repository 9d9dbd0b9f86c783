"""The canary end-to-end scenario, shared by ``tests/test_canary_e2e.py`` and
``benchmarks/canary_e2e_bench.py``: a control plane (the real :class:`ControlPlaneApp`: leader
lease, reconciler, rollout controller with the canary analysis, alert delivery) on a given
nats-server, ``kefu node run`` processes joined to it, an aiohttp webhook receiver that checks
the HMAC signature of every alert, and the traffic simulator (:mod:`kefu.demo.traffic`) as the
customers.

:func:`run_canary` starts a rollout while the simulator runs and follows it to its end,
timing from the nodes' side: the canary's first served turn (seen by the simulator), the split
applied and removed on every node (their status heartbeats), and which sessions ever saw the
canary.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cp_support import ACTOR, FAST_YAML, seed_demo, trust_on_node, trust_with
from support.processes import stop_process
from test_node_cp_join import converse_when_assigned, run_node, write_node_yaml

from kefu.control_plane.alerts import SIGNATURE_HEADER, Webhook, sign
from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.canary import CanaryPolicy
from kefu.control_plane.canary_store import load_verdict, save_policy
from kefu.demo.customers import SessionResult
from kefu.demo.traffic import TrafficOptions, TrafficRun
from kefu.keys import SigningKey
from kefu.rollout import BUCKET_ROLLOUTS, Rollout, Step, Wave, rollout_key
from kefu.wire import BUCKET_NODES, NodeStatus, decode

TENANT = "demo-shop"
REGION = "r1"
SECRET = "e2e-webhook-secret"


@dataclass
class Receiver:
    """The test's webhook endpoint: alerts whose signature verified, and any that did not."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get(SIGNATURE_HEADER) != sign(SECRET, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.alerts.append(json.loads(body))
        return web.Response(status=204)


@dataclass
class CanaryStack:
    app: ControlPlaneApp
    key: str
    ports: dict[str, int]
    receiver: Receiver
    tmp: Path
    ops_key: SigningKey

    @property
    def cp(self) -> Any:
        assert self.app.cp is not None
        return self.app.cp

    async def statuses(self) -> dict[str, NodeStatus]:
        """Each node's last status heartbeat (one get per node: this is polled often)."""
        assert self.app.bus is not None
        out = {}
        for node_id in self.ports:
            e = await self.app.bus.kv_get(BUCKET_NODES, node_id)
            if e is not None:
                out[node_id] = decode(NodeStatus, e.value)
        return out


def _drain(proc: Any) -> None:
    stream = getattr(proc, "stderr", None)
    if stream is not None:
        threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


@asynccontextmanager
async def canary_stack(
    tmp: Path, url: str, ops_key: SigningKey, *, nodes: int = 2, telemetry_s: float = 1.0
) -> AsyncIterator[CanaryStack]:
    receiver = Receiver()
    web_app = web.Application()
    web_app.router.add_post("/alerts", receiver.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/alerts"
    opts = ControlPlaneOptions(
        nats_url=url,
        trust=trust_with(ops_key),
        listen="127.0.0.1:0",
        regions=[REGION],
        lease_ttl_s=3.0,
        reconcile_period_s=1.0,
        rollout_period_s=0.5,
        webhooks=[Webhook(name="e2e", url=receiver.url, secret=SECRET)],
    )
    procs: list[Any] = []
    try:
        async with ControlPlaneApp(opts) as app:
            assert app.cp is not None and app.lease is not None
            for _ in range(100):  # the only replica takes the lease
                if app.lease.is_leader:
                    break
                await asyncio.sleep(0.1)
            key = await seed_demo(app.cp, REGION)
            await app.cp.put_config(TENANT, FAST_YAML, actor=ACTOR)
            ports, configs = {}, []
            for i in range(nodes):
                node_id = f"n{i + 1}"
                config, p, data = write_node_yaml(
                    tmp / node_id, url, region=REGION, node_id=node_id, telemetry_s=telemetry_s
                )
                trust_on_node(data, ops_key)
                ports[node_id] = p
                configs.append((config, node_id))
            started = await asyncio.gather(
                *(asyncio.to_thread(run_node, c, region=REGION, node_id=n) for c, n in configs),
                return_exceptions=True,
            )
            procs = [p for p in started if not isinstance(p, BaseException)]
            for failed in started:
                if isinstance(failed, BaseException):
                    raise failed
            for proc in procs:
                _drain(proc)
            await asyncio.gather(
                *(
                    asyncio.to_thread(converse_when_assigned, p, key, ["hello"])
                    for p in ports.values()
                )
            )
            yield CanaryStack(app, key, ports, receiver, tmp, ops_key)
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_process, proc)
        await runner.cleanup()


@dataclass
class CanaryRun:
    rollout: Rollout
    sessions: list[SessionResult]
    canary: str
    t_start: float  # rollout start (wall clock)
    t_split: float = 0.0  # every node applied the split
    t_first_canary: float = 0.0  # the first turn the canary served
    t_removed: float = 0.0  # every node applied the rollback (no split any more)
    t_end: float = 0.0  # the rollout finalized
    evidence: dict[str, Any] = field(default_factory=dict)  # the last verdict's

    def exposed(self, until: float) -> tuple[int, int]:
        """(sessions that ever saw the canary, sessions) among those started from the rollout
        start until ``until``."""
        window = [s for s in self.sessions if self.t_start <= s.started_at <= until]
        return sum(self.canary in s.versions for s in window), len(window)

    def _errors(self, canary: bool) -> dict[str, int]:
        failed = [s for s in self.sessions if s.errors and (self.canary in s.versions) == canary]
        return dict(Counter(s.error.split(":")[0] for s in failed))

    def to_json(self) -> dict[str, Any]:
        end = self.t_removed or self.t_end
        exposed, total = self.exposed(end)
        return {
            "phase": self.rollout.phase,
            "reason": self.rollout.reason,
            "first_canary_turn_to_rollback_applied_s": round(
                self.t_removed - self.t_first_canary, 2
            )
            if self.t_removed and self.t_first_canary
            else None,
            "start_to_split_applied_s": round(self.t_split - self.t_start, 2),
            "sessions_in_window": total,
            "sessions_exposed": exposed,
            "exposed_share": round(exposed / total, 4) if total else 0.0,
            "worse_metrics": [m["metric"] for m in self.evidence.get("metrics", []) if m["worse"]],
            # sessions the simulator saw a call fail in (status: count), per arm
            "client_errors": {"canary": self._errors(True), "baseline": self._errors(False)},
        }


async def run_canary(
    stack: CanaryStack,
    version: str,
    *,
    policy: CanaryPolicy,
    steps: list[Step],
    rate: float,
    seed: int = 13,
    timeout_s: float = 120.0,
) -> CanaryRun:
    """Publish nothing (the caller publishes ``demo-shop-intent@version``), start the simulator
    at ``rate`` sessions/s, start the rollout, follow it to its end (or ``timeout_s``), and
    stop the simulator."""
    await save_policy(stack.app.bus, policy)  # type: ignore[arg-type]
    sessions: list[SessionResult] = []
    opts = TrafficOptions(
        targets=[f"127.0.0.1:{p}" for p in stack.ports.values()],
        key=stack.key,
        rate=rate,
        concurrency=64,
        seed=seed,
        timeout_s=20.0,
    )
    stop = asyncio.Event()
    traffic = asyncio.create_task(TrafficRun(opts, on_session=sessions.append).run(stop))
    canary = f"demo-shop-intent@{version}"
    try:
        await asyncio.sleep(2.0)  # baseline traffic first
        t_start = time.time()
        ro = await stack.cp.start_rollout(
            TENANT,
            models={"intent": canary},
            waves=[Wave(regions=[REGION])],
            steps=steps,
            actor=ACTOR,
            policy=policy.name,
        )
        run = CanaryRun(rollout=ro, sessions=sessions, canary=canary, t_start=t_start)
        deadline = time.monotonic() + timeout_s
        nodes = set(stack.ports)
        key = rollout_key(TENANT, ro.id)
        while time.monotonic() < deadline:
            st = await stack.statuses()
            now = time.time()
            on = {n for n in nodes if n in st and TENANT in st[n].tenants}
            split = {n for n in on if st[n].tenants[TENANT].rollout_id == ro.id}
            if not run.t_split and split == nodes:
                run.t_split = now
            if run.t_split and not run.t_removed and not split and on == nodes:
                run.t_removed = now
            # the rollout by its key (a get, not a watch: this loop polls 5 times a second)
            e = await stack.app.bus.kv_get(BUCKET_ROLLOUTS, key)  # type: ignore[union-attr]
            if e is not None:
                run.rollout = decode(Rollout, e.value)
            if run.rollout.finalized and not run.t_end:
                run.t_end = now
            if run.t_end and (run.t_removed or run.rollout.phase == "promoted"):
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await traffic
    turns = [t.at for s in sessions for t in s.turns if t.model_version == canary]
    run.t_first_canary = min(turns) if turns else 0.0
    verdict = await load_verdict(stack.app.bus, ro.id)  # type: ignore[arg-type]
    run.evidence = dict(verdict.evidence) if verdict is not None else {}
    return run
