"""A whole demo stack in one process: the order center and a node serving the demo tenant.

Used by the end-to-end tests and ``benchmarks/flows_bench.py``; both talk to it over real
gRPC and real HTTP. The node's tenant config is the shipped demo config with the order
center's URL filled in (and, optionally, the rate limits raised so a benchmark measures the
flows, not the limiter); the order center's token reaches the node as a secret file.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from kefu.demo.order_center import OrderCenter
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG
from kefu.node.serving.server import Node, NodeOptions
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

__all__ = ["DemoStack", "demo_tenant_copy"]

_STOCK_URL = "base_url: http://127.0.0.1:7480"


def demo_tenant_copy(
    dest: Path,
    *,
    order_center_url: str,
    raise_limits: bool,
    edit: Callable[[str], str] | None = None,
) -> Path:
    """The demo tenant config pointed at ``order_center_url`` (``edit`` may change its text)."""
    text = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
    if edit is not None:
        text = edit(text)
    if _STOCK_URL not in text:
        raise ValueError("the demo tenant config no longer names the stock order-center URL")
    text = text.replace(_STOCK_URL, f"base_url: {order_center_url}", 1)
    if raise_limits:
        for ch in ("web", "app", "mini_program", "social"):
            start = text.index(f"    {ch}: {{rate_per_second:")
            end = text.index("\n", start)
            text = text[:start] + f"    {ch}: {{rate_per_second: 5000, burst: 10000}}" + text[end:]
    dest.write_text(text, encoding="utf-8")
    return dest


class DemoStack:
    """``async with DemoStack(tmp_path) as s: await s.say("我的订单什么时候到")``."""

    def __init__(
        self,
        root: Path,
        *,
        orders: int = 600,
        customers: int = 120,
        raise_limits: bool = True,
        edit_config: Callable[[str], str] | None = None,
    ):
        self.edit_config = edit_config
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.token = secrets.token_urlsafe(16)
        self.order_center = OrderCenter(
            self.root / "order-center.db",
            port=0,
            token=self.token,
            seed_orders=orders,
            seed_customers=customers,
        )
        self.raise_limits = raise_limits
        self.node: Node | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self.metadata: tuple[tuple[str, str], ...] = ()

    async def __aenter__(self) -> DemoStack:
        await self.order_center.start()
        try:
            secrets_dir = self.data_dir / "secrets"
            secrets_dir.mkdir(parents=True, exist_ok=True)
            (secrets_dir / "order_center_token").write_text(self.token, encoding="utf-8")
            tenant = demo_tenant_copy(
                self.root / "demo-shop.yaml",
                order_center_url=self.order_center.url,
                raise_limits=self.raise_limits,
                edit=self.edit_config,
            )
            self.node = Node(
                NodeOptions(
                    data_dir=self.data_dir,
                    listen="127.0.0.1:0",
                    metrics_listen="127.0.0.1:0",
                    tenant_configs=[tenant],
                )
            )
            await self.node.start()
            assert self.node.registry is not None
            self.metadata = bearer_metadata(self.node.registry.new_keys["demo-shop"])
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.node.port}")
            self.stub = pbg.KefuNodeStub(self.channel)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Idempotent."""
        if self.channel is not None:
            channel, self.channel = self.channel, None
            await channel.close()
        if self.node is not None:
            node, self.node = self.node, None
            await node.drain()
        await self.order_center.stop()

    async def say(self, text: str, session_id: str = "", **fields: Any) -> pb.ConverseReply:
        fields.setdefault("channel", pb.CHANNEL_WEB)  # required for a new session
        reply: pb.ConverseReply = await self.stub.Converse(
            pb.ConverseRequest(text=text, session_id=session_id, **fields),
            metadata=self.metadata,
            timeout=30,
        )
        return reply

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the order center's database (to check final states)."""
        uri = f"file:{self.order_center.db_path}?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        conn.row_factory = sqlite3.Row
        return conn

    def tenant_store(self) -> Any:
        assert self.node is not None and self.node.registry is not None
        return self.node.registry.tenants["demo-shop"].store
