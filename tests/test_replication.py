"""Replicated sessions inside the residency zone (issue 15): the pure plan, the outbox in the
turn's own SQLite transaction, and — on a real hub + leaf nats-server topology — shipping,
sourcing into the other allowed region, import, isolation from the hub and other zones, and
retention. Stores are the real SQLite adapter."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
import pytest
from support.grpc_node import node_options, serving
from support.polling import eventually

from kefu.config import hash_api_key, parse_tenant_config
from kefu.natsbus import NatsOptions
from kefu.natsserver import inbox_prefix
from kefu.natstopology import RegionSpec, Topology, plan_topology
from kefu.node.agent.cp_link import ServingTarget
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.replication.records import (
    OutboxWriter,
    ReplicationError,
    ZoneKey,
    open_change,
    plan_streams,
    replica_stream,
    turns_stream,
)
from kefu.node.replication.service import Replication, ReplicationOptions
from kefu.node.serving.server import Node
from kefu.node.sessions.sqlite_store import SQLiteSessionStore
from kefu.node.sessions.store import (
    DuplicateRequest,
    NewSession,
    NewTurn,
    TurnRecord,
    TurnRole,
    start_session,
    utc_now,
)
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg
from kefu.wire import DesiredTenant, TenantResidency

SHOP = TenantResidency(home="cn-east", allowed=["cn-east", "cn-north"], replicate=True)
SOLO = TenantResidency(home="cn-east", allowed=["cn-east"], replicate=True)
NOREP = TenantResidency(home="cn-east", allowed=["cn-east", "cn-north"], replicate=False)
T = TypeVar("T")
SECRET = "我的订单号是 DD20261206 secret-text"


def zone_key(zone: str = "cn") -> ZoneKey:
    return ZoneKey.parse(zone, base64.b64encode(os.urandom(32)))


async def turn(store: SQLiteSessionStore, sid: str | None, text: str, **slots: object) -> str:
    """One customer turn + bot reply as the dialog core records it; the session id."""
    new = None
    if sid is None:
        new = start_session(
            NewSession(channel="web", language="zh"), tenant=store.tenant, now=utc_now()
        )
        sid = new.id
    await store.record_turn(
        TurnRecord(
            session_id=sid,
            new_session=new,
            turns=(
                NewTurn(session_id=sid, role=TurnRole.CUSTOMER, text=text),
                NewTurn(session_id=sid, role=TurnRole.BOT, text=f"re: {text}"),
            ),
            slots=slots,
            scenario="order_query",
        )
    )
    return sid


# --------------------------------------------------------------------------- the plan (pure)


def test_plan_ships_and_sources_only_allowed_replicating_tenants() -> None:
    residency = {"shop": SHOP, "solo": SOLO, "norep": NOREP, "plain": None}
    a = plan_streams("cn-east", residency, {"shop": 7})
    assert a.ship == {"shop"}
    assert [s.name for s in a.streams] == [
        turns_stream("cn-east"),
        replica_stream("cn-north", "shop"),
    ]
    assert a.streams[0].subjects == ("kefu.turns.cn-east.>",)
    assert a.streams[0].max_age_s == 7 * 86400
    b = plan_streams("cn-north", {"shop": SHOP}, {"shop": 3}, day_s=1.0)
    (replica,) = b.streams[1:]
    assert replica.origin == "cn-east" and replica.filter_subject == "kefu.turns.cn-east.shop.>"
    assert replica.max_age_s == 3.0
    assert b.replicas_by_tenant == {"shop": (replica.name,)}
    # A region the tenant does not allow never sources it, even if handed its residency.
    eu = plan_streams("eu-1", {"shop": SHOP, "solo": SOLO}, {})
    assert eu.ship == set() and [s.name for s in eu.streams] == [turns_stream("eu-1")]


def test_change_opens_only_with_the_zone_key_and_tenant() -> None:
    key = zone_key()
    w = OutboxWriter(region="cn-east", cipher=key.cipher())
    row = w.entry("shop", {"id": "s1"}, [{"session_id": "s1", "seq": 1, "text": SECRET}])
    assert SECRET not in row["payload"] and row["subject"] == "kefu.turns.cn-east.shop.s1"
    assert open_change(key.cipher(), "shop", row["payload"])["turns"][0]["text"] == SECRET
    with pytest.raises(ReplicationError):
        open_change(zone_key("eu").cipher(), "shop", row["payload"])
    with pytest.raises(ReplicationError):
        open_change(key.cipher(), "other", row["payload"])
    with pytest.raises(ReplicationError, match="32 bytes"):
        ZoneKey.parse("cn", "short")


def test_node_yaml_replication_section(tmp_path: Path) -> None:
    from kefu.config.node import DEFAULT_NODE_YAML, parse_node_config
    from kefu.errors import ConfigError, PermanentError
    from kefu.node.agent.cp_link import ControlPlaneLink

    rest = DEFAULT_NODE_YAML.partition("#replication:")[2]
    block, _, _ = rest.partition("\n\n")
    enabled = (
        "control_plane:\n  url: nats://127.0.0.1:4222\n  region: cn-east\n"
        + "replication:"
        + block.replace("\n#  ", "\n  ").replace("credentials: nats-repl.json", "url: nats://h:1")
    )
    with pytest.raises(ConfigError, match="key_file"):  # the line of the missing key file
        parse_node_config(enabled, base=tmp_path)
    (tmp_path / "zone-cn.key").write_text("not a key")
    resolved = parse_node_config(enabled, base=tmp_path)
    r = resolved.config.replication
    assert r is not None and r.zone == "cn" and resolved.replication_key_file is not None
    link = ControlPlaneLink.from_config(resolved)
    assert link is not None and link.replication is not None
    with pytest.raises(PermanentError, match="32 bytes"):  # a clear error, no traceback
        link.replication.build(region="cn-east", node_id="n1")
    (tmp_path / "zone-cn.key").write_text(base64.b64encode(os.urandom(32)).decode())
    rep = link.replication.build(region="cn-east", node_id="n1")
    assert rep.options.region == "cn-east" and rep.options.nats.servers == ["nats://h:1"]
    alone = "replication:" + enabled.partition("replication:")[2]
    with pytest.raises(ConfigError, match="needs control_plane"):
        parse_node_config(alone, base=tmp_path)


# --------------------------------------------------------------------------- outbox atomicity


class _Broken(OutboxWriter):
    def entry(self, *args: object, **kw: object) -> dict[str, object]:
        raise RuntimeError("outbox write fails")


async def test_outbox_row_commits_with_the_turn_or_not_at_all(tmp_path: Path) -> None:
    async with await SQLiteSessionStore.open(tmp_path, "shop") as store:
        store.outbox = OutboxWriter(region="cn-east", cipher=zone_key().cipher())
        sid = await turn(store, None, "hello", order_no="DD1")
        rows = await store.outbox_batch(10)
        assert len(rows) == 1 and rows[0]["subject"].endswith(f".shop.{sid}")
        # A turn that fails (a duplicate request) leaves no outbox row.
        dup = NewTurn(session_id=sid, role=TurnRole.CUSTOMER, text="x", request_id="r1")
        await store.record_turn(TurnRecord(session_id=sid, turns=(dup,)))
        with pytest.raises(DuplicateRequest):
            await store.record_turn(TurnRecord(session_id=sid, turns=(dup,)))
        assert len(await store.outbox_batch(10)) == 2
        # An outbox row that cannot be written takes the turn with it.
        store.outbox = _Broken(region="cn-east", cipher=zone_key().cipher())
        with pytest.raises(RuntimeError):
            await turn(store, sid, "lost")
        assert [t.text for t in await store.get_turns(sid)] == ["hello", "re: hello", "x"]
        assert len(await store.outbox_batch(10)) == 2
        # Off: no outbox rows at all.
        store.outbox = None
        await turn(store, sid, "local only")
        assert len(await store.outbox_batch(10)) == 2


# --------------------------------------------------------------------------- real topology


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    """The deployed topology (kefu/natstopology.py): hub + one leaf per region, each node's
    replication login with its least-privilege permissions."""
    regions = [
        RegionSpec(name="cn-east", zone="cn"),
        RegionSpec(name="cn-north", zone="cn"),
        RegionSpec(name="eu-1", zone="eu"),
    ]
    plan = plan_topology(regions, [("na", "cn-east"), ("nb", "cn-north"), ("nu", "eu-1")])
    with Topology(plan, tmp_path / "nats") as t:
        yield t


def _login(topo: Topology, region: str) -> dict[str, str]:
    """The credentials of the node of ``region``'s replication login."""
    return topo.credentials(topo.plan.leaves[region].replicators[0], region=region)


