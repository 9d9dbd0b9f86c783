"""``kefu up --regions cn-east,cn-north,eu-1``: the multi-region topology on one machine.

Starts, in order (docs/failover.md "kefu up --regions"):

* the NATS topology of :mod:`kefu.natstopology`: a hub ``nats-server`` (JetStream domain
  ``hub``) and one leaf server per region (its own domain), on free ports, data under
  ``<data-dir>/nats``; every login's password kept 0600 in ``<data-dir>/nats/passwords.json``
  so a second run reuses them; server TLS with the private CA of ``<data-dir>/pki`` (password
  logins) unless ``--plaintext``;
* the control plane on the hub; the regions, their residency zones and failover orders
  (every other region of the zone, in the order given), the demo tenant (home: the first
  region; allowed: every region of its zone; sessions may be replicated) — all idempotent;
* one ``kefu node run`` child process per region on its region's leaf (``<region>-1``), with
  its NATS credentials and its replication (``<node>-repl``, the leaf's ``ZONE`` account)
  credentials side by side in ``<data-dir>/nats/creds``, and a ``replication:`` section
  naming them with its zone and the zone's key file ``<data-dir>/secrets/zone-<zone>.key``
  (32 random bytes, base64, 0600; written once per zone, reused by later runs);
* one access gateway per zone (``gw-<zone>``), logged in at the hub with a least-privilege
  user, following the routes and taking its zone's nodes from the node registry.

**Zones**: a region's zone is its name up to the first ``-`` (``cn-east`` → ``cn``, ``eu-1`` →
``eu``; a name without ``-`` is a zone of its own), unless ``--zones
'cn=cn-east,cn-north;eu=eu-1'`` names every region's zone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.errors import ConfigError, KefuError, PermanentError, TemporaryError
from kefu.natstopology import RegionSpec

__all__ = [
    "cmd_up",
    "failover_orders",
    "gateway_id",
    "node_id",
    "parse_regions",
    "register",
    "run_regions",
]

ACTOR = "kefu-up"


def node_id(region: str) -> str:
    return f"{region}-1"


def gateway_id(zone: str) -> str:
    return f"gw-{zone}"


def parse_regions(regions: str, zones: str | None = None) -> list[RegionSpec]:
    """``--regions`` (comma-separated) and ``--zones`` (``zone=r1,r2;zone2=r3``) → specs, in
    the order given. Every problem is a ConfigError naming the flag."""
    names = [r.strip() for r in regions.split(",") if r.strip()]
    if not names:
        raise ConfigError("--regions: name at least one region / 请至少指定一个区域")
    if len(set(names)) != len(names):
        raise ConfigError(f"--regions: a region is listed twice: {names} / 区域重复")
    zone_of: dict[str, str] = {}
    if zones is not None:
        for part in (p.strip() for p in zones.split(";")):
            if not part:
                continue
            zone, sep, members = part.partition("=")
            if not sep or not zone.strip():
                raise ConfigError(
                    f"--zones: {part!r} is not ZONE=REGION,REGION (e.g. cn=cn-east,cn-north) / "
                    "格式应为 区域组=区域,区域"
                )
            for r in (m.strip() for m in members.split(",") if m.strip()):
                if r in zone_of:
                    raise ConfigError(f"--zones: region {r!r} is in two zones / 区域属于两个组")
                zone_of[r] = zone.strip()
        if unknown := sorted(set(zone_of) - set(names)):
            raise ConfigError(
                f"--zones: {', '.join(unknown)} not in --regions / 不在 --regions 中的区域"
            )
        if missing := [r for r in names if r not in zone_of]:
            raise ConfigError(
                f"--zones: no zone for {', '.join(missing)} / 这些区域未指定所属区域组"
            )
    specs = []
    for name in names:
        zone = zone_of.get(name) or name.split("-", 1)[0] or name
        try:
            specs.append(RegionSpec(name=name, zone=zone))
        except KefuError as exc:
            raise ConfigError(f"--regions: {exc}") from exc
    return specs


def failover_orders(specs: Sequence[RegionSpec]) -> dict[str, list[str]]:
    """Each region's failover order: the other regions of its zone, in the order given."""
    return {s.name: [o.name for o in specs if o.zone == s.zone and o.name != s.name] for s in specs}


