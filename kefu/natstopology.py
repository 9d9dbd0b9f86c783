"""The multi-region NATS topology: a hub for the control plane, one leaf server per region.

Data residency is enforced by the NATS engine itself, not by convention:

* The **hub** (JetStream domain ``hub``) holds the control plane's buckets in account
  ``KEFU``: desired state, node registry, routes, telemetry, audit. The control plane and the
  gateways log in there.
* Each **region** runs a leaf ``nats-server`` with a JetStream domain of its own (the region's
  name). Its account ``KEFU`` has no JetStream: a node's normal connection reaches the hub's
  buckets across the leaf link with ``$JS.hub.API`` (the credentials file says
  ``"domain": "hub"``). Its account ``ZONE`` has JetStream: the region's conversation streams
  (replicated sessions) live there, in the region, and nowhere else.
* The hub has one account ``ZONE_<zone>`` per residency zone, with **no users and no
  JetStream**: only the leaf links of that zone's regions are bound to it. So the regions of
  one zone see each other's ``ZONE`` subjects and ``$JS.<region>.API`` (stream sourcing across
  domains), while the control plane (hub ``KEFU``) and another zone (``ZONE_<other>``) cannot
  even name them: accounts share nothing that is not exported, and nothing is.

:func:`plan_topology` is pure (names, users, permissions, configs as dicts);
:class:`Topology` starts the servers on free ports (used by ``kefu up --regions`` and the
tests). The same configs map onto real clusters: see ``docs/failover.md``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kefu.certstore import TlsFiles
from kefu.errors import ConfigError
from kefu.natsserver import (
    NatsServer,
    NatsUser,
    control_plane_user,
    free_port,
    inbox_prefix,
    js_api,
    node_user,
)
from kefu.wire import check_id

__all__ = [
    "HUB_DOMAIN",
    "KEFU_ACCOUNT",
    "ZONE_ACCOUNT",
    "RegionSpec",
    "Topology",
    "TopologyPlan",
    "passwords_of",
    "plan_topology",
    "replication_user",
    "turns_stream",
    "turns_subject",
    "zone_account",
]

HUB_DOMAIN = "hub"
KEFU_ACCOUNT = "KEFU"
#: The replication account of a region's leaf server.
ZONE_ACCOUNT = "ZONE"
#: Subjects of the committed turns a region's nodes ship: ``kefu.turns.<region>.<tenant>.<id>``.
TURNS_PREFIX = "kefu.turns"


def zone_account(zone: str) -> str:
    """The hub account the leaf links of one residency zone are bound to."""
    return f"ZONE_{zone}"


def turns_stream(region: str) -> str:
    """The stream, in the region's own domain, holding its nodes' committed turns."""
    return f"KEFU_TURNS_{region}"


def turns_subject(region: str, tenant: str = "*", session_id: str = ">") -> str:
    return f"{TURNS_PREFIX}.{region}.{tenant}.{session_id}"


def replication_user(node_id: str, region: str, password: str | None = None) -> NatsUser:
    """A node's login to its region's ``ZONE`` account: publish its region's turns, run the
    JetStream API of its own domain (streams confined to the zone's account anyway), read its
    own inbox. It cannot publish another region's turns."""
    user = NatsUser(
        user=f"{node_id}-repl",
        publish=[
            f"{TURNS_PREFIX}.{region}.>",
            "$JS.API.>",
            f"{js_api(region)}.>",
            "$JS.FC.>",
            "$JS.ACK.>",
        ],
        subscribe=[f"{inbox_prefix(f'{node_id}-repl')}.>"],
    )
    if password:
        user.password = password
    return user


@dataclass(frozen=True, kw_only=True)
class RegionSpec:
    name: str
    zone: str

    def __post_init__(self) -> None:
        check_id(self.name, "region")
        check_id(self.zone, "zone")
        if self.name == HUB_DOMAIN:
            raise ConfigError(f"region name {HUB_DOMAIN!r} is reserved / 区域名 hub 为保留名")


@dataclass(kw_only=True)
class LeafPlan:
    region: RegionSpec
    #: Node users in the leaf's KEFU account (desired state across the link).
    nodes: list[NatsUser] = field(default_factory=list)
    #: Node users in the leaf's ZONE account (replication).
    replicators: list[NatsUser] = field(default_factory=list)
    #: The leaf's two logins at the hub's leaf port: (KEFU link, ZONE link).
    link_kefu: NatsUser = field(default_factory=lambda: NatsUser(user="leaf"))
    link_zone: NatsUser = field(default_factory=lambda: NatsUser(user="leaf-zone"))


@dataclass(kw_only=True)
class TopologyPlan:
    """Everything the servers' configs need; pure data (passwords included: keep 0600)."""

    regions: list[RegionSpec]
    control_plane: NatsUser
    #: Users of the hub's KEFU account besides the control plane (gateways).
    hub_users: list[NatsUser] = field(default_factory=list)
    leaves: dict[str, LeafPlan] = field(default_factory=dict)

    def zones(self) -> list[str]:
        return sorted({r.zone for r in self.regions})

    def zone_of(self, region: str) -> str:
        for r in self.regions:
            if r.name == region:
                return r.zone
        raise ConfigError(f"unknown region {region!r} / 未知区域 {region!r}")

    def hub_config(
        self, *, store_dir: Path, leaf_port: int, tls: TlsFiles | None
    ) -> dict[str, Any]:
        accounts: dict[str, Any] = {
            KEFU_ACCOUNT: {
                "jetstream": "enabled",
                "users": [u.to_config() for u in [self.control_plane, *self.hub_users]],
            },
        }
        for zone in self.zones():
            # No users: only the zone's leaf links are bound here. No JetStream: nothing of
            # a conversation is ever stored at the hub.
            accounts[zone_account(zone)] = {}
        links = []
        for leaf in self.leaves.values():
            zone = zone_account(leaf.region.zone)
            links.append({**_login(leaf.link_kefu), "account": KEFU_ACCOUNT})
            links.append({**_login(leaf.link_zone), "account": zone})
        leafnodes: dict[str, Any] = {
            "listen": f"127.0.0.1:{leaf_port}",
            "authorization": {"users": links},
        }
        cfg: dict[str, Any] = {
            "server_name": HUB_DOMAIN,
            "jetstream": {"store_dir": str(store_dir), "domain": HUB_DOMAIN},
            "max_payload": 8 * 1024 * 1024,
            "accounts": accounts,
            "leafnodes": leafnodes,
        }
        if tls is not None:
            cfg["tls"] = _server_tls(tls)
            leafnodes["tls"] = _server_tls(tls)
        return cfg

    def leaf_config(
        self, region: str, *, store_dir: Path, hub_leaf_url: str, tls: TlsFiles | None
    ) -> dict[str, Any]:
        leaf = self.leaves[region]
        scheme, _, hostport = hub_leaf_url.partition("://")

        def remote(login: NatsUser, account: str) -> dict[str, Any]:
            r: dict[str, Any] = {
                "url": f"{scheme}://{login.user}:{login.password}@{hostport}",
                "account": account,
            }
            if tls is not None:
                r["tls"] = {"ca_file": str(tls.ca_file)}
            return r

        cfg: dict[str, Any] = {
            "server_name": region,
            "jetstream": {"store_dir": str(store_dir), "domain": region},
            "max_payload": 8 * 1024 * 1024,
            "accounts": {
                KEFU_ACCOUNT: {"users": [u.to_config() for u in leaf.nodes]},
                ZONE_ACCOUNT: {
                    "jetstream": "enabled",
                    "users": [u.to_config() for u in leaf.replicators],
                },
            },
            "leafnodes": {
                "remotes": [
                    remote(leaf.link_kefu, KEFU_ACCOUNT),
                    remote(leaf.link_zone, ZONE_ACCOUNT),
                ]
            },
        }
        if tls is not None:
            cfg["tls"] = _server_tls(tls)
        return cfg


def _login(user: NatsUser) -> dict[str, Any]:
    return {"user": user.user, "password": user.password}


def _server_tls(tls: TlsFiles) -> dict[str, Any]:
    # Server authentication and encryption; clients log in with passwords (one certificate
    # could map to one user only, and a node has two logins: KEFU and ZONE).
    return {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file), "timeout": 2.0}


