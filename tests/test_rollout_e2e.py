"""Issue 12's end-to-end check on a real nats-server and four real node processes (2 regions x
2 nodes): a rollout of a new intent-model version steps through two waves (half of r1, then
all of r1 and r2) and two weights, and is promoted. At each step, over >= 400 new sessions on
the wave's nodes, the canary's share is within the binomial 99 % interval of the nodes'
weights (a miss draws one fresh sample); nodes outside the wave serve only the baseline; a
widening never moves a session; and, read back with GetSession over every session, no
session's turns used two versions.

The controller runs in the test with a clock the test moves forward past each step's bake
time, so the test waits for convergence, never for wall-clock bake time.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import grpc
import pytest
from cp_support import ACTOR, FAST_YAML, control_plane, new_version, seed_demo, trust_on_node
from cp_support import trust_with as trust_of
from support.processes import stop_process
from test_node_cp_join import converse_when_assigned, run_node, write_node_yaml

from kefu.control_plane.rollouts import RolloutController
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.rollout import Rollout, Step, Wave
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

pytestmark = pytest.mark.slow

NODES = [("r1", "a1"), ("r1", "a2"), ("r2", "b1"), ("r2", "b2")]
CANARY = "demo-shop-intent@e2e-2"
PER_STEP = 400
BAKE_S = 60.0


def _drain(proc: object) -> None:
    """Read a node's stderr so its log never fills the pipe."""
    stream = getattr(proc, "stderr", None)
    if stream is not None:
        threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def _new_sessions(port: int, key: str, n: int) -> list[tuple[str, str]]:
    md = bearer_metadata(key)
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.KefuNodeStub(ch)
        for i in range(n):
            r = stub.Converse(
                pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="hello" if i % 2 else "我的订单"),
                metadata=md,
                timeout=30,
            )
            out.append((r.session_id, r.model_versions["intent"]))
    return out


def _next_turns(port: int, key: str, sessions: list[str]) -> list[tuple[str, str]]:
    md = bearer_metadata(key)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.KefuNodeStub(ch)
        return [
            (
                sid,
                stub.Converse(
                    pb.ConverseRequest(session_id=sid, text="退货"), metadata=md, timeout=30
                ).model_versions["intent"],
            )
            for sid in sessions
        ]


def _versions_used(port: int, key: str, sessions: list[str]) -> dict[str, set[str]]:
    md = bearer_metadata(key)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.KefuNodeStub(ch)
        out = {}
        for sid in sessions:
            view = stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md, timeout=30)
            out[sid] = {
                t.model_versions["intent"] for t in view.turns if "intent" in t.model_versions
            }
        return out


async def _wait_step(cp: object, rid: str, wave: int, step: int, ctl: RolloutController) -> Rollout:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ro: Rollout = await cp.get_rollout(rid)  # type: ignore[attr-defined]
        if (ro.wave, ro.step) == (wave, step) and ro.converged_at and ro.phase == "running":
            return ro
        ctl.kick()
        await asyncio.sleep(0.2)
    raise AssertionError(f"rollout never served wave {wave + 1} step {step + 1}: {ro.describe()}")