def _address(base: str, index: int) -> str:
    """The ``index``-th component's address: the base port plus ``index``, or a free port
    when the base is ``:0``."""
    from kefu.natsserver import free_port

    host, _, port = base.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"{base!r} is not HOST:PORT / 地址格式应为 主机:端口")
    if int(port) == 0:
        return f"{host}:{free_port()}"
    return f"{host}:{int(port) + index}"


@dataclass
class _Processes:
    """The node child processes, stopped (SIGTERM, then SIGKILL) in reverse order."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, config: Path) -> None:
        log_path = config.parent / "node.log"
        log = log_path.open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "kefu.node.main", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C comes to us; we stop the nodes in order
        )
        log.close()
        self.logs[name] = log_path

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise TemporaryError(
                    f"node {name} exited with {p.returncode}; see {self.logs[name]} / "
                    f"节点 {name} 已退出，见日志"
                )

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def zone_key_file(data: Path, zone: str) -> Path:
    """The zone's replication key (``<data>/secrets/zone-<zone>.key``, 0600): the same file
    for every region of the zone, written on the first run and kept after (replicas written
    with it stay readable)."""
    import base64
    import os

    from kefu.up import _write_secret

    path = data / "secrets" / f"zone-{zone}.key"
    if not path.exists():
        _write_secret(path, base64.b64encode(os.urandom(32)).decode("ascii") + "\n")
    return path


@dataclass(frozen=True)
class _Replication:
    """A node's ``replication:`` section: its ``-repl`` login, its zone, the zone key."""

    credentials: Path
    zone: str
    key_file: Path


def _node_yaml(
    data: Path,
    region: str,
    listen: str,
    creds: Path,
    certs: dict[str, Any],
    secure: bool,
    replication: _Replication | None = None,
) -> Path:
    nid = node_id(region)
    etc = data / "nodes" / nid
    etc.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc: dict[str, Any] = {
        "data_dir": str(etc / "data"),
        "listen": listen,
        "metrics_listen": "",
        "logging": {"format": "text"},
        "control_plane": {
            "credentials": str(creds),
            "region": region,
            "node_id": nid,
            "heartbeat_s": 1.0,
            "telemetry_interval_s": 10.0,
        },
        # Conversation text and slots encrypted at rest unless --plaintext.
        "encryption": {"at_rest": secure},
    }
    if replication is not None:
        doc["replication"] = {
            "credentials": str(replication.credentials),
            "zone": replication.zone,
            "key_file": str(replication.key_file),
        }
    if secure:
        tls = certs[nid]
        doc["tls"] = {
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
            "ca_file": str(tls.ca_file),
        }
    path = etc / "node.yaml"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is YAML
    return path


async def _seed(cp: Any, data: Path, specs: list[RegionSpec]) -> tuple[Path, Any]:
    """Regions, zones, failover orders and the demo tenant's residency (idempotent)."""
    from kefu.up import TENANT, seed_demo_tenant
    from kefu.wire import TenantResidency

    for s in specs:
        await cp.create_region(s.name, description=f"zone {s.zone}", actor=ACTOR)
    records = {r.id: r for r in await cp.list_regions()}
    orders = failover_orders(specs)
    # Zones first (a failover order may name only regions of the same zone), then orders.
    for s in specs:
        rec = records.get(s.name)
        if rec is None or rec.zone != s.zone:
            await cp.configure_region(s.name, zone=s.zone, failover=[], actor=ACTOR)
    for s in specs:
        rec = records.get(s.name)
        if rec is None or rec.zone != s.zone or list(rec.failover) != orders[s.name]:
            await cp.configure_region(s.name, zone=s.zone, failover=orders[s.name], actor=ACTOR)
    home = specs[0]
    key_file = await seed_demo_tenant(cp, data, region=home.name, actor=ACTOR)
    allowed = [s.name for s in specs if s.zone == home.zone]
    want = TenantResidency(home=home.name, allowed=allowed, replicate=True)
    tenant = await cp.get_tenant(TENANT)
    have = tenant.residency
    if have is None or (have.home, sorted(have.allowed), have.replicate) != (
        want.home,
        sorted(want.allowed),
        want.replicate,
    ):
        await cp.set_tenant_residency(TENANT, want, actor=ACTOR)
    return key_file, want


