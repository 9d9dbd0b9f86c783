"""Helpers for control-plane tests: a real nats-server per test, a control plane over it,
bundles re-signed as new versions, and a node wired to the control plane."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from kefu.bundle import Manifest, pack, sign_bundle, write_manifest
from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.leader import LeaderLease
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.service import ControlPlane, ensure_layout
from kefu.keys import SigningKey, TrustStore, load_public_key
from kefu.models.store import shipped_dir
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer, NatsUser, deployment_users
from kefu.node.agent.agent import NodeAgent
from kefu.node.agent.cp_link import attach_agent
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.serving.server import Node, NodeOptions
from kefu.v1 import bearer_metadata
from kefu.v1 import control_plane_pb2_grpc as cpg

DEMO_YAML = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
#: The demo config with rate limits high enough for bursts of test sessions (the demo's are
#: for one real shop).
FAST_YAML = DEMO_YAML.replace(
    "rate_per_second: 50\n    burst: 200", "rate_per_second: 5000\n    burst: 5000"
).replace("web: {rate_per_second: 20, burst: 80}", "web: {rate_per_second: 5000, burst: 5000}")
ACTOR = "tester"


#: The nodes of :func:`secured_nats`: (node_id, region) as in the tests' assignments.
SECURED_NODES = [("n1", "r1"), ("n2", "r1")]


@dataclass
class SecuredNats:
    """A nats-server with the deployment's users (the control plane's and each node's least-
    privilege user), built by the same function ``kefu up`` uses."""

    server: NatsServer
    cp: NatsUser
    nodes: dict[str, NatsUser]

    @property
    def url(self) -> str:
        return self.server.url


def secured_nats_at(root: Path) -> SecuredNats:
    """A server (not yet started: enter ``.server``) with :data:`SECURED_NODES`' users."""
    cp, *nodes = deployment_users(SECURED_NODES)
    srv = NatsServer(root, users=[cp, *nodes])
    return SecuredNats(server=srv, cp=cp, nodes={n.user: n for n in nodes})


def trust_with(key: SigningKey) -> TrustStore:
    release = load_public_key(shipped_dir() / "kefu-release.pub")
    return TrustStore([key.public, release])


def trust_on_node(data_dir: Path, key: SigningKey) -> None:
    (data_dir / "trusted-keys").mkdir(parents=True, exist_ok=True)
    (data_dir / "trusted-keys" / "ops.pub").write_text(key.public.to_line())


def shipped_packed(name: str) -> tuple[bytes, str]:
    path = shipped_dir() / name
    m = Manifest.from_bytes((path / "manifest.json").read_bytes())
    return pack(path), m.version


def new_version(
    tmp_path: Path,
    key: SigningKey,
    version: str,
    name: str = "demo-shop-intent",
    pad: int = 0,
    *,
    permute: bool = False,
) -> bytes:
    """The shipped bundle re-signed as ``version`` (optionally padded to a bigger size, or with
    its labels rotated by one: a bad model that loads, verifies and answers confidently, every
    class as the next one)."""
    dest = tmp_path / f"{name}-{version}"
    shutil.copytree(shipped_dir() / name, dest)
    m = Manifest.from_bytes((dest / "manifest.json").read_bytes())
    m.version = version
    if permute:
        m.labels = m.labels[1:] + m.labels[:1]
    if pad or permute:
        # labels.json rewritten (a bigger tokenizer-like payload to measure transfer, or the
        # rotated labels), listed with its hash.
        from kefu.bundle import sha256_file

        labels = dest / "labels.json"
        import json

        labels.write_text(json.dumps(m.labels) + " " * pad)
        m.files["labels.json"] = {
            "size": labels.stat().st_size,
            "sha256": sha256_file(labels),
        }
    write_manifest(dest, m)
    sign_bundle(dest, key)
    return pack(dest)


@dataclass
class CpStack:
    bus: NatsBus
    cp: ControlPlane
    reconciler: DesiredReconciler
    lease: LeaderLease