def _replication(topo: Topology, region: str, key: ZoneKey, **kw: object) -> Replication:
    creds = _login(topo, region)
    opts = ReplicationOptions(
        region=region,
        zone_key=key,
        nats=NatsOptions(
            servers=[creds["url"]],
            user=creds["user"],
            password=creds["password"],
            inbox_prefix=inbox_prefix(creds["user"]),
            name=creds["user"],
        ),
        reconcile_s=0.5,
        **kw,  # type: ignore[arg-type]
    )
    return Replication(opts)


@pytest.fixture
async def zone(topo: Topology, tmp_path: Path) -> AsyncIterator[dict[str, object]]:
    key = zone_key()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_shop = await SQLiteSessionStore.open(a_dir, "shop")
    a_solo = await SQLiteSessionStore.open(a_dir, "solo")
    b_shop = await SQLiteSessionStore.open(b_dir, "shop")
    rep_a = _replication(topo, "cn-east", key)
    rep_b = _replication(topo, "cn-north", key)
    rep_a.tenant_applied("shop", a_shop, SHOP, 30)
    rep_a.tenant_applied("solo", a_solo, SOLO, 30)
    rep_b.tenant_applied("shop", b_shop, SHOP, 30)
    await rep_a.start()
    await rep_b.start()
    try:
        yield {
            "key": key,
            "a_shop": a_shop,
            "a_solo": a_solo,
            "b_shop": b_shop,
            "rep_a": rep_a,
            "rep_b": rep_b,
            "a_dir": a_dir,
            "b_dir": b_dir,
        }
    finally:
        for r in (rep_a, rep_b):
            await r.close()
        for s in (a_shop, a_solo, b_shop):
            await s.close()