async def _start_gateway(
    zone: str, regions: list[str], listen: str, hub_creds: Path, key_file: Path, tls: Any
) -> Any:
    from kefu.node.gateway.app import Gateway
    from kefu.node.gateway.config import GatewayConfig, resolve_gateway
    from kefu.up import TENANT

    creds = json.loads(hub_creds.read_text(encoding="utf-8"))
    cfg = GatewayConfig.model_validate(
        {
            "listen": listen,
            "nodes": [],
            "tenants": [{"id": TENANT, "api_key_file": str(key_file)}],
            "node_tls": tls.to_dict() if tls is not None else None,
            "routes": {
                "nats": creds["url"],
                "creds_file": str(hub_creds),
                "gateway_id": gateway_id(zone),
                "discover_nodes": True,
                "regions": regions,
                "report_s": 1.0,
            },
        }
    )
    return await Gateway(resolve_gateway(cfg, base=key_file.parent)).start()


class _Servers:
    """The topology as one object :func:`kefu.up._renew_loop` can tell to reload."""

    def __init__(self, topo: Any):
        self.topo = topo

    def reload(self) -> None:
        self.topo.hub.reload()
        for leaf in self.topo.leaves.values():
            leaf.reload()


async def run_regions(args: argparse.Namespace) -> int:
    from kefu.certstore import TlsFiles
    from kefu.control_plane.app import ControlPlaneApp, ControlPlaneOptions
    from kefu.control_plane.auth import TOKEN_FILE
    from kefu.control_plane.cli import print_first_token
    from kefu.control_plane.failover import FailoverOptions
    from kefu.control_plane.region_health import HealthPolicy
    from kefu.models.store import data_dir as resolve_data_dir
    from kefu.models.store import trust_for
    from kefu.natsserver import gateway_user
    from kefu.natstopology import Topology, passwords_of, plan_topology
    from kefu.node.serving.logs import configure_logging
    from kefu.node.sessions.files import private_dir
    from kefu.up import (
        _check_ports,
        _ensure_certificates,
        _order_center,
        _pki_plan,
        _renew_loop,
    )
    from kefu.up import _write_secret as write_secret

    configure_logging(fmt=args.log_format)
    specs = parse_regions(args.regions, args.zones)
    _check_ports(args)
    zones: dict[str, list[str]] = {}
    for s in specs:
        zones.setdefault(s.zone, []).append(s.name)
    nodes = [(node_id(s.name), s.name) for s in specs]
    gateways = [gateway_id(z) for z in zones]
    data = private_dir(resolve_data_dir(args.data_dir).resolve())
    nats_dir = data / "nats"
    secure = not args.plaintext
    certs: dict[str, Any] = {}
    pki = _pki_plan(tuple(n for n, _ in nodes), tuple(gateways))
    if secure:
        _, certs, _ = _ensure_certificates(data, pki)
        print(f"TLS everywhere; private CA {data / 'pki' / 'ca.crt'} / 已启用 TLS")
    else:
        print(
            "kefu up --plaintext: NATS, the control plane, the nodes and the gateways speak "
            "PLAINTEXT on loopback; for development only / 明文模式，仅供开发",
            file=sys.stderr,
        )
    pw_file = nats_dir / "passwords.json"
    saved: dict[str, str] = {}
    if pw_file.exists():
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(pw_file.read_text(encoding="utf-8"))
    plan = plan_topology(
        specs, nodes, hub_users=[gateway_user(g) for g in gateways], passwords=saved
    )
    write_secret(pw_file, json.dumps(passwords_of(plan), indent=2))
    topo = Topology(plan, nats_dir, tls=certs.get("nats"))
    creds_dir = nats_dir / "creds"
    ca = TlsFiles(ca_file=certs["nats"].ca_file) if secure else None

    def creds(user: Any, region: str | None = None) -> Path:
        path = creds_dir / f"{user.user}.json"
        write_secret(path, json.dumps(topo.credentials(user, region=region), indent=2))
        return path

    creds(plan.control_plane)
    gw_creds = {g.user: creds(g) for g in plan.hub_users}
    node_creds: dict[str, Path] = {}
    repl: dict[str, _Replication] = {}
    for region, leaf in plan.leaves.items():
        for u in leaf.nodes:
            node_creds[u.user] = creds(u, region)
        for u in leaf.replicators:  # <node>-repl.json, beside the node's own (replication)
            zone = plan.zone_of(region)
            repl[u.user.removesuffix("-repl")] = _Replication(
                creds(u, region), zone, zone_key_file(data, zone)
            )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(topo.start)
    renewing = (
        asyncio.create_task(
            _renew_loop(data, _Servers(topo), args.renew_check_s, pki), name="kefu-up-renew"
        )
        if secure
        else None
    )
    procs = _Processes()
    gw_objs: list[Any] = []
    try:
        print(f"NATS hub (JetStream domain hub) on {topo.hub.url}, leaf port {topo.leaf_port}")
        for region, leaf_server in topo.leaves.items():
            zone = plan.zone_of(region)
            print(f"  leaf {region} (zone {zone}, JetStream domain {region}) on {leaf_server.url}")
        cp_opts = ControlPlaneOptions(
            nats_url=topo.hub.url,
            nats_user=plan.control_plane.user,
            nats_password=plan.control_plane.password,
            nats_tls=ca,
            tls=certs.get("control-plane"),
            trust=trust_for(data),
            replica="cp-hub",
            listen=args.cp_listen,
            regions=[s.name for s in specs],
            admin_token_file=data / TOKEN_FILE,
            failover=FailoverOptions(policy=HealthPolicy(dwell_s=args.dwell_s)),
        )
        async with (
            ControlPlaneApp(cp_opts) as app,
            _order_center(data, args.order_center_listen) as oc_url,
        ):
            assert app.cp is not None and app.tokens is not None
            print(f"control plane on 127.0.0.1:{app.port}")
            if oc_url:
                print(f"demo order center on {oc_url}")
            token_file = data / TOKEN_FILE
            if app.first_token:
                print_first_token(app.first_token, token_file)
            elif await app.tokens.ensure_file(token_file, actor=ACTOR):
                print(f"control-plane admin token re-issued into {token_file} / 已重新签发令牌")
            # The nodes first (their desired-state buckets exist already): a region whose
            # record appears while its node heartbeats is judged up at once, not "down: no
            # nodes registered" and then held for the dwell.
            listens: dict[str, str] = {}
            for i, s in enumerate(specs):
                nid = node_id(s.name)
                listens[nid] = _address(args.listen, i)
                cfg = _node_yaml(
                    data, s.name, listens[nid], node_creds[nid], certs, secure, repl.get(nid)
                )
                procs.start(nid, cfg)
            await _wait(app, procs, [n for n, _ in nodes], None)
            key_file, residency = await _seed(app.cp, data, specs)
            await _wait(app, procs, [n for n, _ in nodes], specs[0].name)
            for nid, region in nodes:
                print(f"node {nid} (region {region}) on {listens[nid]}")
            urls: dict[str, str] = {}
            for i, (zone, regions) in enumerate(zones.items()):
                gw = await _start_gateway(
                    zone,
                    regions,
                    _address(args.gateway_listen, i),
                    gw_creds[gateway_id(zone)],
                    key_file,
                    certs.get(gateway_id(zone)),
                )
                gw_objs.append(gw)
                urls[zone] = gw.url
                await _gateway_ready(gw, [node_id(r) for r in regions])
            _print_howto(app.port, token_file, data, secure, zones, urls, residency)
            sys.stdout.flush()
            await stop.wait()
            print("kefu up: stopping gateways, nodes, control plane, NATS…", file=sys.stderr)
            for gw in gw_objs:
                await gw.close()
            gw_objs = []
            await asyncio.to_thread(procs.stop)
    finally:
        for gw in gw_objs:
            with contextlib.suppress(Exception):
                await gw.close()
        await asyncio.to_thread(procs.stop)
        if renewing is not None:
            renewing.cancel()
            await asyncio.wait({renewing})
        await asyncio.to_thread(topo.stop)
    return 0


