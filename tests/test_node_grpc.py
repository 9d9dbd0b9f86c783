"""The node over real gRPC on a free loopback port: real tenants, SQLite, shipped bundles."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.grpc_node import demo_key, serving, talk_through

from kefu.errors import PermanentError
from kefu.node.serving.server import Node, NodeOptions, PortInUse
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg


async def test_converse_in_chinese_and_english(node: Node, stub: pbg.KefuNodeStub) -> None:
    md = demo_key(node)
    zh = await stub.Converse(
        pb.ConverseRequest(text="我的订单什么时候到", channel=pb.CHANNEL_APP), metadata=md
    )
    assert (zh.intent, zh.scenario, zh.language) == ("delivery_tracking", "logistics", "zh")
    assert zh.session_id and zh.turn_seq == 1 and zh.server_latency_us > 0
    assert zh.model_versions["intent"].startswith("demo-shop-intent@")
    en = await stub.Converse(
        pb.ConverseRequest(text="how do i get a VAT invoice?", session_id=zh.session_id),
        metadata=md,
    )
    assert en.session_id == zh.session_id and en.language == "en" and en.intent == "invoice"
    view = await stub.GetSession(pb.GetSessionRequest(session_id=zh.session_id), metadata=md)
    assert [t.role for t in view.turns] == [pb.ROLE_USER, pb.ROLE_BOT, pb.ROLE_USER, pb.ROLE_BOT]
    assert view.turns[1].text == zh.text and view.turns[3].text == en.text


async def test_stream_emits_typing_then_reply_then_handoff(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    events = [
        e
        async for e in stub.ConverseStream(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="转人工"), metadata=demo_key(node)
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["typing", "reply", "handoff"]
    assert events[1].reply.handoff and events[2].handoff.handoff_id == events[1].reply.handoff_id


async def test_authentication_and_tenant_isolation(node: Node, stub: pbg.KefuNodeStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Converse(pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="hi"))
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="hi"),
            metadata=bearer_metadata("wrong-key"),
        )
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    mine = await stub.Converse(
        pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="你好"), metadata=demo_key(node)
    )
    acme = bearer_metadata("acme-key")
    for call in (
        stub.GetSession(pb.GetSessionRequest(session_id=mine.session_id), metadata=acme),
        stub.Converse(
            pb.ConverseRequest(text="hi", session_id=mine.session_id),
            metadata=acme,
        ),
        stub.EndSession(pb.EndSessionRequest(session_id=mine.session_id), metadata=acme),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListSessions(pb.ListSessionsRequest(), metadata=acme)
    assert mine.session_id not in {s.session_id for s in listed.sessions}
    own = await stub.ListSessions(pb.ListSessionsRequest(), metadata=demo_key(node))
    assert mine.session_id in {s.session_id for s in own.sessions}


@pytest.mark.parametrize("text", ["", "   ", "x" * 4097, "bad\x07bell"])
async def test_bad_text_is_invalid_argument(node: Node, stub: pbg.KefuNodeStub, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=text), metadata=demo_key(node)
        )
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/" in (ei.value.details() or "")  # English / Chinese message


async def test_invalid_utf8_bytes_are_invalid_argument(node: Node) -> None:
    # Field 4 (text), wire type 2, 2 bytes: 0xff 0xfe is not UTF-8.
    raw = bytes([0x22, 0x02, 0xFF, 0xFE])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        call = channel.unary_unary(
            "/kefu.v1.KefuNode/Converse",
            request_serializer=lambda b: b,
            response_deserializer=pb.ConverseReply.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call(raw, metadata=demo_key(node))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_feedback_end_session_and_health(node: Node, stub: pbg.KefuNodeStub) -> None:
    md = demo_key(node)
    r = await stub.Converse(
        pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="退货怎么弄"), metadata=md
    )
    fb = await stub.SubmitFeedback(
        pb.SubmitFeedbackRequest(session_id=r.session_id, rating=5, resolved=True), metadata=md
    )
    assert fb.feedback_id
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(session_id=r.session_id, rating=9), metadata=md
        )
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ended = await stub.EndSession(pb.EndSessionRequest(session_id=r.session_id), metadata=md)
    assert ended.status == pb.SESSION_STATUS_ENDED
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Converse(
            pb.ConverseRequest(text="还在吗", session_id=r.session_id),
            metadata=md,
        )
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        h = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kefu.v1.KefuNode")
        )
    assert h.status == health_pb2.HealthCheckResponse.SERVING


async def test_second_node_on_the_same_port_is_refused(node: Node, tmp_path: Path) -> None:
    opts = NodeOptions(
        data_dir=tmp_path / "other", listen=f"127.0.0.1:{node.port}", metrics_listen=None
    )
    with pytest.raises(PortInUse):
        async with Node(opts):
            pass


async def test_no_loadable_tenant_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant: [\n", encoding="utf-8")
    with pytest.raises(PermanentError, match="no tenant could be loaded"):
        async with Node(
            NodeOptions(
                data_dir=tmp_path, listen="127.0.0.1:0", metrics_listen=None, tenant_configs=[bad]
            )
        ):
            pass


async def test_prometheus_metrics_count_turns_errors_and_batches(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    import urllib.request

    md = demo_key(node)
    await stub.Converse(
        pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="我的手机号13812345678，订单什么时候到"),
        metadata=md,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Converse(pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=""), metadata=md)
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'kefu_turns_total{intent="delivery_tracking"' in body
    assert 'kefu_errors_total{code="INVALID_ARGUMENT",tenant="demo-shop"} 1.0' in body
    assert "kefu_turn_latency_seconds_bucket" in body
    assert 'kefu_model_batches_total{model="demo-shop-intent"' in body
    assert "kefu_admission_in_flight" in body
    assert "13812345678" not in body and "订单" not in body  # no conversation text


async def test_retention_job_purges_sessions_past_the_longest_retention(
    node: Node, stub: pbg.KefuNodeStub
) -> None:
    from datetime import UTC, datetime, timedelta

    md = demo_key(node)
    r = await stub.Converse(pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="你好"), metadata=md)
    soon = await node.purge_expired(datetime.now(UTC) + timedelta(days=31))
    assert soon["demo-shop"] == 0  # payment's 180-day retention keeps it (longest wins)
    later = await node.purge_expired(datetime.now(UTC) + timedelta(days=181))
    assert later["demo-shop"] == 1
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.GetSession(pb.GetSessionRequest(session_id=r.session_id), metadata=md)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


async def test_hot_swap_under_load_fails_no_request(tmp_path: Path) -> None:
    """Publish a new version of the intent model while clients talk: zero failed RPCs, and
    turns after the switch report the new version."""
    import asyncio
    import shutil

    from kefu.bundle import Manifest, sign_bundle, write_manifest
    from kefu.keys import generate_keypair
    from kefu.models.store import shipped_dir
    from kefu.node.serving.admission import RateLimit, RateLimiter

    data = tmp_path / "data"
    key = generate_keypair(data / "keys", "ops")
    (data / "trusted-keys").mkdir(parents=True)
    (data / "trusted-keys" / "ops.pub").write_text(key.public.to_line())
    v2 = tmp_path / "v2"
    shutil.copytree(shipped_dir() / "demo-shop-intent", v2)
    m = Manifest.from_bytes((v2 / "manifest.json").read_bytes())
    m.version = "hot-swap-2"
    write_manifest(v2, m)
    sign_bundle(v2, key)
    opts = NodeOptions(data_dir=data, listen="127.0.0.1:0", metrics_listen=None)
    async with serving(opts) as (node, stub):
        assert node.service is not None  # the demo tenant's own rate limit is not under test here
        node.service.limiter = RateLimiter(RateLimit(rate=1e6, burst=1e6))

        async def swap() -> None:
            await asyncio.sleep(0.05)
            assert node.runtime is not None
            await node.runtime.load("demo-shop-intent", v2)

        run = await talk_through(stub, demo_key(node), swap, clients=8, max_turns=5000)
    assert run.failures == []
    assert run.seen[-1] == "demo-shop-intent@hot-swap-2"
    assert any(v != "demo-shop-intent@hot-swap-2" for v in run.seen)  # it really swapped mid-run


async def test_disk_full_is_unavailable_over_grpc_and_never_corrupts(tmp_path: Path) -> None:
    import sqlite3

    from kefu.node.sessions.session_db import SQLiteStoreOptions

    opts = NodeOptions(
        data_dir=tmp_path / "data",
        listen="127.0.0.1:0",
        metrics_listen=None,
        store=SQLiteStoreOptions(max_db_bytes=200 * 1024),  # the tenant's disk quota
        max_loop_lag_s=math.inf,  # about storage: a busy CI machine must not shed these turns
    )
    async with serving(opts) as (node, stub):
        md = demo_key(node)
        first = await stub.Converse(
            pb.ConverseRequest(channel=pb.CHANNEL_WEB, text="我的订单什么时候到"), metadata=md
        )
        long_text = "我要退款，" * 250  # ~3.7 KB, under the 4 KB limit
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            for _ in range(200):
                await stub.Converse(
                    pb.ConverseRequest(text=long_text, session_id=first.session_id),
                    metadata=md,
                )
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "storage" in (ei.value.details() or "") and "Traceback" not in (
            ei.value.details() or ""
        )
        view = await stub.GetSession(pb.GetSessionRequest(session_id=first.session_id), metadata=md)
        assert len(view.turns) % 2 == 0  # whole turns only: customer and bot lines together
        db_path = opts.data_dir / "tenants" / "demo-shop" / "sessions.db"
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
