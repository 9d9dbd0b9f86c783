"""The multi-region NATS topology (kefu/natstopology.py) on real nats-server processes: a hub
and one leaf per region. A node on its region's leaf reaches the control plane's buckets
across the link; a region's conversation stream is sourced by another region of its zone; and
neither the control plane's login nor another zone's sees any of it — enforced by the servers'
accounts and permissions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import ExternalStream, StreamConfig, StreamSource

from kefu.errors import ConfigError
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import inbox_prefix
from kefu.natstopology import (
    HUB_DOMAIN,
    RegionSpec,
    Topology,
    passwords_of,
    plan_topology,
    turns_stream,
    turns_subject,
    zone_account,
)
from kefu.wire import BUCKET_NODES, desired_bucket

REGIONS = [
    RegionSpec(name="cn-east", zone="cn"),
    RegionSpec(name="cn-north", zone="cn"),
    RegionSpec(name="eu-1", zone="eu"),
]
NODES = [("ne", "cn-east"), ("nn", "cn-north"), ("nu", "eu-1")]


def test_plan_accounts_domains_and_errors(tmp_path: Path) -> None:
    plan = plan_topology(REGIONS, NODES)
    hub = plan.hub_config(store_dir=tmp_path, leaf_port=1, tls=None)
    assert hub["jetstream"]["domain"] == HUB_DOMAIN
    # The zone accounts at the hub: no users, no JetStream — nothing stored, nobody logs in.
    assert hub["accounts"][zone_account("cn")] == {} == hub["accounts"][zone_account("eu")]
    bound = {(u["user"], u["account"]) for u in hub["leafnodes"]["authorization"]["users"]}
    assert ("leaf-cn-east-zone", "ZONE_cn") in bound and ("leaf-eu-1-zone", "ZONE_eu") in bound
    leaf = plan.leaf_config("eu-1", store_dir=tmp_path, hub_leaf_url="nats://h:1", tls=None)
    assert leaf["jetstream"]["domain"] == "eu-1"
    assert "jetstream" not in leaf["accounts"]["KEFU"]  # the node's buckets are at the hub
    assert [u["user"] for u in leaf["accounts"]["ZONE"]["users"]] == ["nu-repl"]
    # Passwords survive a re-plan (a restart reuses the running servers' logins).
    again = plan_topology(REGIONS, NODES, passwords=passwords_of(plan))
    assert passwords_of(again) == passwords_of(plan)

    with pytest.raises(ConfigError, match="twice"):
        plan_topology([REGIONS[0], REGIONS[0]], [])
    with pytest.raises(ConfigError, match="unknown region"):
        plan_topology(REGIONS, [("x", "mars")])
    with pytest.raises(ConfigError, match="reserved"):
        RegionSpec(name="hub", zone="cn")


async def _bus(topo: Topology, user: object, region: str | None = None) -> NatsBus:
    creds = topo.credentials(user, region=region)  # type: ignore[arg-type]
    return await NatsBus.connect(
        NatsOptions(
            servers=[creds["url"]],
            user=creds["user"],
            password=creds["password"],
            inbox_prefix=inbox_prefix(creds["user"]),
            domain=creds.get("domain"),
            timeout_s=2.0,
        )
    )


async def _raw(topo: Topology, user: object, region: str) -> nats.NATS:
    creds = topo.credentials(user, region=region)  # type: ignore[arg-type]
    return await nats.connect(
        creds["url"],
        user=creds["user"],
        password=creds["password"],
        inbox_prefix=inbox_prefix(creds["user"]).encode(),
    )


async def _refused_subscription(topo: Topology, user: object, region: str) -> bool:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    creds = topo.credentials(user, region=region)  # type: ignore[arg-type]
    nc = await nats.connect(
        creds["url"], user=creds["user"], password=creds["password"], error_cb=on_error
    )
    try:
        await nc.subscribe("kefu.turns.>")
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    return any("permissions violation" in e for e in errors)


async def _eventually(check: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():  # type: ignore[operator]
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_leaf_nodes_reach_the_hub_and_zones_stay_sealed(tmp_path: Path) -> None:
    plan = plan_topology(REGIONS, NODES)
    with Topology(plan, tmp_path) as topo:
        cp = await _bus(topo, plan.control_plane)
        node = await _bus(topo, plan.leaves["cn-east"].nodes[0], "cn-east")
        east = await _raw(topo, plan.leaves["cn-east"].replicators[0], "cn-east")
        north = await _raw(topo, plan.leaves["cn-north"].replicators[0], "cn-north")
        eu = await _raw(topo, plan.leaves["eu-1"].replicators[0], "eu-1")
        seen: list[str] = []
        try:
            # Desired state written at the hub is read by a node on its leaf ($JS.hub.API),
            # and its status key lands in the hub's registry.
            await cp.ensure_kv(desired_bucket("cn-east"))
            await cp.ensure_kv(BUCKET_NODES)
            await cp.kv_put(desired_bucket("cn-east"), "demo-shop", b"doc")
            got = await node.kv_get(desired_bucket("cn-east"), "demo-shop")
            assert got is not None and got.value == b"doc"
            await node.kv_put(BUCKET_NODES, "ne", b"status")
            status = await cp.kv_get(BUCKET_NODES, "ne")
            assert status is not None and status.value == b"status"

            # The control plane may subscribe to everything in its account: it listens.
            async def spy(msg: object) -> None:
                seen.append(f"{msg.subject} {msg.data!r}")  # type: ignore[attr-defined]

            await cp.nc.subscribe(">", cb=spy)

            # cn-east's turns, sourced into cn-north across domains.
            await east.jetstream().add_stream(
                StreamConfig(name=turns_stream("cn-east"), subjects=[turns_subject("cn-east")])
            )
            source = StreamSource(
                name=turns_stream("cn-east"), external=ExternalStream(api="$JS.cn-east.API")
            )
            await north.jetstream().add_stream(
                StreamConfig(name="KEFU_REPLICA_cn-east", sources=[source])
            )
            subject = turns_subject("cn-east", "demo-shop", "s1")
            ack = await east.jetstream().publish(subject, b"order 12345, please")
            assert ack.domain == "cn-east"

            async def replicated() -> bool:
                info = await north.jetstream().stream_info("KEFU_REPLICA_cn-east")
                return bool(info.state.messages == 1)

            await _eventually(replicated)
            msg = await north.jetstream().get_msg("KEFU_REPLICA_cn-east", seq=1)
            assert (msg.subject, msg.data) == (subject, b"order 12345, please")

            # Neither the hub's control plane nor the eu zone can reach cn-east's domain.
            for client in (cp.nc, eu):
                with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                    await client.jetstream(domain="cn-east", timeout=1.0).stream_info(
                        turns_stream("cn-east")
                    )
            # A region's node may publish only its own region's turns.
            with pytest.raises(Exception, match=r"(?i)permission|timeout|no response"):
                await east.jetstream(timeout=1.0).publish(
                    turns_subject("cn-north", "demo-shop", "s2"), b"x"
                )
            await asyncio.sleep(0.3)
            assert not [s for s in seen if "kefu.turns" in s or "12345" in s], seen
            # The other zone's login may not even subscribe to the turns (server-enforced).
            assert await _refused_subscription(topo, plan.leaves["eu-1"].replicators[0], "eu-1")
        finally:
            for c in (east, north, eu):
                await c.close()
            await node.close()
            await cp.close()
