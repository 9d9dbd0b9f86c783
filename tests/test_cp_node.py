"""Control plane ↔ node over a real nats-server: model rollout under load, configs refused
by the control plane and by the node, offline operation and the telemetry backlog."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cp_support import (
    ACTOR,
    DEMO_YAML,
    SecuredNats,
    control_plane,
    cp_node,
    new_version,
    seed_demo,
    trust_with,
)
from support.grpc_node import stub_to, talk_through
from support.polling import eventually

from kefu.errors import ConfigError
from kefu.keys import SigningKey
from kefu.natsserver import NatsServer
from kefu.node.agent.agent import NodeAgent
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.wire import STREAM_TELEMETRY, TelemetryBatch, decode, desired_bucket, encode

pytestmark = pytest.mark.slow


def serving(agent: NodeAgent, tenant: str, ref: str) -> bool:
    o = agent.observed.get(tenant)
    return o is not None and o.state == "serving" and ref in o.models.values()


async def test_new_model_version_hot_swaps_under_load_with_zero_failed_rpcs(
    tmp_path: Path, secured_nats: SecuredNats, ops_key: SigningKey
) -> None:
    # The deployment's NATS users (issue 10 C1: with anonymous access this test could not see
    # that the node's user may not download a new bundle).
    nats, n1 = secured_nats, secured_nats.nodes["n1"]
    async with control_plane(nats.url, trust_with(ops_key), user=nats.cp) as stack:
        api_key = await seed_demo(stack.cp)
        async with cp_node(tmp_path, nats.url, ops_key, user=n1) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            assert node.service is not None
            from kefu.node.serving.admission import RateLimit, RateLimiter

            node.service.limiter = RateLimiter(RateLimit(rate=1e6, burst=1e6))
            md = bearer_metadata(api_key)
            async with stub_to(node) as stub:

                async def rollout() -> None:
                    await asyncio.sleep(0.1)
                    packed = new_version(tmp_path, ops_key, "cp-2")
                    await stack.cp.publish_model(packed, actor=ACTOR)
                    await stack.cp.assign(
                        "demo-shop", "r1", models={"intent": "demo-shop-intent@cp-2"}, actor=ACTOR
                    )
                    await agent.wait_for(
                        lambda: serving(agent, "demo-shop", "demo-shop-intent@cp-2")
                    )

                run = await talk_through(stub, md, rollout, clients=6, max_turns=20000)
            seen = run.seen
            assert run.failures == []
            assert seen[-1] == "demo-shop-intent@cp-2"
            assert any(v != "demo-shop-intent@cp-2" for v in seen)  # swapped mid-run
            nodes = await eventually(  # the next heartbeat reports it
                stack.cp.list_nodes,
                lambda ns: (
                    bool(ns)
                    and ns[0].tenants["demo-shop"].models.get("intent") == "demo-shop-intent@cp-2"
                ),
            )
            assert nodes[0].tenants["demo-shop"].models["intent"] == "demo-shop-intent@cp-2"
            # The old version is unloaded once no tenant has used it for the grace period.
            old = {r for r in agent.target.loaded() if r.startswith("demo-shop-intent@")}
            assert old > {"demo-shop-intent@cp-2"}
            assert await agent.target.release_unused(60.0) == []  # within the grace period
            released = await agent.target.release_unused(0.0)
            assert set(released) == old - {"demo-shop-intent@cp-2"}
            assert "demo-shop-intent@cp-2" in agent.target.loaded()


async def test_invalid_config_refused_by_cp_and_by_node_which_keeps_last_known_good(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        api_key = await seed_demo(stack.cp)
        broken = DEMO_YAML.replace("tenant:\n", "tenant:\n  bogus_field: 1\n", 1)
        assert broken != DEMO_YAML
        with pytest.raises(ConfigError) as ei:
            await stack.cp.put_config("demo-shop", broken, actor=ACTOR)
        assert "demo-shop.yaml:" in str(ei.value)
        assert len(await stack.cp.list_configs("demo-shop")) == 1  # nothing stored

        async with cp_node(tmp_path, nats_server.url, ops_key) as (node, agent):
            await agent.wait_for(lambda: "demo-shop" in agent.applied)
            good_fp = agent.applied["demo-shop"]
            # Force an invalid config into the desired state, as a buggy writer would.
            bucket = desired_bucket("r1")
            entry = await stack.bus.kv_get(bucket, "demo-shop")
            assert entry is not None
            from kefu.wire import DesiredTenant

            doc = decode(DesiredTenant, entry.value)
            forced = doc.model_copy(update={"config_yaml": broken, "config_version": 99})
            await stack.lease.stop()  # no leader: nobody repairs the forced document
            await stack.reconciler.stop()
            await stack.bus.kv_put(bucket, "demo-shop", encode(forced))
            await agent.wait_for(lambda: agent.observed["demo-shop"].state == "refused")
            obs = agent.observed["demo-shop"]
            assert "bogus_field" in obs.error and obs.fingerprint == good_fp
            assert agent.applied["demo-shop"] == good_fp
            async with stub_to(node) as stub:
                r = await stub.Converse(
                    pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="我的订单什么时候到"),
                    metadata=bearer_metadata(api_key),
                )
            assert r.intent == "delivery_tracking"  # still serving last-known-good
            nodes = await eventually(
                stack.cp.list_nodes,
                lambda ns: any(
                    "demo-shop" in n.tenants and n.tenants["demo-shop"].state == "refused"
                    for n in ns
                ),
            )
            status = {n.node_id: n for n in nodes}["n1"]
            assert status.tenants["demo-shop"].state == "refused"
            assert "bogus_field" in status.tenants["demo-shop"].error


async def test_nats_down_node_serves_then_telemetry_backlog_arrives(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        api_key = await seed_demo(stack.cp)
        await stack.reconciler.run_once()  # desired state written before the CP goes away
    async with cp_node(tmp_path, nats_server.url, ops_key) as (node, agent):
        await agent.wait_for(lambda: "demo-shop" in agent.applied)
        nats_server.kill()
        md = bearer_metadata(api_key)
        async with stub_to(node) as stub:
            for text in ["我的订单什么时候到", "refund please", "hello"] * 3:
                r = await stub.Converse(
                    pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=text), metadata=md
                )
                assert r.text
            assert r.intent == "greeting"  # rated 2 and corrected: the model was wrong
            await stub.SubmitFeedback(
                pb.SubmitFeedbackRequest(
                    session_id=r.session_id,
                    turn_seq=r.turn_seq,
                    rating=2,
                    corrected_intent="order_query",
                ),
                metadata=md,
            )
        await asyncio.sleep(1.0)  # several telemetry intervals while offline
        assert agent.telemetry.buffered >= 1
        nats_server.start()
        from kefu.natsbus import NatsBus, NatsOptions

        reader = await NatsBus.connect(NatsOptions(servers=[nats_server.url]))
        try:
            turns = 0
            for _ in range(100):
                msgs = await reader.stream_read(STREAM_TELEMETRY)
                batches = [decode(TelemetryBatch, m.data) for m in msgs]
                turns = sum(a.turns for b in batches for a in b.aggregates)
                if turns >= 9 and any(a.feedback for b in batches for a in b.aggregates):
                    break
                await asyncio.sleep(0.2)
            assert turns == 9
            aggs = [a for b in batches for a in b.aggregates]
            assert sum(a.feedback for a in aggs) == 1 and sum(a.rating_sum for a in aggs) == 2
            assert sum(a.corrected_wrong for a in aggs) == 1
            assert all(a.tenant == "demo-shop" for b in batches for a in b.aggregates)
            assert agent.telemetry.buffered == 0
        finally:
            await reader.close()
        # The agent re-created its watcher after the reconnect: a new config version arrives.
        async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
            edited = DEMO_YAML.replace("name:", "name: ", 1)
            await stack.cp.put_config("demo-shop", edited, actor=ACTOR)
            await agent.wait_for(lambda: agent.observed["demo-shop"].config_version == 2)


async def test_node_restart_offline_serves_last_known_good(
    tmp_path: Path, nats_server: NatsServer, ops_key: SigningKey
) -> None:
    async with control_plane(nats_server.url, trust_with(ops_key)) as stack:
        api_key = await seed_demo(stack.cp)
        await stack.reconciler.run_once()  # desired state written before the CP goes away
    async with cp_node(tmp_path, nats_server.url, ops_key) as (_, agent):
        await agent.wait_for(lambda: "demo-shop" in agent.applied)
    nats_server.stop()
    async with cp_node(tmp_path, nats_server.url, ops_key) as (node, agent):
        assert agent.bus is None  # nothing reachable
        async with stub_to(node) as stub:
            r = await stub.Converse(
                pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="how do i get a VAT invoice?"),
                metadata=bearer_metadata(api_key),
            )
        assert r.intent == "invoice"
