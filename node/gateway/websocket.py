"""WebSocket streaming for web and app clients: ``GET /v1/chat/{public_id}/ws``.

Query: ``channel`` (web|app|mini_program, default web), ``session_id`` (continue a
conversation after a reconnect), ``identity`` (the identity token; browsers cannot set headers
on a WebSocket), ``lang``.

Client → gateway, JSON text frames::

    {"type": "message", "text": "...", "request_id"?: "...", "language"?: "zh",
     "entry_path"?: "..."}
    {"type": "ping"}

Gateway → client::

    {"type": "ready", "session_id": "" | "...", "status"?: "active"}   once, after the upgrade
    {"type": "session", "session": {...}}    on connect with session_id: the history so far
    {"type": "typing", "session_id": "..."}
    {"type": "reply", "reply": {...}}        the bot's answer (same JSON as POST /messages)
    {"type": "handoff", "session_id", "handoff_id", "reason"}
    {"type": "agent_message", "turn": {...}} a human agent wrote (pushed while handed off)
    {"type": "status", "status": "active" | "ended" | ...}   the hand-off ended
    {"type": "error", "error": {...}}        same body as HTTP errors; the socket stays open
    {"type": "pong"}

Messages on one socket are handled one at a time (the next waits for the reply: natural
backpressure). While the session is handed off, the socket polls the node for agent turns every
``agent_poll_s``, and at once when an agent replies through this gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from kefu.node.gateway.answers import ApiError, pick_language
from kefu.node.gateway.conversations import Caller, Conversations
from kefu.node.gateway.http_api import CONVERSATIONS, INFO, MAX_BODY, METRICS, request_origin

__all__ = ["AGENT_POLL_S", "MAX_SOCKETS", "OPEN_SOCKETS", "chat_socket", "close_sockets"]

log = logging.getLogger("kefu.gateway.ws")

AGENT_POLL_S: web.AppKey[float] = web.AppKey("agent_poll_s", float)
MAX_SOCKETS: web.AppKey[int] = web.AppKey("max_sockets", int)
OPEN_SOCKETS: web.AppKey[set[Any]] = web.AppKey("open_sockets", set)


class _Conversation:
    """One customer's socket: sends, pushes, and what it knows of the session."""

    def __init__(self, ws: web.WebSocketResponse, convs: Conversations, caller: Caller, lang: str):
        self.ws, self.convs, self.caller, self.lang = ws, convs, caller, lang
        self.session_id = ""
        self.status = ""
        self.last_seq = 0
        self.wake = asyncio.Event()
        self._watch: asyncio.Event | None = None
        self.lock = asyncio.Lock()

    async def send(self, data: dict[str, Any]) -> None:
        if not self.ws.closed:
            async with self.lock:
                await self.ws.send_str(json.dumps(data, ensure_ascii=False))

    async def error(self, err: ApiError) -> None:
        await self.send({"type": "error", **err.body(self.lang, self.caller.request_id)})

    def follow(self, sid: str) -> None:
        if sid and sid != self.session_id:
            if self._watch is not None:
                self.convs.unwatch(self.session_id, self._watch)
            self.session_id = sid
            self._watch = self.convs.watch(sid)

    def close(self) -> None:
        if self._watch is not None:
            self.convs.unwatch(self.session_id, self._watch)

    async def resume(self, sid: str) -> None:
        view = await self.convs.get_session(self.caller, sid)
        self.follow(sid)
        self.status = view["status"]
        self.last_seq = max((t["seq"] for t in view["turns"]), default=0)
        await self.send({"type": "session", "session": view})

    async def message(self, frame: dict[str, Any]) -> None:
        body = {k: v for k, v in frame.items() if k != "type"}
        if self.session_id:
            body["session_id"] = self.session_id
        t = self.caller.tenant
        self.convs.limiter.take((t.id, self.caller.channel), self.convs.clock(), t.rate)
        async for ev in self.convs.send_stream(self.caller, body):
            if ev["type"] == "typing":
                self.follow(ev["session_id"])
            elif ev["type"] == "reply":
                self.last_seq = max(self.last_seq, ev["reply"]["turn_seq"])
                if ev["reply"]["handoff"]:
                    self.status = "handoff"
            await self.send(ev)
        if self.status == "handoff":
            self.wake.set()

    async def push_agent_turns(self, poll_s: float) -> None:
        """While handed off: agent turns and the end of the hand-off, as they happen."""
        while not self.ws.closed:
            if self.status != "handoff" or self._watch is None:
                await self.wake.wait()
                self.wake.clear()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch.wait(), poll_s)
            self._watch.clear()
            try:
                view = await self.convs.get_session(self.caller, self.session_id)
            except ApiError as err:
                if err.code in ("not_found", "node_down"):
                    await self.error(err)
                    self.status = ""
                continue
            for turn in view["turns"]:
                if turn["seq"] > self.last_seq and turn["role"] in ("agent", "system"):
                    await self.send({"type": "agent_message", "turn": turn})
            self.last_seq = max([self.last_seq, *(t["seq"] for t in view["turns"])])
            if view["status"] != "handoff":
                self.status = view["status"]
                await self.send({"type": "status", "status": view["status"]})


async def close_sockets(app: web.Application) -> None:
    """On shutdown: tell every client we are going away (the widget reconnects elsewhere)."""
    sockets: set[Any] = app[OPEN_SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway restarting")


async def chat_socket(request: web.Request) -> web.StreamResponse:
    convs = request.app[CONVERSATIONS]
    info = request[INFO]
    channel = request.query.get("channel", "web")
    info.channel = channel
    lang = pick_language(request.query.get("lang"), request.headers.get("Accept-Language"))
    caller = convs.admit(
        request.match_info["public_id"],
        origin=request_origin(request),
        identity_token=request.query.get("identity") or None,
        channel=channel,
        request_id=info.request_id,
        traceparent=info.traceparent,
        rate_limited=False,
    )
    info.tenant = caller.tenant.id
    open_sockets = request.app[OPEN_SOCKETS]
    if len(open_sockets) >= request.app[MAX_SOCKETS]:
        raise ApiError.of("overloaded", retry_after_s=5.0)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=request.app[MAX_BODY])
    await ws.prepare(request)
    open_sockets.add(ws)
    gauge = request.app[METRICS].websockets.labels(channel)
    gauge.inc()
    conv = _Conversation(ws, convs, caller, lang)
    pusher = asyncio.get_running_loop().create_task(
        conv.push_agent_turns(request.app[AGENT_POLL_S])
    )
    try:
        sid = request.query.get("session_id", "")
        await conv.send({"type": "ready", "session_id": sid})
        if sid:
            try:
                await conv.resume(sid)
            except ApiError as err:
                await conv.error(err)  # the widget starts a new conversation
            conv.wake.set()
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    await conv.error(ApiError.of("unsupported_media_type", detail="text frames"))
                continue
            try:
                frame = json.loads(msg.data)
                if not isinstance(frame, dict):
                    raise ValueError("not an object")
            except ValueError:
                await conv.error(ApiError.of("invalid_json"))
                continue
            kind = frame.get("type")
            if kind == "ping":
                await conv.send({"type": "pong"})
            elif kind == "message":
                try:
                    await conv.message(frame)
                except ApiError as err:
                    await conv.error(err)
            else:
                await conv.error(ApiError.of("invalid_argument", detail="type: message | ping"))
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
        conv.close()
        open_sockets.discard(ws)
        gauge.dec()
    return ws