def plan_topology(
    regions: Sequence[RegionSpec],
    nodes: Sequence[tuple[str, str]],
    *,
    hub_users: Sequence[NatsUser] = (),
    passwords: Mapping[str, str] | None = None,
) -> TopologyPlan:
    """Users and links for ``regions`` and ``nodes`` (``(node_id, region)``). ``passwords``
    (login → password) keeps known ones, so a restart reuses them; the rest are generated."""
    saved = dict(passwords or {})
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise ConfigError(f"a region is listed twice: {names} / 区域重复")
    if not regions:
        raise ConfigError("no region / 未指定区域")

    def keep(user: NatsUser, key: str | None = None) -> NatsUser:
        key = key or user.user
        user.password = saved.get(key) or user.password or secrets.token_urlsafe(18)
        return user

    plan = TopologyPlan(
        regions=list(regions),
        control_plane=keep(control_plane_user()),
        hub_users=[keep(u) for u in hub_users],
    )
    for r in regions:
        plan.leaves[r.name] = LeafPlan(
            region=r,
            link_kefu=keep(NatsUser(user=f"leaf-{r.name}")),
            link_zone=keep(NatsUser(user=f"leaf-{r.name}-zone")),
        )
    for node_id, region in nodes:
        if region not in plan.leaves:
            raise ConfigError(f"node {node_id}: unknown region {region!r} / 节点所属区域未知")
        leaf = plan.leaves[region]
        leaf.nodes.append(keep(node_user(node_id, region, domain=HUB_DOMAIN)))
        leaf.replicators.append(keep(replication_user(node_id, region)))
    return plan


