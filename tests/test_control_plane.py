"""The control plane: pure planning without servers, its services on the in-memory bus, and
restart, leader election and NATS permissions on a real nats-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cp_support import (
    ACTOR,
    DEMO_YAML,
    control_plane,
    new_version,
    seed_demo,
    shipped_packed,
    trust_with,
)

from kefu.bus import BusUnavailable, Conflict, MemoryBus, snapshot
from kefu.control_plane.desired import DeleteDesired, DesiredInputs, PutDesired, plan_desired
from kefu.control_plane.leader import decide_lease
from kefu.control_plane.reconciler import DesiredReconciler
from kefu.control_plane.service import ControlPlane, NotFoundError, ensure_layout
from kefu.errors import BundleError, ConfigError
from kefu.keys import SigningKey, generate_keypair
from kefu.natsbus import NatsBus, NatsOptions
from kefu.natsserver import NatsServer, control_plane_user, inbox_prefix, node_user
from kefu.node.agent.reconcile import (
    ApplyTenant,
    FetchBundle,
    LoadBundle,
    LocalState,
    RemoveTenant,
    plan,
)
from kefu.node.agent.telemetry import TelemetryRecorder, TurnSample
from kefu.wire import (
    Assignment,
    BundleRef,
    ConfigVersion,
    DesiredTenant,
    Lease,
    ModelVersion,
    TenantRecord,
    WireError,
    desired_bucket,
    digest,
)

# ---------------------------------------------------------------- pure cores (no server)


def _inputs(**kw: object) -> DesiredInputs:
    cfg = ConfigVersion(tenant="t", version=1, yaml="x", digest=digest("x"))
    mv = ModelVersion(
        name="m", version="1", task="intent", family="ngram", labels=[], size=1, sha256="ab"
    )
    base = dict(
        tenants={"t": TenantRecord(id="t", current_config=1)},
        assignments=[Assignment(tenant="t", region="r", models={"intent": "m@1"})],
        configs={("t", 1): cfg},
        models={"m@1": mv},
    )
    base.update(kw)
    return DesiredInputs(**base)  # type: ignore[arg-type]


def test_plan_desired_puts_once_then_nothing_and_deletes_unassigned() -> None:
    actions = plan_desired(_inputs(), {})
    assert [type(a) for a in actions] == [PutDesired]
    put = actions[0]
    assert isinstance(put, PutDesired) and put.doc.models["intent"].ref == "m@1"
    assert plan_desired(_inputs(), {("r", "t"): put.doc.fingerprint()}) == []
    gone = plan_desired(_inputs(assignments=[]), {("r", "t"): put.doc.fingerprint()})
    assert gone == [DeleteDesired(region="r", tenant="t")]


def test_plan_desired_waits_for_missing_model_instead_of_writing_a_broken_doc() -> None:
    assert plan_desired(_inputs(models={}), {}) == []


def test_node_plan_fetches_loads_then_applies_and_skips_refused() -> None:
    doc = DesiredTenant(
        tenant="t",
        region="r",
        config_version=1,
        config_digest="d",
        config_yaml="x",
        models={"intent": BundleRef(name="m", version="2")},
    )
    acts = plan({"t": doc}, LocalState())
    assert [type(a) for a in acts["t"]] == [FetchBundle, LoadBundle, ApplyTenant]
    acts = plan({"t": doc}, LocalState(stored=frozenset({"m@2"}), loaded=frozenset({"m@2"})))
    assert [type(a) for a in acts["t"]] == [ApplyTenant]
    assert plan({"t": doc}, LocalState(refused={"t": doc.fingerprint()})) == {}
    assert plan({"t": doc}, LocalState(applied={"t": doc.fingerprint()})) == {}
    assert plan({}, LocalState(applied={"t": "x"})) == {"t": [RemoveTenant(tenant="t")]}
    off = doc.model_copy(update={"enabled": False})
    assert plan({"t": off}, LocalState(applied={"t": "x"})) == {"t": [RemoveTenant(tenant="t")]}


def test_decide_lease() -> None:
    assert decide_lease(None, "a", 100.0, 5.0) == Lease(holder="a", expires_at=105.0, term=1)
    held = Lease(holder="b", expires_at=103.0, term=4)
    assert decide_lease(held, "a", 100.0, 5.0) is None
    assert decide_lease(held, "a", 104.0, 5.0) == Lease(holder="a", expires_at=109.0, term=5)
    assert decide_lease(held, "b", 101.0, 5.0) == Lease(holder="b", expires_at=106.0, term=4)


def test_telemetry_buffer_is_bounded_and_counts_drops() -> None:
    rec = TelemetryRecorder(node_id="n", region="r", max_buffered=3)
    for i in range(5):
        rec.record_turn(TurnSample(tenant="t", scenario="s", model_version="m@1", latency_ms=7.0))
        rec.close_window(now=1000.0 + i)
    assert rec.buffered == 3 and rec.dropped == 2
    first = rec.peek()
    assert first is not None and first.seq == 3  # oldest dropped first
    agg = first.aggregates[0]
    assert agg.turns == 1 and agg.latency_buckets[1] == 1  # 7 ms falls in the (5, 10] bucket
    assert rec.close_window() is None  # an empty window sends nothing


# ---------------------------------------------------------------- services on the memory bus


@pytest.fixture
async def mem_cp(ops_key: SigningKey) -> ControlPlane:
    bus = MemoryBus()
    await ensure_layout(bus)
    return ControlPlane(bus, trust=trust_with(ops_key))


async def test_config_history_diff_and_rollback(mem_cp: ControlPlane) -> None:
    cp = mem_cp
    await cp.create_tenant("demo-shop", actor=ACTOR)
    v1 = await cp.put_config("demo-shop", DEMO_YAML, actor=ACTOR)
    edited = DEMO_YAML.replace("name:", "name: ", 1)
    v2 = await cp.put_config("demo-shop", edited, actor=ACTOR, comment="edit")
    assert (v1.version, v2.version) == (1, 2)
    assert (await cp.put_config("demo-shop", edited, actor=ACTOR)).version == 2  # idempotent
    assert "+" in await cp.diff_config("demo-shop", 1, 2)
    back = await cp.rollback_config("demo-shop", 1, actor=ACTOR)
    assert back.version == 3 and back.yaml == DEMO_YAML and back.rollback_of == 1
    assert (await cp.get_tenant("demo-shop")).current_config == 3
    actions = [e.action for e in await cp.audit_log(tenant="demo-shop")]
    assert actions == ["tenant.create", "config.put", "config.put", "config.rollback"]
    with pytest.raises(NotFoundError):
        await cp.get_config("demo-shop", 9)


async def test_config_for_another_tenant_is_refused(mem_cp: ControlPlane) -> None:
    await mem_cp.create_tenant("acme", actor=ACTOR)
    with pytest.raises(ConfigError, match=r"tenant\.id"):
        await mem_cp.put_config("acme", DEMO_YAML, actor=ACTOR)


async def test_models_are_verified_and_immutable(
    mem_cp: ControlPlane, tmp_path: Path, ops_key: SigningKey
) -> None:
    packed, version = shipped_packed("demo-shop-intent")
    mv = await mem_cp.publish_model(packed, actor=ACTOR)
    assert mv.version == version and mv.labels
    assert (await mem_cp.publish_model(packed, actor=ACTOR)).sha256 == mv.sha256  # idempotent
    stranger = generate_keypair(tmp_path / "k2", "stranger")
    with pytest.raises(BundleError, match="not among"):
        await mem_cp.publish_model(new_version(tmp_path, stranger, "evil"), actor=ACTOR)
    # The same verified content, re-signed (other tar bytes): the same version, idempotent.
    resigned = new_version(tmp_path, ops_key, version)
    assert resigned != packed
    assert (await mem_cp.publish_model(resigned, actor=ACTOR)).sha256 == mv.sha256
    other = new_version(tmp_path / "o", ops_key, version, pad=10)  # different file content
    with pytest.raises(Conflict, match="immutable"):
        await mem_cp.publish_model(other, actor=ACTOR)


async def test_api_keys_issued_once_stored_hashed_and_revoked(mem_cp: ControlPlane) -> None:
    await mem_cp.create_tenant("acme", actor=ACTOR)
    key_id, key = await mem_cp.issue_key("acme", actor=ACTOR)
    rec = await mem_cp.get_tenant("acme")
    assert key not in rec.model_dump_json() and len(rec.active_key_hashes()) == 1
    rec = await mem_cp.revoke_key("acme", key_id, actor=ACTOR)
    assert rec.active_key_hashes() == []


async def test_assign_removes_slots_and_pins(mem_cp: ControlPlane) -> None:
    await seed_demo(mem_cp, "r1")
    a = await mem_cp.assign(
        "demo-shop",
        "r1",
        scenario_models={
            "logistics": {"intent": "demo-shop-intent"},
            "returns": {"intent": "demo-shop-intent"},
        },
        actor=ACTOR,
    )
    assert set(a.scenario_models) == {"logistics", "returns"}
    a = await mem_cp.assign(
        "demo-shop", "r1", remove=["logistics:intent", "sentiment"], actor=ACTOR
    )
    assert set(a.scenario_models) == {"returns"} and set(a.models) == {"intent"}
    a = await mem_cp.assign("demo-shop", "r1", remove=["returns"], actor=ACTOR)
    assert a.scenario_models == {}
    with pytest.raises(WireError, match="nothing to remove"):
        await mem_cp.assign("demo-shop", "r1", remove=["returns"], actor=ACTOR)
    (stored,) = await mem_cp.list_assignments("demo-shop")
    assert stored.scenario_models == {} and set(stored.models) == {"intent"}  # refused: unchanged


async def test_reconciler_compiles_assignment_into_region_bucket(mem_cp: ControlPlane) -> None:
    await seed_demo(mem_cp, "r1")
    rec = DesiredReconciler(mem_cp.bus)
    assert await rec.run_once() == 1
    assert await rec.run_once() == 0  # converged: nothing rewritten
    docs = await snapshot(mem_cp.bus, desired_bucket("r1"))
    assert list(docs) == ["demo-shop"]
    await mem_cp.set_tenant_enabled("demo-shop", False, actor=ACTOR)
    assert await rec.run_once() == 1


# ---------------------------------------------------------------- real nats-server


async def test_control_plane_restart_loses_nothing(
    nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        await seed_demo(stack.cp)
        await stack.cp.put_config("demo-shop", DEMO_YAML.replace("name:", "name: ", 1), actor=ACTOR)
        await stack.reconciler.run_once()
    nats_server.stop()  # the whole centre goes down, server included
    nats_server.start()
    async with control_plane(nats_server.url, trust_with(ops_key), replica="cp-2") as stack:
        cp = stack.cp
        assert [t.id for t in await cp.list_tenants()] == ["demo-shop"]
        assert [c.version for c in await cp.list_configs("demo-shop")] == [1, 2]
        assert len(await cp.list_models()) == 2
        (a,) = await cp.list_assignments()
        assert a.region == "r1" and set(a.models) == {"intent", "sentiment"}
        assert len((await cp.get_tenant("demo-shop")).active_key_hashes()) == 1
        audit = await cp.audit_log()
        assert [e.action for e in audit][:3] == ["region.create", "tenant.create", "config.put"]
        assert len(audit) == 8
        assert await stack.reconciler.run_once() == 0  # desired state already what it should be


async def test_two_replicas_one_leader_and_failover(
    nats_server: NatsServer, ops_key: SigningKey
) -> None:
    trust = trust_with(ops_key)
    async with (
        control_plane(nats_server.url, trust, replica="cp-a", lease_ttl_s=1.5) as a,
        control_plane(nats_server.url, trust, replica="cp-b", lease_ttl_s=1.5) as b,
    ):
        for _ in range(50):
            if a.lease.is_leader or b.lease.is_leader:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # several renewals: still exactly one
        assert a.lease.is_leader != b.lease.is_leader
        leader, follower = (a, b) if a.lease.is_leader else (b, a)
        assert await follower.cp.leader() == leader.lease.me
        await leader.lease.stop(release=False)  # crash: no hand-over, the lease must expire
        t0 = time.monotonic()
        while not follower.lease.is_leader and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.1)
        assert follower.lease.is_leader
        assert await leader.cp.leader() == follower.lease.me


async def test_node_credentials_cannot_read_another_regions_desired_state(
    tmp_path: Path, ops_key: SigningKey
) -> None:
    cp_user = control_plane_user()
    n1 = node_user("n1", "east")
    with NatsServer(tmp_path / "nats", users=[cp_user, n1]) as srv:
        admin = await NatsBus.connect(
            NatsOptions(servers=[srv.url], user=cp_user.user, password=cp_user.password)
        )
        node = await NatsBus.connect(
            NatsOptions(
                servers=[srv.url],
                user=n1.user,
                password=n1.password,
                inbox_prefix=inbox_prefix(n1.user),
                timeout_s=1.0,
            )
        )
        try:
            await ensure_layout(admin, ["east", "west"])
            await admin.kv_put(desired_bucket("east"), "acme", b"east-doc")
            await admin.kv_put(desired_bucket("west"), "acme", b"west-secret")
            got = await node.kv_get(desired_bucket("east"), "acme")
            assert got is not None and got.value == b"east-doc"
            with pytest.raises(BusUnavailable):
                await node.kv_get(desired_bucket("west"), "acme")
            with pytest.raises(BusUnavailable):  # and it cannot write desired state
                await node.kv_put(desired_bucket("east"), "acme", b"forged")
            with pytest.raises(BusUnavailable):  # nor another node's status
                await node.kv_put("kefu_nodes", "n2", b"{}")
            await node.kv_put("kefu_nodes", "n1", b"{}")  # its own: fine
            await node.publish("kefu.telemetry.east.n1", b"{}")
            with pytest.raises(BusUnavailable):
                await node.publish("kefu.telemetry.west.n1", b"{}")
            assert (await admin.kv_get(desired_bucket("east"), "acme")).value == b"east-doc"  # type: ignore[union-attr]
        finally:
            await node.close()
            await admin.close()


def test_pure_planners_import_no_io_libraries() -> None:
    from test_layers import loaded_after

    pure = [
        "kefu.control_plane.desired",
        "kefu.control_plane.leader",
        "kefu.node.agent.reconcile",
        "kefu.node.agent.telemetry",
        "kefu.wire",
        "kefu.bus",
    ]
    assert not loaded_after(pure) & {"grpc", "nats", "onnxruntime", "sqlite3", "torch"}


async def test_telemetry_retries_are_counted_once() -> None:
    from kefu.control_plane.telemetry import summarise
    from kefu.wire import STREAM_TELEMETRY, TelemetryBatch, decode, encode

    bus = MemoryBus()
    await ensure_layout(bus)
    rec = TelemetryRecorder(node_id="n", region="r")
    rec.record_turn(TurnSample(tenant="t", scenario="s", model_version="m@1", latency_ms=3.0))
    batch = rec.close_window()
    assert batch is not None
    for _ in range(2):  # the first acknowledgement was lost: sent again with the same id
        await bus.publish("kefu.telemetry.r.n", encode(batch), msg_id=f"n:{batch.seq}")
    msgs = await bus.stream_read(STREAM_TELEMETRY)
    assert len(msgs) == 1
    twice = [decode(TelemetryBatch, msgs[0].data)] * 2  # even if a copy got through
    (series,) = summarise(twice)
    assert series.total.turns == 1


async def test_snapshots_do_not_pile_up_consumers(tmp_path: Path) -> None:
    """A leader reads whole buckets several times a second: each one-off read must let go of
    its ordered consumer at once (nats-py's default keeps it 5 min; a stream allows 1,000)."""
    with NatsServer(tmp_path / "nats") as srv:
        bus = await NatsBus.connect(NatsOptions(servers=[srv.url]))
        try:
            await bus.ensure_kv("kefu_probe")
            await bus.kv_put("kefu_probe", "k", b"v")
            for _ in range(40):
                assert set(await snapshot(bus, "kefu_probe")) == {"k"}
            deadline = time.monotonic() + 15
            while True:
                left = (await bus.js.stream_info("KV_kefu_probe")).state.consumer_count
                if left == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)
            assert left == 0, f"{left} consumers left behind"
        finally:
            await bus.close()
