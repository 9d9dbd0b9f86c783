"""The gateway's service: admit a caller (tenant by public id, allowed origin, identity token,
rate limit), route the request to the node that should serve it, and answer in the public JSON
of :mod:`.views`. The HTTP, WebSocket and WeChat adapters are thin wrappers around this.

Customer requests use the tenant's configured ``channel`` key towards the node; the hand-off
console forwards the agent's own key (the node decides what it may do). A new conversation
that gets no answer from its node is tried once more on another healthy node (nothing can have
been stored for it); a conversation whose node is down gets ``node_down`` until the region
failover work moves sessions — unless the tenant follows routes: then it goes to the serving
region, whose node imports the session's replicated history (docs/failover.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kefu.node.gateway.answers import ApiError
from kefu.node.gateway.config import ResolvedGateway, TenantAccess
from kefu.node.gateway.identity import (
    ANONYMOUS,
    Identity,
    origin_allowed,
    turn_metadata,
    verify_identity,
)
from kefu.node.gateway.routing import NoAnswer, NodePool, NodeState, local_id, node_of
from kefu.node.gateway.tracing import new_id
from kefu.node.gateway.traffic import Backlog, RateLimiter
from kefu.node.gateway.views import (
    CHANNELS,
    HANDOFF_STATUS,
    RESOLUTIONS,
    check_known,
    field,
    handoff_json,
    reply_json,
    session_json,
    string_map,
)
from kefu.v1 import bearer_metadata
from kefu.v1 import node_pb2 as pb

__all__ = ["Caller", "Conversations"]

MAX_TEXT = 4096
_SEND_FIELDS = {
    "text",
    "session_id",
    "language",
    "entry_path",
    "metadata",
    "request_id",
    "channel",
}


class NodeCalls(Protocol):
    """The gRPC side (:class:`kefu.node.gateway.node_links.NodeLinks`)."""

    def call(
        self,
        node: NodeState,
        method: str,
        request: Any,
        metadata: Sequence[tuple[str, str]],
        *,
        caller_key: bool = False,
    ) -> Any: ...

    def stream(
        self, node: NodeState, request: Any, metadata: Sequence[tuple[str, str]]
    ) -> AsyncIterator[Any]: ...


@functools.lru_cache(maxsize=256)
def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return tuple(bearer_metadata(key))


@dataclass(frozen=True, kw_only=True)
class Caller:
    tenant: TenantAccess
    identity: Identity
    channel: str
    request_id: str
    traceparent: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        md = (*_bearer(self.tenant.api_key), ("x-request-id", self.request_id))
        return (*md, ("traceparent", self.traceparent)) if self.traceparent else md


class Conversations:
    def __init__(
        self,
        resolved: ResolvedGateway,
        pool: NodePool,
        links: NodeCalls,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        cfg = resolved.config
        self.pool, self.links = pool, links
        self.tenants = {t.public_id: t for t in resolved.tenants}
        self.limiter = RateLimiter()
        self.backlog = Backlog(
            max_in_flight=cfg.limits.max_in_flight,
            max_waiting=cfg.limits.max_waiting,
            max_wait_s=cfg.limits.max_wait_s,
        )
        self.clock, self.wall = clock, wall
        self.rng = rng or random.Random()
        #: Which regions take a tenant's new conversations, in order (None = any node); set by
        #: the route follower when the gateway follows failover routes (docs/failover.md).
        self.regions_for: Callable[[str], list[str] | None] = lambda tenant: None
        self._watchers: dict[str, set[asyncio.Event]] = {}

    # ------------------------------------------------------------------ admission

    def tenant(self, public: str) -> TenantAccess:
        t = self.tenants.get(public)
        if t is None:
            raise ApiError.of("unknown_tenant")
        return t

    def admit(
        self,
        public: str,
        *,
        origin: str | None,
        identity_token: str | None,
        channel: str,
        request_id: str = "",
        traceparent: str = "",
        rate_limited: bool = True,
    ) -> Caller:
        tenant = self.tenant(public)
        if not origin_allowed(origin, tenant.allowed_origins):
            raise ApiError.of("forbidden", detail=f"origin {origin!r} is not allowed for this shop")
        if channel not in CHANNELS:
            raise ApiError.of(
                "invalid_argument",
                detail=f"channel must be one of {sorted(CHANNELS)} / 渠道取值无效",
            )
        identity = ANONYMOUS
        if identity_token:
            identity = verify_identity(identity_token, tenant.identity_secrets, now=self.wall())
        elif not tenant.anonymous:
            raise ApiError.of("identity_required")
        if rate_limited:
            self.limiter.take((tenant.id, channel), self.clock(), tenant.rate)
        return Caller(
            tenant=tenant,
            identity=identity,
            channel=channel,
            request_id=request_id or new_id(),
            traceparent=traceparent,
        )

    # ------------------------------------------------------------------ customers

    def _converse_request(self, caller: Caller, body: dict[str, Any]) -> pb.ConverseRequest:
        check_known(body, _SEND_FIELDS)
        text = field(body, "text", str, required=True, max_len=MAX_TEXT)
        if not text.strip():
            raise ApiError.of("invalid_argument", detail="'text' is empty / 消息为空")
        language = field(body, "language", str, max_len=8) or ""
        return pb.ConverseRequest(
            channel=CHANNELS[caller.channel],
            user_id=caller.identity.user_id,
            text=text,
            entry_path=field(body, "entry_path", str, max_len=512) or "",
            metadata=turn_metadata(string_map(body, "metadata"), caller.identity),
            language=language.lower()[:2] if language else "",
            request_id=field(body, "request_id", str, max_len=64) or caller.request_id,
        )

    def _target(self, caller: Caller, body: dict[str, Any]) -> tuple[NodeState | None, str]:
        sid = field(body, "session_id", str, max_len=128) or ""
        if not sid:
            return None, ""
        return self._holder(caller, sid), local_id(sid)

    def _holder(self, caller: Caller, sid: str) -> NodeState:
        return self.pool.holder_or_failover(sid, self.rng, self.regions_for(caller.tenant.id))

    async def send(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """One customer message → the bot's reply (a new conversation without session_id)."""
        req = self._converse_request(caller, body)
        node, sid = self._target(caller, body)
        async with self.backlog.slot():
            if node is not None:
                req.session_id = sid
                return await self._send_once(node, caller, req)
            first = self._choose_new(caller)
            try:
                return await self._send_once(first, caller, req)
            except NoAnswer:
                other = self._choose_new(caller, exclude=[first.id])
                try:
                    return await self._send_once(other, caller, req)
                except NoAnswer as exc:
                    raise exc.error from None

    def _choose_new(self, caller: Caller, *, exclude: list[str] | None = None) -> NodeState:
        """A node for a new conversation: any node, or the first region of the tenant's route
        with a healthy node (serving region, then standby regions)."""
        regions = self.regions_for(caller.tenant.id)
        if regions is None:
            return self.pool.choose_new(self.rng, exclude=exclude or ())
        return self.pool.choose_in_regions(self.rng, regions, exclude=exclude or ())

    async def _send_once(
        self, node: NodeState, caller: Caller, req: pb.ConverseRequest
    ) -> dict[str, Any]:
        try:
            reply = await self.links.call(node, "Converse", req, caller.metadata())
        except NoAnswer as exc:
            if req.session_id:
                raise exc.error from None
            raise
        return reply_json(node.id, reply)

    async def send_stream(
        self, caller: Caller, body: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """``typing``, then ``reply``, then ``handoff`` when the reply hands over."""
        req = self._converse_request(caller, body)
        node, sid = self._target(caller, body)
        async with self.backlog.slot():
            if node is None:
                node = self._choose_new(caller)
            else:
                req.session_id = sid
            try:
                async for ev in self.links.stream(node, req, caller.metadata()):
                    kind = ev.WhichOneof("event")
                    if kind == "typing":
                        sid_out = f"{node.id}.{ev.typing.session_id}"
                        yield {"type": "typing", "session_id": sid_out}
                    elif kind == "reply":
                        yield {"type": "reply", "reply": reply_json(node.id, ev.reply)}
                    elif kind == "handoff":
                        yield {
                            "type": "handoff",
                            "session_id": f"{node.id}.{ev.handoff.session_id}",
                            "handoff_id": f"{node.id}.{ev.handoff.handoff_id}",
                            "reason": ev.handoff.reason,
                        }
            except NoAnswer as exc:
                raise exc.error from None

    async def _unary(
        self, node: NodeState, method: str, req: Any, md: Any, *, caller_key: bool = False
    ) -> Any:
        async with self.backlog.slot():
            try:
                return await self.links.call(node, method, req, md, caller_key=caller_key)
            except NoAnswer as exc:
                raise exc.error from None

    async def get_session(self, caller: Caller, sid: str) -> dict[str, Any]:
        node = self._holder(caller, sid)
        view = await self._unary(
            node, "GetSession", pb.GetSessionRequest(session_id=local_id(sid)), caller.metadata()
        )
        if view.user_id and view.user_id != caller.identity.user_id:
            raise ApiError.of("not_found")  # a signed-in customer's session is theirs only
        return session_json(node.id, view)

    async def end_session(self, caller: Caller, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        check_known(body, {"reason"})
        node = self.pool.holder(sid)
        req = pb.EndSessionRequest(
            session_id=local_id(sid), reason=field(body, "reason", str, max_len=64) or ""
        )
        r = await self._unary(node, "EndSession", req, caller.metadata())
        status = {pb.SESSION_STATUS_ENDED: "ended", pb.SESSION_STATUS_EXPIRED: "expired"}
        return {"session_id": sid, "status": status.get(r.status, "ended")}

    async def feedback(self, caller: Caller, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        check_known(body, {"rating", "turn_seq", "resolved", "comment"})
        node = self.pool.holder(sid)
        req = pb.SubmitFeedbackRequest(
            session_id=local_id(sid),
            rating=field(body, "rating", int, required=True),
            comment=field(body, "comment", str, max_len=1000) or "",
        )
        seq = field(body, "turn_seq", int)
        if seq is not None:
            if seq < 1:
                raise ApiError.of("invalid_argument", detail="'turn_seq' must be ≥ 1")
            req.turn_seq = seq
        resolved = field(body, "resolved", bool)
        if resolved is not None:
            req.resolved = resolved
        r = await self._unary(node, "SubmitFeedback", req, caller.metadata())
        return {"feedback_id": r.feedback_id}

    # ------------------------------------------------------------------ agent console

    @staticmethod
    def _agent_md(key: str) -> tuple[tuple[str, str], ...]:
        try:
            return bearer_metadata(key)
        except Exception as exc:  # PermanentError: not a usable key
            raise ApiError.of("unauthenticated") from exc

    async def list_handoffs(
        self, key: str, *, status: str, page_size: int, page_token: str
    ) -> dict[str, Any]:
        md = self._agent_md(key)
        if status and status not in HANDOFF_STATUS:
            raise ApiError.of(
                "invalid_argument", detail=f"status must be one of {sorted(HANDOFF_STATUS)}"
            )
        if page_token:
            try:
                tokens = json.loads(base64.urlsafe_b64decode(page_token.encode()))
                assert isinstance(tokens, dict)
            except (ValueError, AssertionError, binascii.Error) as exc:
                raise ApiError.of("invalid_argument", detail="unknown page_token") from exc
            nodes = [self.pool.nodes[n] for n in tokens if n in self.pool.nodes]
        else:
            tokens, nodes = {}, self.pool.healthy()
        req_status = HANDOFF_STATUS.get(status, pb.HANDOFF_STATUS_UNSPECIFIED)

        async def one(n: NodeState) -> tuple[NodeState, Any]:
            req = pb.ListHandoffsRequest(
                status=req_status, page_size=page_size, page_token=str(tokens.get(n.id, ""))
            )
            return n, await self._unary(n, "ListHandoffs", req, md, caller_key=True)

        results = await asyncio.gather(*(one(n) for n in nodes))
        items = [handoff_json(n.id, h) for n, r in results for h in r.handoffs]
        items.sort(key=lambda h: h["created_at"] or "")
        nxt = {n.id: r.next_page_token for n, r in results if r.next_page_token}
        token = base64.urlsafe_b64encode(json.dumps(nxt).encode()).decode() if nxt else ""
        return {"handoffs": items, "next_page_token": token}

    async def claim(self, key: str, hid: str, body: dict[str, Any]) -> dict[str, Any]:
        check_known(body, {"agent_id"})
        node = self.pool.holder(hid)
        req = pb.ClaimHandoffRequest(
            handoff_id=local_id(hid),
            agent_id=field(body, "agent_id", str, required=True, max_len=64),
        )
        h = await self._unary(node, "ClaimHandoff", req, self._agent_md(key), caller_key=True)
        return handoff_json(node.id, h)

    async def agent_reply(self, key: str, hid: str, body: dict[str, Any]) -> dict[str, Any]:
        check_known(body, {"agent_id", "text", "request_id"})
        node = self.pool.holder(hid)
        req = pb.AgentReplyRequest(
            handoff_id=local_id(hid),
            agent_id=field(body, "agent_id", str, required=True, max_len=64),
            text=field(body, "text", str, required=True, max_len=MAX_TEXT),
            request_id=field(body, "request_id", str, max_len=64) or "",
        )
        r = await self._unary(node, "AgentReply", req, self._agent_md(key), caller_key=True)
        sid = f"{node.id}.{r.session_id}"
        for ev in self._watchers.get(sid, ()):
            ev.set()  # customers connected to this gateway see it at once
        return {"session_id": sid, "turn_seq": r.turn_seq}

    async def close_handoff(self, key: str, hid: str, body: dict[str, Any]) -> dict[str, Any]:
        check_known(body, {"agent_id", "resolution", "note"})
        node = self.pool.holder(hid)
        resolution = field(body, "resolution", str, required=True)
        if resolution not in RESOLUTIONS:
            raise ApiError.of(
                "invalid_argument", detail=f"resolution must be one of {sorted(RESOLUTIONS)}"
            )
        req = pb.CloseHandoffRequest(
            handoff_id=local_id(hid),
            resolution=RESOLUTIONS[resolution],
            agent_id=field(body, "agent_id", str, max_len=64) or "",
            note=field(body, "note", str, max_len=1000) or "",
        )
        h = await self._unary(node, "CloseHandoff", req, self._agent_md(key), caller_key=True)
        sid = f"{node.id}.{h.session_id}"
        for ev in self._watchers.get(sid, ()):
            ev.set()
        return handoff_json(node.id, h)

    async def agent_session(self, key: str, sid: str) -> dict[str, Any]:
        node = self.pool.holder(sid)
        req = pb.GetSessionRequest(session_id=local_id(sid))
        view = await self._unary(node, "GetSession", req, self._agent_md(key), caller_key=True)
        return session_json(node.id, view)

    # ------------------------------------------------------------------ pushes

    def watch(self, sid: str) -> asyncio.Event:
        node_of(sid)  # a malformed id is not_found, not a watcher
        ev = asyncio.Event()
        self._watchers.setdefault(sid, set()).add(ev)
        return ev

    def unwatch(self, sid: str, ev: asyncio.Event) -> None:
        evs = self._watchers.get(sid)
        if evs is not None:
            evs.discard(ev)
            if not evs:
                del self._watchers[sid]