@asynccontextmanager
async def control_plane(
    url: str,
    trust: TrustStore,
    *,
    replica: str = "cp-1",
    lease_ttl_s: float = 3.0,
    user: NatsUser | None = None,
) -> AsyncIterator[CpStack]:
    creds = {"user": user.user, "password": user.password} if user else {}
    bus = await NatsBus.connect(NatsOptions(servers=[url], name=replica, **creds))
    await ensure_layout(bus)
    cp = ControlPlane(bus, trust=trust, replica=replica)
    rec = DesiredReconciler(bus, period_s=2.0)
    cp.on_change = rec.kick

    def on_change(leader: bool) -> None:
        if leader:
            rec.start()

    lease = LeaderLease(bus, replica, ttl_s=lease_ttl_s, on_change=on_change)
    lease.start()
    try:
        yield CpStack(bus=bus, cp=cp, reconciler=rec, lease=lease)
    finally:
        await rec.stop()
        await lease.stop()
        await bus.close()


async def seed_demo(cp: ControlPlane, region: str = "r1") -> str:
    """Demo tenant with its config and the shipped models assigned in ``region``; its key."""
    await cp.create_region(region, actor=ACTOR)
    await cp.create_tenant("demo-shop", actor=ACTOR)
    await cp.put_config("demo-shop", DEMO_YAML, actor=ACTOR)
    _, key = await cp.issue_key("demo-shop", actor=ACTOR)
    intent, iv = shipped_packed("demo-shop-intent")
    senti, sv = shipped_packed("sentiment")
    await cp.publish_model(intent, actor=ACTOR)
    await cp.publish_model(senti, actor=ACTOR)
    await cp.assign(
        "demo-shop",
        region,
        models={"intent": f"demo-shop-intent@{iv}", "sentiment": f"sentiment@{sv}"},
        actor=ACTOR,
    )
    return key


@asynccontextmanager
async def cp_node(
    tmp_path: Path,
    url: str,
    key: SigningKey,
    region: str = "r1",
    user: NatsUser | None = None,
    *,
    node_id: str | None = None,
    telemetry_s: float = 0.3,
    max_loop_lag_s: float | None = None,
) -> AsyncIterator[tuple[Node, NodeAgent]]:
    """A node with no local tenants (data in ``tmp_path/node``, trusting ``key``) and its
    started control-plane agent: fast heartbeats and reconnects for tests. ``max_loop_lag_s``
    raises the lag-shedding threshold for tests whose node shares its event loop with load
    generators and a control plane (shedding is tested on its own)."""
    data = tmp_path / "node"
    trust_on_node(data, key)
    opts = NodeOptions(
        data_dir=data,
        listen="127.0.0.1:0",
        metrics_listen=None,
        tenant_configs=[],
        require_tenants=False,
    )
    if max_loop_lag_s is not None:
        opts = replace(opts, max_loop_lag_s=max_loop_lag_s)
    async with Node(opts) as node:
        agent = attach_agent(
            node,
            url=url,
            node_id=node_id or (user.user if user else "n1"),
            region=region,
            user=user.user if user else None,
            password=user.password if user else None,
            heartbeat_s=0.5,
            telemetry_s=telemetry_s,
        )
        agent.options.reconnect_min_s = 0.2
        agent.options.reconnect_max_s = 1.0
        async with agent:
            yield node, agent


@asynccontextmanager
async def cp_app(
    nats_url: str, key: SigningKey
) -> AsyncIterator[tuple[ControlPlaneApp, cpg.ControlPlaneStub, grpc.aio.Channel, tuple]]:
    """The control-plane process (API on a loopback port 0, region r1) on ``nats_url``, a stub
    on a channel that may send 64 MiB (model uploads), and the first admin token's metadata."""
    opts = ControlPlaneOptions(
        nats_url=nats_url, trust=trust_with(key), listen="127.0.0.1:0", regions=["r1"]
    )
    async with (
        ControlPlaneApp(opts) as app,
        grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.max_send_message_length", 64 << 20)]
        ) as ch,
    ):
        assert app.first_token  # empty store: the first admin token
        yield app, cpg.ControlPlaneStub(ch), ch, bearer_metadata(app.first_token)
