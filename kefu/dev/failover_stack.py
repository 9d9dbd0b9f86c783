"""Two regions on one machine for the failover end-to-end test and benchmark, on the real
multi-region NATS topology (kefu/natstopology.py): a hub nats-server and one leaf server per
region (regions ``a`` and ``b`` in zone ``z``), the control plane on the hub (in this process:
gRPC API, leader, failover loop), one ``kefu node run`` child process per region on its
region's leaf (its least-privilege user, the hub's buckets across the link), and a gateway (in
this process, its own least-privilege user at the hub) that follows the routes.

Region ``a``'s leaf dials the hub through a :class:`~kefu.dev.link_proxy.LinkProxy`, so a
test can cut **only a's NATS link** (:meth:`FailoverStack.cut_link`) while its node serves.

Tenants: ``demo-shop`` (home ``a``, allowed ``b``, ``replicate: true``: fails over, and its
conversations continue in ``b`` with their history) and ``demo-solo`` (home ``a`` only: never
leaves it). Both run the shipped demo config and models. Each node has a ``replication:``
section: its ``<node>-repl`` login on its leaf's ZONE account and the zone key file (one for
zone ``z``, the same in a and b).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
from kefu.control_plane.failover import FailoverOptions
from kefu.control_plane.region_health import HealthPolicy
from kefu.dev.link_proxy import LinkProxy
from kefu.keys import TrustStore, load_public_key
from kefu.model_ref import format_ref
from kefu.models.store import shipped_dir
from kefu.natsserver import free_port, gateway_user
from kefu.natstopology import RegionSpec, Topology, TopologyPlan, plan_topology
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import GatewayConfig, resolve_gateway
from kefu.wire import BUCKET_ROUTES, TenantResidency, TenantRoute, decode

__all__ = ["FAST_FAILOVER", "FailoverStack", "Sample"]

ACTOR = "failover-stack"
#: Detection in ~2 s (heartbeats every 0.5 s, silent after 1.5 s, down 0.5 s later).
FAST_FAILOVER = FailoverOptions(
    period_s=0.2,
    heartbeat_timeout_s=1.5,
    policy=HealthPolicy(down_after_s=0.5, dwell_s=3.0, max_dwell_s=30.0),
)
REGIONS = ("a", "b")
#: demo-shop's sessions from a, as b keeps them (node/replication/records.py).
REPLICA_A = "KEFU_REPLICA_a_demo-shop"
ZONE = "z"
GATEWAY = "gw"


@dataclass
class Sample:
    at: float  # monotonic
    tenant: str
    status: int
    node: str  # the node that answered ("" on failure)
    code: str = ""  # error code on failure


@dataclass
class FailoverStack:
    tmp: Path
    plan: TopologyPlan | None = None
    topology: Topology | None = None
    #: Region a's NATS link (its leaf → the hub's leaf port), severable.
    link: LinkProxy | None = None
    app: ControlPlaneApp | None = None
    gateway: Gateway | None = None
    http: aiohttp.ClientSession | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    #: Each tenant's API key (as the gateway has it), for gRPC calls straight to a node.
    keys: dict[str, str] = field(default_factory=dict)
    options: FailoverOptions = FAST_FAILOVER

    # ------------------------------------------------------------------ setup

    async def start(self) -> FailoverStack:
        self.plan = plan = plan_topology(
            [RegionSpec(name=r, zone=ZONE) for r in REGIONS],
            [(f"n{r}", r) for r in REGIONS],
            hub_users=[gateway_user(GATEWAY)],
        )
        via = free_port()
        self.topology = Topology(plan, self.tmp / "nats", links={"a": via})
        self.link = await LinkProxy(via, self.topology.leaf_port).start()
        await asyncio.to_thread(self.topology.start)
        self._write_credentials()
        release = load_public_key(shipped_dir() / "kefu-release.pub")
        self.app = ControlPlaneApp(
            ControlPlaneOptions(
                nats_url=self.topology.hub.url,
                nats_user=plan.control_plane.user,
                nats_password=plan.control_plane.password,
                trust=TrustStore([release]),
                listen="127.0.0.1:0",
                failover=self.options,
            )
        )
        await self.app.start()
        self.keys = keys = await self._seed()
        for region in REGIONS:
            self.ports[region] = free_port()
            self.start_node(region)
        await self.wait_serving()
        gw_dir = self.tmp / "gateway"
        gw_dir.mkdir(parents=True, exist_ok=True)
        for tenant, key in keys.items():
            (gw_dir / f"{tenant}.key").write_text(key, encoding="utf-8")
        raw: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "nodes": [
                {"id": f"n{r}", "address": f"127.0.0.1:{self.ports[r]}", "region": r}
                for r in REGIONS
            ],
            "tenants": [
                {"id": t, "api_key_file": f"{t}.key", "rate": {"rate": 1000, "burst": 1000}}
                for t in keys
            ],
            "health": {"interval_s": 0.2, "timeout_s": 0.5},
            "routes": {
                "nats": self.topology.hub.url,
                "creds_file": str(self.tmp / "creds" / f"{GATEWAY}.json"),
                "gateway_id": GATEWAY,
                "report_s": 0.5,
            },
        }
        resolved = resolve_gateway(GatewayConfig.model_validate(raw), base=gw_dir)
        self.gateway = await Gateway(resolved).start()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await self.until(lambda: self._routed("a"), what="both tenants routed to a")
        await self.until(self._replicating, timeout_s=60, what="demo-shop replicated both ways")
        # The replica's cross-domain source can take seconds to connect after the streams
        # are created: one warm-up conversation in a, until it is in b's replica.
        await self.send("demo-shop", text="你好")

        async def flowing() -> bool:
            return (await self.zone_streams("b")).get(REPLICA_A, (0, []))[0] >= 1

        await self.until(flowing, timeout_s=90, what="a's turns arriving in b's replica")
        return self

    async def _replicating(self) -> bool:
        """Each node has applied demo-shop's ``replicate: true`` (its outbox is on in the same
        apply) once its replica of the other region's stream exists."""
        for here, there in (("a", "b"), ("b", "a")):
            if f"KEFU_REPLICA_{there}_demo-shop" not in await self.zone_streams(here):
                return False
        return True

    async def _seed(self) -> dict[str, str]:
        from kefu.bundle import Manifest, pack

        assert self.app is not None and self.app.cp is not None
        cp = self.app.cp
        refs = {}
        for slot, name in (("intent", "demo-shop-intent"), ("sentiment", "sentiment")):
            path = shipped_dir() / name
            await cp.publish_model(pack(path), actor=ACTOR)
            m = Manifest.from_bytes((path / "manifest.json").read_bytes())
            refs[slot] = format_ref(name, m.version)
        for r in REGIONS:
            await cp.create_region(r, actor=ACTOR)
        await cp.configure_region("b", zone="z", failover=[], actor=ACTOR)
        await cp.configure_region("a", zone="z", failover=["b"], actor=ACTOR)
        demo = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
        keys = {}
        for tenant, allowed in (("demo-shop", ["b"]), ("demo-solo", [])):
            await cp.create_tenant(tenant, actor=ACTOR)
            await cp.put_config(
                tenant, demo.replace("  id: demo-shop", f"  id: {tenant}", 1), actor=ACTOR
            )
            _, keys[tenant] = await cp.issue_key(tenant, actor=ACTOR)
            await cp.assign(tenant, "a", models=refs, actor=ACTOR)
            await cp.set_tenant_residency(
                tenant,
                TenantResidency(home="a", allowed=allowed, replicate=bool(allowed)),
                actor=ACTOR,
            )
        return keys

    def _write_credentials(self) -> None:
        """Every login's credentials file under ``<tmp>/creds`` (0600): the control plane's
        and the gateway's at the hub, each node's (and its ``-repl`` replication login,
        beside it) on its region's leaf."""
        assert self.plan is not None and self.topology is not None
        out = self.tmp / "creds"
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        logins: list[tuple[Any, str | None]] = [(u, None) for u in self.plan.hub_users]
        for name, leaf in self.plan.leaves.items():
            logins += [(u, name) for u in [*leaf.nodes, *leaf.replicators]]
        for user, where in logins:
            path = out / f"{user.user}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.topology.credentials(user, region=where), fh)
        # The zone's replication key: one file, the same for every region of zone z.
        fd = os.open(self.zone_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(base64.b64encode(os.urandom(32)).decode("ascii") + "\n")

    @property
    def zone_key_file(self) -> Path:
        return self.tmp / "creds" / f"zone-{ZONE}.key"

    def replication_credentials(self, region: str) -> Path:
        """Region ``region``'s node's replication login (its leaf's ZONE account)."""
        return self.tmp / "creds" / f"n{region}-repl.json"

    def start_node(self, region: str) -> None:
        etc = self.tmp / f"node-{region}"
        etc.mkdir(parents=True, exist_ok=True)
        creds = self.tmp / "creds" / f"n{region}.json"
        (etc / "node.yaml").write_text(
            f"data_dir: data\nlisten: 127.0.0.1:{self.ports[region]}\nmetrics_listen: ''\n"
            "logging:\n  format: text\n"
            f"control_plane:\n  credentials: {creds}\n  region: {region}\n"
            f"  node_id: n{region}\n  telemetry_interval_s: 600\n  heartbeat_s: 0.5\n"
            f"replication:\n  credentials: {self.replication_credentials(region)}\n"
            f"  zone: {ZONE}\n  key_file: {self.zone_key_file}\n",
            encoding="utf-8",
        )
        log = (etc / "node.log").open("ab")
        self.procs[region] = subprocess.Popen(
            [sys.executable, "-m", "kefu.node.main", "run", "--config", str(etc / "node.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        log.close()

    def data_dir(self, region: str) -> Path:
        return self.tmp / f"node-{region}" / "data"

    async def wait_serving(self, regions: tuple[str, ...] = REGIONS) -> None:
        """Until each region's node reports serving what it is assigned (demo-shop in both)."""
        assert self.app is not None and self.app.cp is not None
        cp = self.app.cp

        async def ok() -> bool:
            nodes = {n.region: n for n in await cp.list_nodes()}
            return all(
                r in nodes
                and nodes[r].tenants.get("demo-shop") is not None
                and nodes[r].tenants["demo-shop"].state == "serving"
                for r in regions
            )

        await self.until(ok, timeout_s=120, what=f"nodes of {regions} serving")

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.gateway is not None:
            await self.gateway.close()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(timeout=30)
        if self.app is not None:
            await self.app.stop()
        if self.link is not None:
            await self.link.close()
        if self.topology is not None:
            await asyncio.to_thread(self.topology.stop)

    async def __aenter__(self) -> FailoverStack:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ observing

    async def route(self, tenant: str) -> TenantRoute | None:
        assert self.app is not None and self.app.bus is not None
        e = await self.app.bus.kv_get(BUCKET_ROUTES, tenant)
        return decode(TenantRoute, e.value) if e else None

    async def _routed(self, region: str) -> bool:
        gw_routes = self.gateway.routes.routes if self.gateway and self.gateway.routes else {}
        return all(
            (r := gw_routes.get(t)) is not None and r.region == region
            for t in ("demo-shop", "demo-solo")
        )

    async def until(self, cond: Any, *, timeout_s: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not await cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def send(
        self, tenant: str, session_id: str = "", text: str = "我的订单什么时候到？"
    ) -> tuple[int, dict[str, Any]]:
        assert self.http is not None and self.gateway is not None
        body: dict[str, Any] = {"text": text}
        if session_id:
            body["session_id"] = session_id
        try:
            async with self.http.post(
                f"{self.gateway.url}/v1/chat/{tenant}/messages", json=body
            ) as r:
                return r.status, await r.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, {"error": {"code": type(exc).__name__}}

    async def traffic(self, tenants: tuple[str, ...], stop: asyncio.Event) -> None:
        """New conversations back to back for each tenant until ``stop``; every reply sampled."""

        async def one(tenant: str) -> None:
            while not stop.is_set():
                status, body = await self.send(tenant)
                node = body.get("session_id", "").split(".")[0] if status == 200 else ""
                code = "" if status == 200 else body.get("error", {}).get("code", "")
                self.samples.append(Sample(time.monotonic(), tenant, status, node, code))
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one(t) for t in tenants))

    async def get_session(self, region: str, tenant: str, session_id: str) -> Any:
        """GetSession straight to ``region``'s node over gRPC (the tenant's own API key);
        ``session_id`` as the gateway gives it (``<node>.<the node's id>``)."""
        import grpc

        from kefu.v1 import bearer_metadata
        from kefu.v1 import node_pb2 as pb
        from kefu.v1 import node_pb2_grpc as pbg

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ports[region]}") as ch:
            return await pbg.KefuNodeStub(ch).GetSession(
                pb.GetSessionRequest(session_id=session_id.partition(".")[2] or session_id),
                metadata=bearer_metadata(self.keys[tenant]),
                timeout=10,
            )

    async def zone_streams(self, region: str) -> dict[str, tuple[int, list[str]]]:
        """Every JetStream stream in ``region``'s leaf ZONE account (its node's replication
        login): name → (messages, subjects present)."""
        import nats
        import nats.js.errors

        from kefu.natsserver import inbox_prefix

        creds = json.loads(self.replication_credentials(region).read_text(encoding="utf-8"))
        nc = await nats.connect(
            servers=[creds["url"]],
            user=creds["user"],
            password=creds["password"],
            inbox_prefix=inbox_prefix(creds["user"]),
            allow_reconnect=False,
            connect_timeout=5,
        )
        try:
            js = nc.jetstream(timeout=5)
            out: dict[str, tuple[int, list[str]]] = {}
            for info in await js.streams_info():
                name = info.config.name or ""
                try:
                    full = await js.stream_info(name, subjects_filter=">")
                except nats.js.errors.NotFoundError:
                    continue  # deleted meanwhile
                out[name] = (full.state.messages, sorted(full.state.subjects or {}))
            return out
        finally:
            await nc.close()

    # ------------------------------------------------------------------ faults

    def kill(self, region: str) -> None:
        p = self.procs[region]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)

    def pause(self, region: str) -> None:
        self.procs[region].send_signal(signal.SIGSTOP)

    def resume(self, region: str) -> None:
        self.procs[region].send_signal(signal.SIGCONT)

    async def cut_link(self) -> None:
        """Sever region a's NATS link (leaf ↔ hub) only: its leaf server, its node and the
        gateway's gRPC connections to that node keep running."""
        assert self.link is not None
        await self.link.sever()

    async def restore_link(self) -> None:
        assert self.link is not None
        await self.link.restore()
