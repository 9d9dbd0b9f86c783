"""`kill -9` of the leading control-plane replica mid-rollout (two `kefu control-plane run`
processes on a real nats-server): the other replica takes the lease with a higher term and
resumes the same rollout at the same wave and step (the document alone is the state)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cp_support import ACTOR, new_version, seed_demo, trust_with
from packaging_helpers import ROOT, free_port
from test_rollouts_cp import report_as_node

from kefu.control_plane.service import ControlPlane, ensure_layout
from kefu.keys import SigningKey
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer
from kefu.rollout import Step, Wave
from kefu.wire import BUCKET_LEADER, BUCKET_NODES, LEASE_KEY, Lease, decode

pytestmark = pytest.mark.slow


def _replica(url: str, name: str, data: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "kefu.cli",
        "control-plane",
        "run",
        "--nats",
        url,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--replica",
        name,
        "--data-dir",
        str(data),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving on" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"control-plane replica {name} did not start")


async def _lease(bus: NatsBus) -> Lease | None:
    e = await bus.kv_get(BUCKET_LEADER, LEASE_KEY)
    return decode(Lease, e.value) if e is not None else None


async def test_kill_9_of_the_leader_mid_rollout_resumes_at_the_same_step(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    bus = await NatsBus.connect(NatsOptions(servers=[nats_server.url], name="test"))
    await ensure_layout(bus)
    cp = ControlPlane(bus, trust=trust_with(ops_key))  # API-side operations only: no lease
    await seed_demo(cp, "r1")
    await cp.publish_model(new_version(tmp_path, ops_key, "fo-2"), actor=ACTOR)
    replicas = {name: _replica(nats_server.url, name, tmp_path / name) for name in ("cp-a", "cp-b")}
    stop_nodes = asyncio.Event()

    async def nodes() -> None:  # two simulated nodes of r1 following their desired state
        while not stop_nodes.is_set():
            for node in ("a1", "a2"):
                await report_as_node(cp, node, "r1")
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(nodes())
    try:
        ro = await cp.start_rollout(
            "demo-shop",
            models={"intent": "demo-shop-intent@fo-2"},
            waves=[Wave(regions=["r1"], node_share=0.5), Wave(regions=["r1"])],
            steps=[Step(weight=0.2, bake_s=3600), Step(weight=1.0, bake_s=0)],
            actor=ACTOR,
        )
        deadline = time.monotonic() + 30
        while not (ro := await cp.get_rollout(ro.id)).converged_at:
            assert time.monotonic() < deadline, ro.describe()
            await asyncio.sleep(0.2)
        lease = await _lease(bus)
        assert lease is not None and lease.holder in replicas and ro.term == lease.term
        before = ro
        replicas[lease.holder].send_signal(signal.SIGKILL)  # no release, no goodbye
        survivor = next(n for n in replicas if n != lease.holder)
        deadline = time.monotonic() + 30
        while True:
            now = await _lease(bus)
            if now is not None and now.holder == survivor and now.expires_at > time.time():
                break
            assert time.monotonic() < deadline, "the other replica never took the lease"
            await asyncio.sleep(0.2)
        assert now.term > lease.term
        # The new leader resumes: a node restarting (stops reporting, reports again) makes the
        # controller restart the bake — written under the new term, at the same step.
        stop_nodes.set()
        await reporter
        for node in ("a1", "a2"):
            await bus.kv_delete(BUCKET_NODES, node)
        deadline = time.monotonic() + 30
        while (ro := await cp.get_rollout(ro.id)).term != now.term:
            assert time.monotonic() < deadline, ro.describe()
            await asyncio.sleep(0.2)
        assert (ro.phase, ro.wave, ro.step, ro.members) == (
            before.phase,
            before.wave,
            before.step,
            before.members,
        )
        assert ro.converged_at == 0.0 and "bake restarts" in ro.reason
    finally:
        stop_nodes.set()
        with contextlib.suppress(Exception):
            await reporter
        for proc in replicas.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
        await bus.close()
