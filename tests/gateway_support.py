"""Real nodes (in-process gRPC servers on free loopback ports, the real conversation service
and SQLite) behind a real gateway (aiohttp on a free port), for the gateway tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from test_tenant_registry import second_tenant

from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import GatewayConfig, resolve_gateway
from kefu.node.gateway.tracing import SpanSink, Tracer
from kefu.node.serving.server import Node, NodeOptions

DEMO_KEY = "demo-shop-gateway-test-key"


@dataclass
class Stack:
    nodes: dict[str, Node]
    gateway: Gateway
    http: aiohttp.ClientSession
    spans: SpanSink
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url

    def chat(self, path: str = "") -> str:
        return f"{self.url}/v1/chat/demo-shop{path}"


def demo_config(tmp: Path) -> Path:
    """The demo tenant with DEMO_KEY; the node's own rate limit raised out of the way (the
    gateway's limits are under test)."""
    path = second_tenant(tmp, "demo-shop", DEMO_KEY)
    text = path.read_text(encoding="utf-8")
    old = "  tenant:\n    rate_per_second: 50\n    burst: 200\n"
    assert old in text
    path.write_text(
        text.replace(old, "  tenant:\n    rate_per_second: 100000\n    burst: 100000\n"),
        encoding="utf-8",
    )
    return path


async def start_node(tmp: Path, name: str, config: Path, listen: str = "127.0.0.1:0") -> Node:
    opts = NodeOptions(
        data_dir=tmp / name,
        listen=listen,
        metrics_listen=None,
        tenant_configs=[config],
        run_retention=False,
        grace_s=1.0,
    )
    return await Node(opts).start()


@contextlib.asynccontextmanager
async def gateway_stack(
    tmp: Path, *, nodes: int = 1, tenant: dict[str, Any] | None = None, **cfg: Any
) -> AsyncIterator[Stack]:
    config = demo_config(tmp)
    (tmp / "demo.key").write_text(DEMO_KEY + "\n", encoding="utf-8")
    started: dict[str, Node] = {}
    try:
        for i in range(nodes):
            started[f"n{i + 1}"] = await start_node(tmp, f"n{i + 1}", config)
        raw: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "nodes": [{"id": k, "address": f"127.0.0.1:{n.port}"} for k, n in started.items()],
            "tenants": [{"id": "demo-shop", "api_key_file": "demo.key", **(tenant or {})}],
            "health": {"interval_s": 0.2, "timeout_s": 0.5},
            **cfg,
        }
        resolved = resolve_gateway(GatewayConfig.model_validate(raw), base=tmp)
        sink = SpanSink()
        async with (
            Gateway(resolved, tracer=Tracer(sink=sink)) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        ):
            yield Stack(nodes=started, gateway=gw, http=http, spans=sink, tmp=tmp)
    finally:
        for n in started.values():
            await n.drain()


async def node_session_count(stack: Stack) -> int:
    """Sessions stored on all the stack's nodes (asked over their own gRPC API)."""
    import grpc

    from kefu.v1 import bearer_metadata
    from kefu.v1 import node_pb2 as pb
    from kefu.v1 import node_pb2_grpc as pbg

    total = 0
    for node in stack.nodes.values():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as ch:
            reply = await pbg.KefuNodeStub(ch).ListSessions(
                pb.ListSessionsRequest(page_size=500), metadata=bearer_metadata(DEMO_KEY), timeout=5
            )
            total += len(reply.sessions)
    return total


def spawn_node(tmp: Path, name: str, port: int) -> Any:
    """``kefu node run`` as a real child process serving the demo tenant with DEMO_KEY (the
    caller waits for it through the gateway's health checks)."""
    import subprocess
    import sys

    kefu = str(Path(sys.executable).parent / "kefu")
    return subprocess.Popen(
        [kefu, "node", "run", "--config", str(demo_config(tmp)), "--data-dir", str(tmp / name),
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", "", "--log-format", "text"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
