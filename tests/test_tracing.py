"""OpenTelemetry across a real gateway, a real node and a real HTTP plugin (the demo order
center): the spans of one customer message form one chain — gateway request → node turn →
inference, SQLite commit, plugin call — and the plugin's HTTP request carries the plugin
span's ``traceparent``. Also: tracing off still forwards the gateway's ``traceparent`` into
plugin calls, the OTLP exporter really posts to a collector when one config line turns it on,
and the config line is validated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kefu import tracing
from kefu.config.node import parse_node_config
from kefu.dev.stack import DemoStack, demo_tenant_copy
from kefu.errors import ConfigError
from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import GatewayConfig, resolve_gateway
from kefu.node.serving.server import Node

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(service_name="kefu-test", exporter=exporter, batch=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


async def _gateway(stack: DemoStack, tmp: Path) -> Gateway:
    assert stack.node is not None and stack.node.registry is not None
    key_file = tmp / "demo.key"
    key_file.write_text(stack.node.registry.new_keys["demo-shop"], encoding="utf-8")
    cfg = GatewayConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "nodes": [{"id": "local-1", "address": f"127.0.0.1:{stack.node.port}"}],
            "tenants": [{"id": "demo-shop", "api_key_file": str(key_file)}],
        }
    )
    return await Gateway(resolve_gateway(cfg, base=tmp)).start()


async def _order_question(stack: DemoStack, gw: Gateway, traceparent: str) -> str:
    """Ask about delivery, then give an order number (with ``traceparent``): the plugin runs."""
    with stack.db() as db:
        order = db.execute("SELECT order_number FROM orders WHERE status = 'shipped'").fetchone()
    url = f"{gw.url}/v1/chat/demo-shop/messages"
    async with aiohttp.ClientSession() as http:
        r = await http.post(url, json={"text": "我的订单什么时候到", "channel": "web"})
        assert r.status == 200, await r.text()
        session = (await r.json())["session_id"]
        r = await http.post(
            url,
            json={"text": order[0], "session_id": session, "channel": "web"},
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
        )
        assert r.status == 200, await r.text()
        body = await r.json()
        assert order[0] in body["text"], body  # the order center answered
        return str(r.headers["traceparent"])


async def _order_through_gateway(tmp_path: Path) -> tuple[str, list[str]]:
    """The traceparent the client got back, and those the order center received."""
    async with DemoStack(tmp_path / "stack") as stack:
        gw = await _gateway(stack, tmp_path)
        try:
            back = await _order_question(stack, gw, f"00-{TRACE}-{PARENT}-01")
        finally:
            await gw.close()
        return back, list(stack.order_center.traceparents)


async def test_spans_chain_from_gateway_to_plugin_call(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    back, received = await _order_through_gateway(tmp_path)
    ours = [s for s in spans.get_finished_spans() if f"{s.context.trace_id:032x}" == TRACE]
    by_id = {s.context.span_id: s for s in ours}

    def named(prefix: str) -> list[Any]:
        return [s for s in ours if s.name.startswith(prefix)]

    (gateway,) = named("gateway ")
    assert gateway.parent is not None and f"{gateway.parent.span_id:016x}" == PARENT
    assert gateway.attributes["http.route"] == "/v1/chat/{public_id}/messages"
    assert back == f"00-{TRACE}-{gateway.context.span_id:016x}-01"  # returned to the client
    (turn,) = named("node ")
    assert turn.parent.span_id == gateway.context.span_id  # continued from gRPC metadata
    assert turn.resource.attributes["service.name"] == "kefu-test"

    def under_turn(s: Any) -> bool:
        while s.parent is not None:
            if s.parent.span_id == turn.context.span_id:
                return True
            s = by_id.get(s.parent.span_id)
            if s is None:
                return False
        return False

    for name in ("inference", "sqlite commit", "plugin call"):
        found = named(name)
        assert found and all(under_turn(s) for s in found), (name, [s.name for s in ours])
    for plugin in named("plugin call"):
        assert plugin.attributes["kefu.outcome"] == "ok"
        # The plugin's HTTP request carried the plugin span as its parent.
        assert f"00-{TRACE}-{plugin.context.span_id:016x}-01" in received, received
    # Nothing of this trace was recorded outside the chain.
    assert all(s is gateway or under_turn(s) or s is turn for s in ours)


async def test_tracing_off_still_forwards_traceparent_to_plugins(tmp_path: Path) -> None:
    assert not tracing.enabled()
    back, received = await _order_through_gateway(tmp_path)
    # The gateway's span (not the client's) is the parent of the node's plugin call.
    assert back.startswith(f"00-{TRACE}-") and back in received, (back, received)


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A stand-in OTLP/HTTP collector: keeps the protobuf bodies POSTed to /v1/traces."""
    bodies: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1/traces", bodies
    finally:
        await runner.cleanup()


async def test_one_config_line_exports_node_spans_over_otlp(
    tmp_path: Path, collector: tuple[str, list[bytes]]
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    url, bodies = collector
    tenant = demo_tenant_copy(
        tmp_path / "demo-shop.yaml", order_center_url="http://127.0.0.1:9", raise_limits=False
    )
    text = (
        f"data_dir: data\nlisten: 127.0.0.1:0\ntenants: [{tenant}]\n"
        f"tracing: {{otlp_endpoint: {url}}}\n"  # the one line
    )
    resolved = parse_node_config(text, base=tmp_path)
    from kefu.node.bootstrap import node_options

    opts = node_options(resolved)
    assert opts.otlp_endpoint == url
    opts.metrics_listen = None
    node = await Node(opts).start()
    try:
        import grpc

        from kefu.v1 import bearer_metadata
        from kefu.v1 import node_pb2 as pb
        from kefu.v1 import node_pb2_grpc as pbg

        assert node.registry is not None
        md = bearer_metadata(node.registry.new_keys["demo-shop"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as ch:
            await pbg.KefuNodeStub(ch).Converse(
                pb.ConverseRequest(text="你好", channel=pb.CHANNEL_WEB),
                metadata=(*md, ("traceparent", f"00-{TRACE}-{PARENT}-01")),
                timeout=30,
            )
    finally:
        await node.drain()  # flushes the batch
    assert not tracing.enabled()
    names = set()
    for body in bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    names.add((s.name, s.trace_id.hex(), s.parent_span_id.hex()))
    assert ("node converse", TRACE, PARENT) in names, names
    assert any(n == "inference" and t == TRACE for n, t, _ in names), names


@pytest.mark.parametrize(
    "line", ["tracing: {otlp_endpoint: collector:4318}", "tracing: {otlp_endpoint: ftp://x}"]
)
def test_bad_otlp_endpoint_is_a_located_config_error(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_config(f"listen: 127.0.0.1:7400\n{line}\n", source="node.yaml", base=tmp_path)
    assert "node.yaml:2" in str(err.value) and "otlp_endpoint" in str(err.value)


def test_gateway_config_takes_the_tracing_line() -> None:
    base = {"nodes": [{"id": "a", "address": "127.0.0.1:1"}], "tenants": [{"id": "t"}]}
    cfg = GatewayConfig.model_validate(
        {**base, "tracing": {"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}}
    )
    assert cfg.tracing.otlp_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert GatewayConfig.model_validate(base).tracing.otlp_endpoint is None


def test_tracing_off_is_a_shared_noop() -> None:
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b")
    assert tracing.current_traceparent() is None
    asyncio.run(asyncio.sleep(0))