def passwords_of(plan: TopologyPlan) -> dict[str, str]:
    """Every login's password (to save 0600 and give back to :func:`plan_topology`)."""
    users = [plan.control_plane, *plan.hub_users]
    for leaf in plan.leaves.values():
        users += [leaf.link_kefu, leaf.link_zone, *leaf.nodes, *leaf.replicators]
    return {u.user: u.password for u in users}


class Topology:
    """The hub and one leaf server per region, as child processes on free ports."""

    def __init__(self, plan: TopologyPlan, data_dir: Path, *, tls: TlsFiles | None = None):
        self.plan = plan
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.leaf_port = free_port()
        self.hub = NatsServer(
            self.data_dir / "hub",
            tls=tls,
            config=plan.hub_config(
                store_dir=self.data_dir / "hub" / "jetstream", leaf_port=self.leaf_port, tls=tls
            ),
        )
        scheme = "tls" if tls is not None else "nats"
        self.leaves: dict[str, NatsServer] = {}
        for region in plan.leaves:
            d = self.data_dir / "regions" / region
            self.leaves[region] = NatsServer(
                d,
                tls=tls,
                config=plan.leaf_config(
                    region,
                    store_dir=d / "jetstream",
                    hub_leaf_url=f"{scheme}://127.0.0.1:{self.leaf_port}",
                    tls=tls,
                ),
            )

    def start(self, timeout_s: float = 15.0) -> Topology:
        self.hub.start(timeout_s)
        for leaf in self.leaves.values():
            leaf.start(timeout_s)
        return self

    def stop(self) -> None:
        for leaf in self.leaves.values():
            leaf.stop()
        self.hub.stop()

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def credentials(self, user: NatsUser, *, region: str | None = None) -> dict[str, Any]:
        """A credentials file's content for ``user``: on the hub, or on ``region``'s leaf
        (a node: its buckets are in the hub's domain across the link)."""
        server = self.hub if region is None else self.leaves[region]
        ca = TlsFiles(ca_file=self.tls.ca_file) if self.tls is not None else None
        out: dict[str, Any] = user.to_credentials(server.url, ca)
        if region is not None and not user.user.endswith("-repl"):
            out["domain"] = HUB_DOMAIN
        return out