def _async(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def call() -> T:
        return fn()

    return call


async def _replica_messages(rep: Replication, name: str) -> int:
    if rep.bus is None:
        return -2  # not connected yet
    try:
        return (await rep.bus.js.stream_info(name)).state.messages
    except nats.js.errors.NotFoundError:
        return -1


async def test_a_session_committed_in_a_is_imported_in_b_with_history_and_slots(
    zone: dict[str, object], topo: Topology
) -> None:
    a_shop, a_solo, b_shop = zone["a_shop"], zone["a_solo"], zone["b_shop"]
    rep_a, rep_b = zone["rep_a"], zone["rep_b"]
    assert isinstance(a_shop, SQLiteSessionStore) and isinstance(b_shop, SQLiteSessionStore)
    assert isinstance(a_solo, SQLiteSessionStore)
    assert isinstance(rep_a, Replication) and isinstance(rep_b, Replication)
    assert a_shop.outbox is not None and a_solo.outbox is None  # solo allows only cn-east
    sid = await turn(a_shop, None, "我的订单什么时候到", order_no="DD20261206")
    await turn(a_shop, sid, SECRET)
    solo_sid = await turn(a_solo, None, "solo-secret-text")
    replica = replica_stream("cn-east", "shop")
    assert await eventually(lambda: _replica_messages(rep_b, replica), lambda n: n == 2) == 2
    # Deleted after the ack (which may come just after b already has the copy).
    assert await eventually(a_shop.outbox_state, lambda st: st[0] == 0) == (0, None)
    # B does not have it until a turn asks for it; then history and slots are there.
    assert await b_shop.get_session(sid) is None
    assert await rep_b.import_session("shop", sid)
    turns = await b_shop.get_turns(sid)
    assert [t.text for t in turns] == [t.text for t in await a_shop.get_turns(sid)]
    assert len(turns) == 4 and turns[2].text == SECRET
    slots = await b_shop.get_slots(sid)
    assert slots["order_no"].value == "DD20261206"
    session = await b_shop.get_session(sid)
    assert session is not None and session.turn_count == 4 and session.scenario == "order_query"
    # The conversation continues in B: seqs go on, and B ships its own turns.
    await turn(b_shop, sid, "continued in B")
    assert [t.seq for t in await b_shop.get_turns(sid)][-2:] == [5, 6]
    assert not await rep_b.import_session("shop", "no-such-session")
    assert not await rep_b.import_session("solo", solo_sid)  # not sourced here at all
    # Nothing of solo in B's streams, nothing in clear text anywhere in B's files.
    assert rep_b.bus is not None
    names = {i.config.name for i in await rep_b.bus.js.streams_info()}
    assert not any("solo" in (n or "") for n in names)
    b_files = [
        *(topo.data_dir / "regions" / "cn-north").rglob("*"),
        *Path(zone["b_dir"]).rglob("*"),
    ]  # type: ignore[arg-type]
    for path in b_files:
        if path.is_file():
            data = path.read_bytes()
            assert b"solo-secret-text" not in data, path
            assert b"DD20261206 secret" not in data or path.suffix.startswith(".db"), path


async def test_the_hub_and_another_zone_see_nothing(
    zone: dict[str, object], topo: Topology
) -> None:
    rep_b = zone["rep_b"]
    a_shop = zone["a_shop"]
    assert isinstance(rep_b, Replication) and isinstance(a_shop, SQLiteSessionStore)
    login = topo.credentials(topo.plan.control_plane)
    cp = await nats.connect(login["url"], user=login["user"], password=login["password"])
    login = _login(topo, "eu-1")
    eu = await nats.connect(login["url"], user=login["user"], password=login["password"])
    seen: list[str] = []

    async def saw(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)

    try:
        await cp.subscribe(">", cb=saw)
        await eu.subscribe(">", cb=saw)
        await cp.flush()
        await eu.flush()
        await turn(a_shop, None, SECRET)
        replica = replica_stream("cn-east", "shop")
        assert await eventually(lambda: _replica_messages(rep_b, replica), lambda n: n >= 1) >= 1
        await asyncio.sleep(0.3)
        assert not [s for s in seen if "turns" in s or "cn-east" in s], seen
        # Neither can reach the region's JetStream API (account isolation, not convention).
        for conn in (cp, eu):
            with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                await conn.jetstream(domain="cn-east", timeout=1.0).stream_info(
                    turns_stream("cn-east")
                )
    finally:
        await cp.close()
        await eu.close()


async def test_shipper_resumes_after_a_restart_from_the_outbox_on_disk(
    topo: Topology, tmp_path: Path
) -> None:
    key = zone_key()
    store = await SQLiteSessionStore.open(tmp_path / "a", "shop")
    rep = _replication(topo, "cn-east", key)
    rep.tenant_applied("shop", store, SHOP, 30)  # outbox on, shipper not running
    sids = [await turn(store, None, f"turn {i}") for i in range(5)]
    await store.close()  # the node stops before shipping
    store = await SQLiteSessionStore.open(tmp_path / "a", "shop")
    assert (await store.outbox_state())[0] == 5
    rep = _replication(topo, "cn-east", key, batch=2)
    rep.tenant_applied("shop", store, SHOP, 30)
    b_store = await SQLiteSessionStore.open(tmp_path / "b", "shop")
    rep_b = _replication(topo, "cn-north", key)
    rep_b.tenant_applied("shop", b_store, SHOP, 30)
    async with rep, rep_b:
        replica = replica_stream("cn-east", "shop")
        assert await eventually(lambda: _replica_messages(rep_b, replica), lambda n: n == 5) == 5
        assert await eventually(store.outbox_state, lambda s: s[0] == 0) == (0, None)
        report = await eventually(_async(rep.report), lambda r: r["replication_lag_s"] == 0)
        assert report["replication_backlog"] == 0
        for sid in sids:
            assert await rep_b.import_session("shop", sid)
    await store.close()
    await b_store.close()


async def test_retention_purges_the_replica_and_leaving_tenants_are_unsourced(
    topo: Topology, tmp_path: Path
) -> None:
    key = zone_key()
    a = await SQLiteSessionStore.open(tmp_path / "a", "shop")
    b = await SQLiteSessionStore.open(tmp_path / "b", "shop")
    rep_a = _replication(topo, "cn-east", key)
    rep_b = _replication(topo, "cn-north", key, day_s=2.0)  # a "day" of two seconds
    rep_a.tenant_applied("shop", a, SHOP, 1)
    rep_b.tenant_applied("shop", b, SHOP, 1)
    replica = replica_stream("cn-east", "shop")
    async with rep_a, rep_b:
        await turn(a, None, SECRET)
        assert await eventually(lambda: _replica_messages(rep_b, replica), lambda n: n == 1) == 1
        assert rep_b.bus is not None
        assert (await rep_b.bus.js.stream_info(replica)).config.max_age == 2.0
        assert (
            await eventually(
                lambda: _replica_messages(rep_b, replica), lambda n: n == 0, timeout_s=10
            )
            == 0
        )
        # The tenant's residency stops allowing replication: the replica stream goes.
        rep_b.tenant_applied("shop", b, NOREP, 1)
        assert await eventually(lambda: _replica_messages(rep_b, replica), lambda n: n == -1) == -1
    await a.close()
    await b.close()


# --------------------------------------------------------------------------- real nodes


@asynccontextmanager
async def _region_node(
    topo: Topology, region: str, key: ZoneKey, data: Path, tenant_yaml: str
) -> AsyncIterator[tuple[Node, pbg.KefuNodeStub, Replication]]:
    """A real node (gRPC on loopback) with replication attached the way
    ``follow_control_plane`` does, serving ``shop`` as the control plane would apply it."""
    data.mkdir(parents=True)
    (data / "shop.yaml").write_text(tenant_yaml, encoding="utf-8")
    opts = node_options(data, tenant_configs=[data / "shop.yaml"])  # loads the demo models
    rep = _replication(topo, region, key)
    async with serving(opts) as (node, stub), rep:
        assert node.service is not None
        target = ServingTarget(node, node_id=f"node-{region}")
        target.replication = rep
        node.service.importer = rep.import_session
        doc = DesiredTenant(
            tenant="shop",
            region=region,
            config_version=1,
            config_digest="d1",
            config_yaml=tenant_yaml,
            api_key_hashes=[hash_api_key("shop-key")],
            residency=SHOP,
        )
        await target.apply_tenant(doc, parse_tenant_config(tenant_yaml))
        assert target.replication_report()["replication_backlog"] == 0
        yield node, stub, rep


@pytest.mark.slow
async def test_a_failed_over_conversation_continues_on_a_node_of_the_other_region(
    topo: Topology, tmp_path: Path
) -> None:
    key = zone_key()
    text = DEMO_TENANT_CONFIG.read_text(encoding="utf-8").replace("id: demo-shop", "id: shop", 1)
    md = bearer_metadata("shop-key")
    async with (
        _region_node(topo, "cn-east", key, tmp_path / "a", text) as (node_a, stub_a, _),
        _region_node(topo, "cn-north", key, tmp_path / "b", text) as (_, stub_b, rep_b),
    ):
        ask = "我的订单号是 2024112512345678，什么时候到？"
        first = await stub_a.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=ask), metadata=md
        )
        sid = first.session_id
        await stub_a.Converse(pb.ConverseRequest(session_id=sid, text="还没收到"), metadata=md)
        view_a = await stub_a.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md)
        assert view_a.slots["order_number"] == "2024112512345678"
        # Both turns are in b's replica; then region a goes away.
        replica = replica_stream("cn-east", "shop")
        assert await eventually(lambda: _replica_messages(rep_b, replica), lambda n: n == 2) == 2
        await node_a.drain()
        # The next turn of the conversation reaches b with the same session id.
        third = await stub_b.Converse(
            pb.ConverseRequest(session_id=sid, text="帮我查一下物流"), metadata=md
        )
        assert third.session_id == sid
        view_b = await stub_b.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md)
        texts = [t.text for t in view_b.turns]
        assert texts[: len(view_a.turns)] == [t.text for t in view_a.turns]
        assert len(view_b.turns) == len(view_a.turns) + 2
        assert view_b.slots["order_number"] == "2024112512345678"