async def _wait(app: Any, procs: _Processes, ids: list[str], home: str | None) -> None:
    """Until every node has registered; with ``home``, also until the home region's node
    serves the demo tenant and the tenant's route names the home region."""
    from kefu.up import TENANT
    from kefu.wire import BUCKET_ROUTES, TenantRoute, decode

    deadline = asyncio.get_running_loop().time() + 180
    while True:
        procs.check()
        by_id = {n.node_id: n for n in await app.cp.list_nodes()}
        ready = all(i in by_id for i in ids)
        if ready and home is not None:
            home_node = by_id.get(node_id(home))
            t = home_node.tenants.get(TENANT) if home_node is not None else None
            e = await app.bus.kv_get(BUCKET_ROUTES, TENANT)
            route = decode(TenantRoute, e.value) if e is not None else None
            ready = (
                t is not None
                and t.state == "serving"
                and route is not None
                and route.state == "serving"
                and route.region == home
            )
        if ready:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TemporaryError(
                "the nodes did not register and serve the demo tenant within 180 s "
                f"(logs: {', '.join(str(p) for p in procs.logs.values())}) / "
                "节点未能在 180 秒内注册并加载演示租户"
            )
        await asyncio.sleep(0.5)


async def _gateway_ready(gw: Any, ids: list[str]) -> None:
    """Until the gateway has read the routes and reaches each of its zone's nodes."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        up = {n for ups, _ in gw.pool.reach().values() for n in ups}
        if gw.routes.synced.is_set() and set(ids) <= up:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TemporaryError(
                f"gateway {gw.url} does not reach {', '.join(sorted(set(ids) - up))} after "
                "60 s / 网关 60 秒内未能连通节点"
            )
        await asyncio.sleep(0.2)


def _print_howto(
    cp_port: int,
    token_file: Path,
    data: Path,
    secure: bool,
    zones: dict[str, list[str]],
    urls: dict[str, str],
    residency: Any,
) -> None:
    from kefu.up import TENANT

    print("\nChat through each zone's gateway / 通过各区域组的网关对话:")
    for zone, regions in zones.items():
        url = urls[zone]
        print(f"  zone {zone} ({', '.join(regions)}): {url}/demo")
        if residency.home in regions:
            print(
                f"    curl -s -X POST {url}/v1/chat/{TENANT}/messages "
                "-H 'Content-Type: application/json' -d '{\"text\": \"我的订单什么时候到？\"}'"
            )
        else:
            print(
                f"    ({TENANT} lives in {residency.home}: this zone's gateway has no node "
                "for it and answers 503 / 该租户不在此区域组，此网关答复 503)"
            )
    print(
        f"{TENANT}: home {residency.home}, allowed {', '.join(residency.allowed)}, "
        "sessions replicated / 本地区域、允许区域、会话可复制"
    )
    cp_cmd = f"kefu cp --target 127.0.0.1:{cp_port} --token-file {token_file}"
    if secure:
        cp_cmd += f" --ca-file {data / 'pki' / 'ca.crt'}"
    print("Regions and routes / 区域与路由:")
    print(f"  {cp_cmd} regions list  |  {cp_cmd} regions status  |  {cp_cmd} nodes")
    print("Ctrl-C stops everything / 按 Ctrl-C 停止")


def cmd_up(args: argparse.Namespace) -> int:
    """``kefu up``: the multi-region topology with ``--regions``, else the one-node stack
    exactly as before (:func:`kefu.up.cmd_up`)."""
    from kefu.up import cmd_up as cmd_up_one

    if not args.regions:
        if args.zones:
            raise PermanentError("--zones needs --regions / --zones 需要与 --regions 一起使用")
        return cmd_up_one(args)
    try:
        return asyncio.run(run_regions(args))
    except OSError as exc:
        raise PermanentError(f"kefu up --regions: {exc}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    """``kefu up`` with its ``--regions`` flags (the one-node flags from :mod:`kefu.up`)."""
    from kefu.up import register as register_one

    register_one(sub)
    p = sub.choices["up"]
    p.add_argument(
        "--regions",
        help="the multi-region topology: a NATS hub and one leaf server, node and (per zone) "
        "gateway per region, e.g. cn-east,cn-north,eu-1 (docs/failover.md)",
    )
    p.add_argument(
        "--zones",
        help="with --regions: each region's residency zone, e.g. 'cn=cn-east,cn-north;eu=eu-1' "
        "(default: the region's name up to its first '-')",
    )
    p.add_argument(
        "--dwell-s",
        type=float,
        default=10.0,
        help="with --regions: how long a recovered region must stay healthy before traffic "
        "returns to it (default %(default)s s on one machine; a deployment's default is 60 s)",
    )
    p.set_defaults(handler=cmd_up)
