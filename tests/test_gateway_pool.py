"""The node pool over real gRPC: stickiness, least-loaded spreading, ejection of a killed node
with new conversations continuing on the other, and its return after recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from gateway_support import (
    DEMO_KEY,
    gateway_stack,
    spawn_node,
    wait_until,
)
from packaging_helpers import free_port

from kefu.node.gateway.app import Gateway
from kefu.node.gateway.config import GatewayConfig, resolve_gateway
from kefu.node.gateway.routing import NodeHealth


async def test_conversations_stick_to_their_node_and_new_ones_spread(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, nodes=2, tenant={"rate": {"rate": 100, "burst": 100}}) as s:

        async def start() -> str:
            r = await s.http.post(s.chat("/messages"), json={"text": "hello"})
            assert r.status == 200
            return str((await r.json())["session_id"])

        sids = await asyncio.gather(*(start() for _ in range(16)))
        by_node = {nid: [x for x in sids if x.startswith(f"{nid}.")] for nid in s.nodes}
        assert all(len(v) >= 3 for v in by_node.values()), by_node
        for sid in sids[:6]:
            r = await s.http.post(
                s.chat("/messages"), json={"text": "how do i get a VAT invoice?", "session_id": sid}
            )
            body = await r.json()
            assert r.status == 200 and body["session_id"] == sid and body["turn_seq"] > 1
        # Each node holds exactly the sessions its prefix names (asked over the node's gRPC).
        for nid, node in s.nodes.items():
            assert node.registry is not None
            store = node.registry.tenants["demo-shop"].store
            page = await store.list_sessions(limit=500)
            assert {f"{nid}.{x.id}" for x in page.items} == set(by_node[nid])


@pytest.mark.slow
async def test_kill_one_of_two_nodes_under_load(tmp_path: Path) -> None:
    ports = {"n1": free_port(), "n2": free_port()}
    (tmp_path / "demo.key").write_text(DEMO_KEY, encoding="utf-8")
    procs = {nid: spawn_node(tmp_path, nid, port) for nid, port in ports.items()}
    raw = {
        "listen": "127.0.0.1:0",
        "nodes": [{"id": k, "address": f"127.0.0.1:{p}"} for k, p in ports.items()],
        "tenants": [
            {"id": "demo-shop", "api_key_file": "demo.key", "rate": {"rate": 10000, "burst": 10000}}
        ],
        "health": {"interval_s": 0.25, "timeout_s": 0.5, "base_ejection_s": 1.0},
    }
    resolved = resolve_gateway(GatewayConfig.model_validate(raw), base=tmp_path)
    try:
        async with (
            Gateway(resolved) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        ):
            await wait_until(lambda: len(gw.pool.healthy()) == 2, 90, "both nodes up")
            url = f"{gw.url}/v1/chat/demo-shop/messages"
            results: list[tuple[int, str]] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    r = await http.post(url, json={"text": "我的订单什么时候到"})
                    body = await r.json()
                    results.append((r.status, body.get("session_id", "")))

            workers = [asyncio.create_task(client()) for _ in range(4)]
            await wait_until(lambda: any(s.startswith("n2.") for _, s in results), 30, "n2 used")
            on_n2 = next(s for _, s in results if s.startswith("n2."))
            before_kill = len(results)
            os.kill(procs["n2"].pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_until(
                lambda: gw.pool.nodes["n2"].health is NodeHealth.EJECTED, 10, "n2 ejected"
            )
            ejected_after = time.monotonic() - killed_at
            await wait_until(lambda: len(results) >= before_kill + 400, 90, "load after the kill")
            stop.set()
            await asyncio.gather(*workers)
            failed = [st for st, _ in results if st != 200]
            after = results[before_kill:]
            assert len(failed) <= 0.01 * len(results), (len(failed), len(results))
            assert all(s.startswith("n1.") for st, s in after[20:] if st == 200)
            print(
                f"\nkill-one-of-two: {len(results)} requests, {len(failed)} failed, "
                f"n2 ejected {ejected_after * 1000:.0f} ms after SIGKILL"
            )
            # Its conversations get a clear error until region failover moves them.
            r = await http.post(url, json={"text": "还在吗", "session_id": on_n2})
            body = await r.json()
            assert r.status == 503 and body["error"]["code"] == "node_down"
            assert "Retry-After" not in r.headers or int(r.headers["Retry-After"]) >= 1
            # Back after recovery: restarted on its port, it returns to the pool.
            procs["n2"] = spawn_node(tmp_path, "n2", ports["n2"])
            await wait_until(lambda: gw.pool.nodes["n2"].health is NodeHealth.UP, 90, "n2 back")
            r = await http.post(url, json={"text": "还在吗", "session_id": on_n2})
            assert r.status == 200  # its SQLite kept the conversation
    finally:
        for p in procs.values():
            p.kill()
            p.wait(timeout=30)
