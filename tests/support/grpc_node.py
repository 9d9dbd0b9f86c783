"""A real node in-process with a gRPC stub on loopback, and the clients of a hot swap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kefu.config import hash_api_key
from kefu.node.dialog.tenant import DEMO_TENANT_CONFIG, demo_key_path
from kefu.node.serving.server import Node, NodeOptions
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb
from kefu.v1 import node_pb2_grpc as pbg

Metadata = tuple[tuple[str, str], ...]


def node_options(data_dir: Path, **kw: object) -> NodeOptions:
    """A test node's options: loopback port 0, no metrics endpoint unless given."""
    base: dict[str, object] = {"listen": "127.0.0.1:0", "metrics_listen": None}
    return NodeOptions(data_dir=data_dir, **{**base, **kw})  # type: ignore[arg-type]


def demo_key(node: Node) -> Metadata:
    """The demo tenant's bearer metadata (the key file the node wrote on first start)."""
    path = demo_key_path(node.options.data_dir, "demo-shop")
    return bearer_metadata(path.read_text(encoding="utf-8").strip())


def second_tenant(tmp_path: Path, tenant_id: str, key: str) -> Path:
    """A copy of the demo config under another tenant id with one configured key."""
    text = DEMO_TENANT_CONFIG.read_text(encoding="utf-8")
    text = text.replace("id: demo-shop", f"id: {tenant_id}", 1)
    text = text.replace(
        "api_keys: []",
        f"api_keys:\n  - id: main\n    sha256: {hash_api_key(key)}\n"
        "    created_at: 2026-11-25T00:00:00Z",
        1,
    )
    p = tmp_path / f"{tenant_id}.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@asynccontextmanager
async def stub_to(node: Node) -> AsyncIterator[pbg.KefuNodeStub]:
    """A stub on an aio channel to a started node's gRPC port; the channel closes on exit."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        yield pbg.KefuNodeStub(channel)


@asynccontextmanager
async def serving(opts: NodeOptions) -> AsyncIterator[tuple[Node, pbg.KefuNodeStub]]:
    """A started node and a stub to it; both closed on exit."""
    async with Node(opts) as node, stub_to(node) as stub:
        yield node, stub


@dataclass
class SwapRun:
    """What the clients saw: the intent model version of every answered turn, and errors."""

    seen: list[str] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)


async def talk_through(
    stub: pbg.KefuNodeStub,
    metadata: Metadata,
    change: Callable[[], Awaitable[None]],
    *,
    clients: int,
    max_turns: int,
) -> SwapRun:
    """``clients`` concurrent clients converse while ``change`` runs (a model swap or a
    rollout); each stops a few turns after ``change`` returned, or after ``max_turns``."""
    run = SwapRun()
    changed = asyncio.Event()
    texts = ["我的订单什么时候到", "refund please", "发票", "hello"]

    async def client(i: int) -> None:
        after = n = 0
        while after < 5 and n < max_turns:  # talk until a few turns have run after the change
            try:
                r = await stub.Converse(
                    pb.ConverseRequest(channel=pb.CHANNEL_WEB, text=texts[(i + n) % 4]),
                    metadata=metadata,
                )
                run.seen.append(r.model_versions["intent"])
            except grpc.aio.AioRpcError as exc:
                run.failures.append(exc)
            n += 1
            after += changed.is_set()

    async def changer() -> None:
        await change()
        changed.set()

    await asyncio.gather(*(client(i) for i in range(clients)), changer())
    return run