async def test_rollout_across_two_regions_of_node_processes(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    url = nats_server.url
    async with control_plane(url, trust_of(ops_key)) as stack:
        cp = stack.cp
        key = await seed_demo(cp, "r1")
        await cp.put_config("demo-shop", FAST_YAML, actor=ACTOR)
        await cp.create_region("r2", actor=ACTOR)
        r1 = (await cp.list_assignments("demo-shop"))[0]
        await cp.assign("demo-shop", "r2", models=dict(r1.models), actor=ACTOR)
        baseline = r1.models["intent"]
        await cp.publish_model(new_version(tmp_path, ops_key, "e2e-2"), actor=ACTOR)
        offset = [0.0]
        ctl = RolloutController(
            cp,
            term=lambda: stack.lease.term,
            confirm=stack.lease.confirm,
            period_s=0.2,
            fresh_s=1e9,  # the moved clock must not make heartbeats look stale
            clock=lambda: time.time() + offset[0],
        )
        ports: dict[str, int] = {}
        procs = []
        try:
            for region, node in NODES:
                config, port, data = write_node_yaml(
                    tmp_path / node, url, region=region, node_id=node
                )
                trust_on_node(data, ops_key)
                proc = run_node(config, region=region, node_id=node)
                _drain(proc)
                procs.append(proc)
                ports[node] = port
            await asyncio.gather(
                *(
                    asyncio.to_thread(converse_when_assigned, p, key, ["hello"])
                    for p in ports.values()
                )
            )
            ctl.start()
            ro = await cp.start_rollout(
                "demo-shop",
                models={"intent": CANARY},
                waves=[Wave(regions=["r1"], node_share=0.5), Wave(regions=["r1", "r2"])],
                steps=[Step(weight=0.25, bake_s=BAKE_S), Step(weight=0.5, bake_s=BAKE_S)],
                actor=ACTOR,
            )
            first_version: dict[str, str] = {}
            where: dict[str, str] = {}
            previous: list[str] = []
            for wave, step in ((0, 0), (0, 1), (1, 0), (1, 1)):
                ro = await _wait_step(cp, ro.id, wave, step, ctl)
                weights = {m.node_id: ro.node_weight(m) for m in ro.members}
                # A widening never moves a session: the last step's sessions keep their version.
                again = await asyncio.gather(
                    *(
                        asyncio.to_thread(
                            _next_turns, ports[n], key, [s for s in previous if where[s] == n]
                        )
                        for n in ports
                    )
                )
                for sid, version in (x for part in again for x in part):
                    assert version == first_version[sid], (wave, step, sid)
                per_node = math.ceil(PER_STEP / len(weights))
                outside = [n for n in ports if n not in weights]
                previous = []
                # A correct split misses a 99 % interval one time in a hundred; over four steps
                # that is a flaky test. So a miss draws one fresh sample, and the step fails
                # only if both miss (1 in 10,000 when the weights are right).
                misses = []
                for _attempt in range(2):
                    batches = await asyncio.gather(
                        *(
                            asyncio.to_thread(_new_sessions, ports[n], key, per_node)
                            for n in weights
                        ),
                        *(asyncio.to_thread(_new_sessions, ports[n], key, 20) for n in outside),
                    )
                    hits, mean, var = 0, 0.0, 0.0
                    for node, batch in zip([*weights, *outside], batches, strict=True):
                        for sid, version in batch:
                            first_version[sid], where[sid] = version, node
                            previous.append(sid)
                            assert version in (baseline, CANARY)
                            if node in outside:
                                assert version == baseline, (node, wave, step)
                                continue
                            p = weights[node]
                            hits += version == CANARY
                            mean, var = mean + p, var + p * (1 - p)
                    if abs(hits - mean) <= 2.576 * math.sqrt(var):
                        break
                    misses.append((hits, mean))
                assert len(misses) < 2, (wave, step, misses)
                offset[0] += BAKE_S + 1  # the step has baked
                ctl.kick()
            deadline = time.monotonic() + 60
            while not (ro := await cp.get_rollout(ro.id)).finalized:
                assert time.monotonic() < deadline, ro.describe()
                ctl.kick()
                await asyncio.sleep(0.2)
            assert ro.phase == "promoted"
            assert {a.models["intent"] for a in await cp.list_assignments("demo-shop")} == {CANARY}
            # Every session's turns, read back from each node's SQLite: one version each.
            used = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        _versions_used, ports[n], key, [s for s in first_version if where[s] == n]
                    )
                    for n in ports
                )
            )
            sessions = {sid: v for part in used for sid, v in part.items()}
            assert len(sessions) == len(first_version) >= 4 * PER_STEP
            assert all(len(v) == 1 for v in sessions.values()), [
                (s, v) for s, v in sessions.items() if len(v) != 1
            ][:5]
            assert {sid: next(iter(v)) for sid, v in sessions.items()} == first_version
        finally:
            await ctl.stop()
            for proc in procs:
                await asyncio.to_thread(stop_process, proc)
