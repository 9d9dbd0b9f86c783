"""The node's gRPC adapter: protobuf ⇄ the conversation service, errors ⇄ status codes.

Authentication is the tenant API key in ``authorization: Bearer <key>`` metadata. Every error
leaves as a status code with a clear message (Chinese and English), never a stack trace:

==========================  ====================  ==========================================
error                       status                note
==========================  ====================  ==========================================
no / unknown key            UNAUTHENTICATED
InvalidTurn, InvalidRecord  INVALID_ARGUMENT      empty, > 4 KB, control characters, ...
malformed request bytes     INVALID_ARGUMENT      e.g. invalid UTF-8 in a string field
SessionNotFound             NOT_FOUND             also for another tenant's session id
RateLimited                 RESOURCE_EXHAUSTED    ``retry-after-ms`` trailing metadata
Overloaded, ModelBusy       UNAVAILABLE           shed quickly; ``retry-after-ms``
StorageUnavailable/Busy     UNAVAILABLE           disk full, database locked
StateConflict               FAILED_PRECONDITION   e.g. a turn on an ended session
==========================  ====================  ==========================================

Requests are deserialised leniently (a parse failure becomes INVALID_ARGUMENT rather than
grpc's generic INTERNAL), which is why the handlers are registered here, not through the
generated ``add_KefuNodeServicer_to_server``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from kefu import tracing
from kefu.auth_guard import FailedAuthGuard, peer_address
from kefu.config.tenant import hash_api_key
from kefu.errors import KefuError, TemporaryError
from kefu.node.audit.chain import RPC_ACTIONS as AUDITED_METHODS
from kefu.node.audit.chain import AuditEntry, key_fingerprint, safe_id
from kefu.node.audit.journal import AuditJournal
from kefu.node.dialog.conversation import ConversationService
from kefu.node.dialog.events import AccessRefused, RequestFailed, SessionEnded
from kefu.node.dialog.handoff import HandoffConsole
from kefu.node.dialog.tenant import Tenant
from kefu.node.dialog.turns import (
    InvalidTurn,
    RateLimited,
    SessionNotFound,
    TurnRequest,
    TurnResult,
)
from kefu.node.nlu.inference import ModelBusy
from kefu.node.nlu.predictions import ModelNotLoaded
from kefu.node.serving.admission import Overloaded
from kefu.node.serving.grpc_messages import (
    CHANNEL_ENUM,
    CHANNELS,
    HANDOFF_STATUS_IN,
    RESOLUTION,
    SESSION_STATUS,
    SESSION_STATUS_IN,
    handoff_message,
    reply_message,
    session_summary,
    timestamp,
    turn_message,
)
from kefu.node.serving.limits import check_fields
from kefu.node.sessions.store import (
    InvalidRecord,
    NewFeedback,
    RecordNotFound,
    SessionStatus,
    StateConflict,
    new_record_id,
)
from kefu.rotation import expired_message
from kefu.v1 import RETRY_AFTER_METADATA_KEY, SERVICE_NAME, api_key_from_metadata
from kefu.v1 import node_pb2 as pb

__all__ = ["KefuNodeService", "generic_handler"]

log = logging.getLogger("kefu.node.grpc")


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: str):
        self.error = error


def _lenient(cls: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


Handler = Callable[[Tenant, Any, grpc.aio.ServicerContext], Awaitable[Any]]


class KefuNodeService:
    """One instance per node; holds no per-request state."""

    def __init__(self, service: ConversationService, *, audit: AuditJournal | None = None):
        self.service = service
        #: The node audit log: every admin and agent RPC is recorded (None = off).
        self.audit = audit
        #: Failed requests, refused keys and ended sessions are announced here too.
        self.events = service.events
        self.auth_guard = FailedAuthGuard()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _status(exc: BaseException) -> grpc.StatusCode:
        if isinstance(exc, InvalidTurn | InvalidRecord):
            return grpc.StatusCode.INVALID_ARGUMENT
        if isinstance(exc, SessionNotFound | RecordNotFound):
            return grpc.StatusCode.NOT_FOUND
        if isinstance(exc, RateLimited):
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        if isinstance(exc, StateConflict):
            return grpc.StatusCode.FAILED_PRECONDITION
        # ModelNotLoaded: a tenant applied before its model bundle arrived; it will.
        if isinstance(exc, Overloaded | ModelBusy | ModelNotLoaded | TemporaryError):
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.INTERNAL

    async def _abort(
        self,
        context: grpc.aio.ServicerContext,
        exc: BaseException,
        tenant: str = "",
        session_id: str = "",
    ) -> None:
        code = self._status(exc)
        self.events.emit(
            RequestFailed(
                tenant=tenant, code=code.name, session_id=session_id, cause=type(exc).__name__
            )
        )
        retry = getattr(exc, "retry_after", None)
        if isinstance(retry, int | float):
            context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, str(int(retry * 1000))),))
        if code is grpc.StatusCode.INTERNAL:
            log.error("request failed: %s", exc)
            await context.abort(code, f"internal error / 内部错误: {type(exc).__name__}")
        await context.abort(code, str(exc))

    async def _tenant(self, request: Any, context: grpc.aio.ServicerContext) -> Tenant:
        key = api_key_from_metadata(context.invocation_metadata())
        tenant = self.service.registry.authenticate(key)
        if tenant is None:
            expired = self.service.registry.expired_key(key)
            if expired is not None:
                await self._refused(context, "expired_key", expired[0])
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, expired_message("API key", "", expired[1])
                )
            await self._refused(context, "missing_key" if not key else "unknown_key")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid API key (authorization: Bearer <key>) / API 密钥缺失或无效",
            )
        if isinstance(request, _Malformed):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed request (e.g. invalid UTF-8) / 请求格式错误: {request.error}",
            )
        assert tenant is not None
        try:
            check_fields((f.name, v) for f, v in request.ListFields())
        except InvalidRecord as exc:
            await self._abort(context, exc, tenant.id)
        return tenant

    async def _refused(
        self, context: grpc.aio.ServicerContext, reason: str, tenant: str = ""
    ) -> None:
        """Count a failed authentication, log it (at most every few seconds), and keep a peer
        that keeps failing waiting before it gets its answer (the loop serves others)."""
        peer = peer_address(context.peer() or "")
        guard = self.auth_guard
        delay = guard.failed(peer)
        self.events.emit(AccessRefused(tenant=tenant, reason=reason))
        if (summary := guard.report(peer)) is not None:
            log.warning("authentication refused (%s) for %s", reason, summary)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _denied(self, context: grpc.aio.ServicerContext, tenant: Tenant, msg: str) -> None:
        await self._refused(context, "role", tenant.id)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, msg)

    def _unary(
        self,
        fn: Handler,
        roles: frozenset[str] = frozenset({"channel", "admin", "agent"}),
        method: str = "",
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        name = f"node {getattr(fn, '__name__', 'rpc')}"
        audited = self.audit is not None and method in AUDITED_METHODS

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracing.server_span(name, context.invocation_metadata()):
                return await traced(request, context)

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            tenant = await self._tenant(request, context)
            key = api_key_from_metadata(context.invocation_metadata()) or ""
            if not tenant.roles_for(key) & roles:
                if audited:
                    await self._audit(method, tenant, key, request, None, "PERMISSION_DENIED")
                await self._denied(
                    context,
                    tenant,
                    f"this API key's role may not call this RPC (needs {'/'.join(sorted(roles))})"
                    " / 该 API 密钥无权调用此接口",
                )
            try:
                reply = await fn(tenant, request, context)
            except KefuError as exc:
                if audited:
                    await self._audit(method, tenant, key, request, None, self._status(exc).name)
                session_id = getattr(request, "session_id", "")
                await self._abort(
                    context, exc, tenant.id, session_id if isinstance(session_id, str) else ""
                )
                raise  # abort() raises; for the type checker
            if audited:
                await self._audit(method, tenant, key, request, reply, "ok")
            return reply

        return call

    async def _audit(
        self, method: str, tenant: Tenant, key: str, request: Any, reply: Any, outcome: str
    ) -> None:
        """One audit entry for an admin or agent RPC: ids and counts, never text."""
        assert self.audit is not None
        entry = AuditEntry(
            ts=time.time(),
            actor=key_fingerprint(hash_api_key(key)),
            role=",".join(sorted(tenant.roles_for(key))),
            action=method,
            tenant=tenant.id,
            target=safe_id(
                getattr(request, "handoff_id", "") or getattr(request, "session_id", "")
            ),
            outcome=outcome,
            detail=_audit_detail(request, reply),
        )
        try:
            await self.audit.record(entry)
        except KefuError as exc:  # a bug in what we record must not fail the call
            log.error("cannot record %s in the audit log: %s", method, exc)

    # ------------------------------------------------------------------ RPCs

    @staticmethod
    def _turn_request(req: pb.ConverseRequest, new_session_id: str | None = None) -> TurnRequest:
        if req.channel not in CHANNELS:
            raise InvalidTurn(f"unknown channel {int(req.channel)} / 未知渠道")
        return TurnRequest(
            text=req.text,
            session_id=req.session_id or None,
            new_session_id=new_session_id,
            # UNSPECIFIED: the session's channel; refused for a new session.
            channel=CHANNELS[req.channel],
            user_id=req.user_id or None,
            entry_path=req.entry_path or None,
            metadata=dict(req.metadata),
            language=req.language or None,
            request_id=req.request_id or None,
        )

    async def _converse(
        self, tenant: Tenant, req: pb.ConverseRequest, new_session_id: str | None = None
    ) -> TurnResult:
        return await self.service.converse(tenant, self._turn_request(req, new_session_id))

    async def converse(self, tenant: Tenant, req: pb.ConverseRequest, _: Any) -> pb.ConverseReply:
        return reply_message(await self._converse(tenant, req))

    async def converse_stream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseEvent]:
        with tracing.server_span("node converse_stream", context.invocation_metadata()):
            async for event in self._converse_stream(request, context):
                yield event

    async def _converse_stream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseEvent]:
        tenant = await self._tenant(request, context)
        key = api_key_from_metadata(context.invocation_metadata()) or ""
        if not tenant.roles_for(key) & {"channel", "admin"}:
            await self._denied(
                context, tenant, "this API key's role may not converse / 该 API 密钥无权发起对话"
            )
        # A new session's id is chosen now, so the first event can already carry it.
        new_id = None if request.session_id else new_record_id()
        yield pb.ConverseEvent(typing=pb.Typing(session_id=request.session_id or new_id))
        try:
            result = await self._converse(tenant, request, new_id)
        except KefuError as exc:
            await self._abort(context, exc, tenant.id, request.session_id)
            return
        yield pb.ConverseEvent(reply=reply_message(result))
        if result.handoff:
            yield pb.ConverseEvent(
                handoff=pb.HandoffNotice(
                    session_id=result.session_id,
                    handoff_id=result.handoff_id,
                    reason=result.handoff_reason,
                )
            )

    async def get_session(
        self, tenant: Tenant, req: pb.GetSessionRequest, _: Any
    ) -> pb.SessionView:
        store = tenant.store
        session = await store.get_session(req.session_id) if req.session_id else None
        if (
            session is None
            and req.session_id
            and await self.service.import_session(tenant, req.session_id)
        ):
            session = await store.get_session(req.session_id)
        if session is None:
            raise SessionNotFound(f"session {req.session_id!r} not found / 会话不存在")
        turns = await store.get_turns(session.id)
        slots = await store.get_slots(session.id)
        handoffs = await store.list_handoffs(session_id=session.id, limit=500)
        return pb.SessionView(
            session_id=session.id,
            status=SESSION_STATUS[session.status],
            channel=CHANNEL_ENUM.get(session.channel, pb.CHANNEL_UNSPECIFIED),
            user_id=session.user_id or "",
            created_at=timestamp(session.created_at),
            updated_at=timestamp(session.last_active_at),
            scenario=session.scenario or "",
            language=session.language or "",
            slots={k: str(v.value) for k, v in slots.items() if not k.startswith("_")},
            turns=[turn_message(t) for t in turns],
            handoff_id=handoffs.items[-1].id if handoffs.items else "",
        )

    async def end_session(
        self, tenant: Tenant, req: pb.EndSessionRequest, _: Any
    ) -> pb.EndSessionReply:
        s = await tenant.store.get_session(req.session_id) if req.session_id else None
        if s is None:
            raise SessionNotFound(f"session {req.session_id!r} not found / 会话不存在")
        if s.status not in (SessionStatus.ENDED, SessionStatus.EXPIRED):  # else: already over
            s = await tenant.store.update_session(req.session_id, status=SessionStatus.ENDED)
            self.events.emit(SessionEnded(tenant=tenant.id, session_id=s.id))
        return pb.EndSessionReply(session_id=s.id, status=SESSION_STATUS[s.status])

    async def submit_feedback(
        self, tenant: Tenant, req: pb.SubmitFeedbackRequest, _: Any
    ) -> pb.SubmitFeedbackReply:
        if not req.session_id or await tenant.store.get_session(req.session_id) is None:
            raise SessionNotFound(f"session {req.session_id!r} not found / 会话不存在")
        if req.HasField("corrected_intent") and (
            req.corrected_intent not in tenant.config.intent_labels
        ):
            raise InvalidRecord(
                "corrected_intent is not an intent of this tenant / "
                "corrected_intent 不是该租户的意图"
            )
        fb = await tenant.store.add_feedback(
            NewFeedback(
                session_id=req.session_id,
                turn_seq=req.turn_seq if req.HasField("turn_seq") else None,
                rating=req.rating or None,
                resolved=req.resolved if req.HasField("resolved") else None,
                corrected_intent=req.corrected_intent if req.HasField("corrected_intent") else None,
                comment=req.comment or None,
            )
        )
        await self.service.feedback_given(
            tenant,
            session_id=req.session_id,
            turn_seq=req.turn_seq if req.HasField("turn_seq") else None,
            rating=req.rating,
            corrected_intent=req.corrected_intent if req.HasField("corrected_intent") else "",
            resolved=req.resolved if req.HasField("resolved") else None,
        )
        return pb.SubmitFeedbackReply(feedback_id=str(fb.id))

    async def list_sessions(
        self, tenant: Tenant, req: pb.ListSessionsRequest, _: Any
    ) -> pb.ListSessionsReply:
        page = await tenant.store.list_sessions(
            status=SESSION_STATUS_IN.get(req.status),
            user_id=req.user_id or None,
            limit=min(max(req.page_size or 50, 1), 500),
            cursor=req.page_token or None,
        )
        return pb.ListSessionsReply(
            sessions=[session_summary(s) for s in page.items],
            next_page_token=page.next_cursor or "",
        )

    # ------------------------------------------------------------------ hand-off console

    async def list_handoffs(
        self, tenant: Tenant, req: pb.ListHandoffsRequest, _: Any
    ) -> pb.ListHandoffsReply:
        views, nxt = await HandoffConsole(tenant.store).list(
            status=HANDOFF_STATUS_IN.get(req.status),
            limit=min(max(req.page_size or 50, 1), 500),
            cursor=req.page_token or None,
        )
        return pb.ListHandoffsReply(
            handoffs=[handoff_message(v) for v in views], next_page_token=nxt or ""
        )

    async def claim_handoff(
        self, tenant: Tenant, req: pb.ClaimHandoffRequest, _: Any
    ) -> pb.Handoff:
        return handoff_message(
            await HandoffConsole(tenant.store).claim(req.handoff_id, req.agent_id)
        )

    async def agent_reply(
        self, tenant: Tenant, req: pb.AgentReplyRequest, _: Any
    ) -> pb.AgentReplyReply:
        turn = await HandoffConsole(tenant.store).reply(
            agent_id=req.agent_id,
            text=req.text,
            handoff_id=req.handoff_id,
            session_id=req.session_id,
            request_id=req.request_id or None,
        )
        return pb.AgentReplyReply(
            session_id=turn.session_id, turn_seq=turn.seq, created_at=timestamp(turn.created_at)
        )

    async def close_handoff(
        self, tenant: Tenant, req: pb.CloseHandoffRequest, _: Any
    ) -> pb.Handoff:
        resolution = RESOLUTION.get(req.resolution)
        if resolution is None:
            raise InvalidRecord("resolution is required / 缺少结束方式 (resolution)")
        return handoff_message(
            await HandoffConsole(tenant.store).close(
                req.handoff_id, resolution=resolution, agent_id=req.agent_id, note=req.note
            )
        )


def _audit_detail(request: Any, reply: Any) -> dict[str, str | int | float | bool]:
    detail: dict[str, str | int | float | bool] = {}
    agent_id = getattr(request, "agent_id", "")
    if agent_id:
        detail["agent_id"] = safe_id(agent_id)
    if getattr(request, "session_id", "") and getattr(request, "handoff_id", ""):
        detail["session_id"] = safe_id(request.session_id)
    text = getattr(request, "text", "")
    if text:
        detail["chars"] = len(text)  # how much was written, never what
    for name in ("sessions", "handoffs", "turns"):
        items = getattr(reply, name, None)
        if items is not None and not isinstance(items, str | bytes):
            detail[name] = len(items)
    return detail


def generic_handler(svc: KefuNodeService) -> grpc.GenericRpcHandler:
    """The KefuNode service's handlers."""

    channel = frozenset({"channel", "admin"})
    agent = frozenset({"agent"})

    def unary(
        fn: Handler,
        req_cls: type[Message],
        resp_cls: type[Message],
        roles: frozenset[str] = channel,
    ) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            svc._unary(fn, roles, req_cls.DESCRIPTOR.name.removesuffix("Request")),
            request_deserializer=_lenient(req_cls),
            response_serializer=resp_cls.SerializeToString,
        )

    handlers = {
        "Converse": unary(svc.converse, pb.ConverseRequest, pb.ConverseReply),
        "ConverseStream": grpc.unary_stream_rpc_method_handler(
            svc.converse_stream,
            request_deserializer=_lenient(pb.ConverseRequest),
            response_serializer=pb.ConverseEvent.SerializeToString,
        ),
        "GetSession": unary(svc.get_session, pb.GetSessionRequest, pb.SessionView, channel | agent),
        "EndSession": unary(svc.end_session, pb.EndSessionRequest, pb.EndSessionReply),
        "SubmitFeedback": unary(
            svc.submit_feedback, pb.SubmitFeedbackRequest, pb.SubmitFeedbackReply
        ),
        "ListSessions": unary(
            svc.list_sessions,
            pb.ListSessionsRequest,
            pb.ListSessionsReply,
            frozenset({"admin"}),
        ),
        # The hand-off console: agent keys only (summaries quote customers).
        "ListHandoffs": unary(
            svc.list_handoffs, pb.ListHandoffsRequest, pb.ListHandoffsReply, agent
        ),
        "ClaimHandoff": unary(svc.claim_handoff, pb.ClaimHandoffRequest, pb.Handoff, agent),
        "AgentReply": unary(svc.agent_reply, pb.AgentReplyRequest, pb.AgentReplyReply, agent),
        "CloseHandoff": unary(svc.close_handoff, pb.CloseHandoffRequest, pb.Handoff, agent),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
