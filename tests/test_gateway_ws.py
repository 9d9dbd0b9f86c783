"""WebSocket streaming through the gateway to real nodes: typing → reply → hand-off, agent
messages pushed to the customer, reconnect with the conversation kept, bad frames."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from gateway_support import DEMO_KEY, gateway_stack


async def until(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive_json()
            if msg["type"] == kind:
                return msg


async def test_stream_typing_reply_handoff_and_agent_push(tmp_path: Path) -> None:
    async with (
        gateway_stack(tmp_path, agent_poll_s=5.0) as s,
        s.http.ws_connect(s.chat("/ws?channel=web")) as ws,
    ):
        assert (await ws.receive_json()) == {"type": "ready", "session_id": ""}
        await ws.send_json({"type": "message", "text": "转人工"})
        kinds = []
        for _ in range(3):
            kinds.append(await ws.receive_json())
        assert [k["type"] for k in kinds] == ["typing", "reply", "handoff"]
        sid = kinds[0]["session_id"]
        assert kinds[1]["reply"]["session_id"] == sid and kinds[1]["reply"]["handoff"]
        hid = kinds[2]["handoff_id"]
        auth = {"Authorization": f"Bearer {DEMO_KEY}"}
        await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/claim", json={"agent_id": "a1"}, headers=auth
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/reply",
            json={"agent_id": "a1", "text": "您好，我是人工客服小李"},
            headers=auth,
        )
        assert r.status == 200
        pushed = await until(ws, "agent_message")
        # Through this gateway the push is immediate, not after the 5 s poll.
        assert loop.time() - t0 < 2.0
        assert pushed["turn"]["text"] == "您好，我是人工客服小李"
        assert pushed["turn"]["role"] == "agent" and pushed["turn"]["agent_id"] == "a1"
        await s.http.post(
            f"{s.url}/v1/console/handoffs/{hid}/close",
            json={"agent_id": "a1", "resolution": "resolved"},
            headers=auth,
        )
        status = await until(ws, "status")
        assert status["status"] == "ended"


async def test_agent_messages_written_elsewhere_arrive_by_polling(tmp_path: Path) -> None:
    """An agent tool talking to the node directly (or through another gateway) still reaches
    the customer: the socket polls while the session is handed off."""
    import grpc

    from kefu.v1 import bearer_metadata
    from kefu.v1 import node_pb2 as pb
    from kefu.v1 import node_pb2_grpc as pbg

    async with (
        gateway_stack(tmp_path, agent_poll_s=0.2) as s,
        s.http.ws_connect(s.chat("/ws")) as ws,
    ):
        await ws.send_json({"type": "message", "text": "转人工"})
        handoff = await until(ws, "handoff")
        node = s.nodes[handoff["handoff_id"].split(".")[0]]
        local_hid = handoff["handoff_id"].split(".", 1)[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as ch:
            stub = pbg.KefuNodeStub(ch)
            md = bearer_metadata(DEMO_KEY)
            await stub.ClaimHandoff(
                pb.ClaimHandoffRequest(handoff_id=local_hid, agent_id="a2"), metadata=md
            )
            await stub.AgentReply(
                pb.AgentReplyRequest(handoff_id=local_hid, agent_id="a2", text="direct hello"),
                metadata=md,
            )
        pushed = await until(ws, "agent_message")
        assert pushed["turn"]["text"] == "direct hello"


async def test_reconnect_keeps_the_conversation(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path) as s:
        async with s.http.ws_connect(s.chat("/ws")) as ws:
            await ws.send_json({"type": "message", "text": "我的订单什么时候到"})
            reply = (await until(ws, "reply"))["reply"]
        sid = reply["session_id"]
        async with s.http.ws_connect(s.chat(f"/ws?session_id={sid}")) as ws:
            assert (await ws.receive_json())["type"] == "ready"
            history = await until(ws, "session")
            assert [t["role"] for t in history["session"]["turns"]] == ["user", "bot"]
            await ws.send_json({"type": "message", "text": "2024112512345678"})
            second = (await until(ws, "reply"))["reply"]
            assert second["session_id"] == sid and second["turn_seq"] > reply["turn_seq"]
        async with s.http.ws_connect(s.chat("/ws?session_id=n1.doesnotexist")) as ws:
            err = await until(ws, "error")
            assert err["error"]["code"] == "not_found"


async def test_bad_frames_get_errors_and_the_socket_stays_open(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path) as s:
        async with s.http.ws_connect(s.chat("/ws?lang=zh")) as ws:
            await ws.receive_json()
            await ws.send_str("{not json")
            assert (await until(ws, "error"))["error"]["code"] == "invalid_json"
            await ws.send_json({"type": "message", "text": ""})
            err = (await until(ws, "error"))["error"]
            assert err["code"] == "invalid_argument" and err["message"] == err["messages"]["zh"]
            await ws.send_json({"type": "dance"})
            assert (await until(ws, "error"))["error"]["code"] == "invalid_argument"
            await ws.send_bytes(b"\x00")
            assert (await until(ws, "error"))["error"]["code"] == "unsupported_media_type"
            await ws.send_json({"type": "ping"})
            assert (await until(ws, "pong"))["type"] == "pong"
        r = await s.http.get(s.chat("/ws"), headers={"Origin": "https://evil.example.com"})
        assert r.status == 403
