"""The node API's messages: turns, replies, sessions and hand-offs as protobuf (``kefu.v1``).

The gRPC adapter (:mod:`kefu.node.serving.grpc_api`) answers with these; they carry ids, labels
and times, and the hand-off summary an agent sees when they pick a conversation up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from kefu.node.dialog.handoff import HandoffResolution, HandoffView
from kefu.node.dialog.turns import TurnResult
from kefu.node.sessions.store import HandoffStatus, Session, SessionStatus, Turn, TurnRole
from kefu.v1 import node_pb2 as pb

__all__ = [
    "CHANNELS",
    "CHANNEL_ENUM",
    "HANDOFF_STATUS",
    "HANDOFF_STATUS_IN",
    "RESOLUTION",
    "SESSION_STATUS",
    "SESSION_STATUS_IN",
    "handoff_message",
    "reply_message",
    "session_summary",
    "timestamp",
    "turn_message",
]

CHANNELS: dict[int, str | None] = {
    pb.CHANNEL_UNSPECIFIED: None,
    pb.CHANNEL_WEB: "web",
    pb.CHANNEL_APP: "app",
    pb.CHANNEL_MINI_PROGRAM: "mini_program",
    pb.CHANNEL_SOCIAL: "social",
    pb.CHANNEL_API: "api",
}
CHANNEL_ENUM: dict[str, Any] = {v: k for k, v in CHANNELS.items() if v is not None}
SESSION_STATUS = {
    SessionStatus.OPEN: pb.SESSION_STATUS_ACTIVE,
    SessionStatus.HANDED_OFF: pb.SESSION_STATUS_HANDOFF,
    SessionStatus.ENDED: pb.SESSION_STATUS_ENDED,
    SessionStatus.EXPIRED: pb.SESSION_STATUS_EXPIRED,
}
SESSION_STATUS_IN = {v: k for k, v in SESSION_STATUS.items()}
ROLE = {TurnRole.CUSTOMER: pb.ROLE_USER, TurnRole.BOT: pb.ROLE_BOT, TurnRole.AGENT: pb.ROLE_AGENT}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _entity(e: Any) -> pb.Entity:
    norm = e.normalized
    if isinstance(norm, dict):
        norm = " ".join(f"{k}={v}" for k, v in sorted(norm.items()))
    return pb.Entity(type=e.type, value=e.value, normalized=str(norm), start=e.start, end=e.end)


def reply_message(r: TurnResult) -> pb.ConverseReply:
    return pb.ConverseReply(
        session_id=r.session_id,
        text=r.reply,
        language=r.language,
        intent=r.intent,
        confidence=r.confidence,
        sentiment=pb.Sentiment(label=r.sentiment, score=r.sentiment_score),
        scenario=r.scenario,
        entities=[_entity(e) for e in r.entities],
        handoff=r.handoff,
        handoff_reason=r.handoff_reason,
        handoff_id=r.handoff_id,
        model_versions=r.model_versions,
        server_latency_us=r.latency_us,
        turn_seq=r.seq,
        request_id=r.request_id,
        kb_entry_id=r.kb_entry_id,
        clarify=r.clarify,
    )


def turn_message(t: Turn) -> pb.Turn:
    return pb.Turn(
        seq=t.seq,
        role=ROLE.get(t.role, pb.ROLE_UNSPECIFIED),
        text=t.text,
        language=t.language or "",
        intent=t.intent or "",
        confidence=t.confidence or 0.0,
        sentiment=pb.Sentiment(label=t.sentiment or ""),
        scenario=t.scenario or "",
        handoff=t.handoff,
        handoff_reason=t.handoff_reason or "",
        model_versions=t.model_versions,
        server_latency_us=int((t.latency_ms or 0.0) * 1000),
        created_at=timestamp(t.created_at),
        request_id=t.request_id or "",
        agent_id=t.model_versions.get("agent", "") if t.role is TurnRole.AGENT else "",
    )


def session_summary(s: Session) -> pb.SessionSummary:
    return pb.SessionSummary(
        session_id=s.id,
        status=SESSION_STATUS[s.status],
        channel=CHANNEL_ENUM.get(s.channel, pb.CHANNEL_UNSPECIFIED),
        user_id=s.user_id or "",
        created_at=timestamp(s.created_at),
        updated_at=timestamp(s.last_active_at),
        turn_count=s.turn_count,
        scenario=s.scenario or "",
        language=s.language or "",
    )


HANDOFF_STATUS = {
    HandoffStatus.OPEN: pb.HANDOFF_STATUS_WAITING,
    HandoffStatus.CLAIMED: pb.HANDOFF_STATUS_CLAIMED,
    HandoffStatus.CLOSED: pb.HANDOFF_STATUS_CLOSED,
}
HANDOFF_STATUS_IN = {v: k for k, v in HANDOFF_STATUS.items()}
RESOLUTION = {
    pb.HANDOFF_RESOLUTION_RESOLVED: HandoffResolution.RESOLVED,
    pb.HANDOFF_RESOLUTION_UNRESOLVED: HandoffResolution.UNRESOLVED,
    pb.HANDOFF_RESOLUTION_RETURNED_TO_BOT: HandoffResolution.RETURNED_TO_BOT,
    pb.HANDOFF_RESOLUTION_ABANDONED: HandoffResolution.ABANDONED,
}
RESOLUTION_OUT = {v.value: k for k, v in RESOLUTION.items()}


def handoff_message(v: HandoffView) -> pb.Handoff:
    h, s, summary = v.handoff, v.session, v.handoff.summary or {}
    raw_last = summary.get("last_messages")
    last: list[Any] = raw_last if isinstance(raw_last, list) else []
    roles = {"customer": pb.ROLE_USER, "bot": pb.ROLE_BOT, "agent": pb.ROLE_AGENT}
    return pb.Handoff(
        handoff_id=h.id,
        session_id=h.session_id,
        status=HANDOFF_STATUS[h.status],
        reason=h.reason,
        agent_id=h.agent_id or "",
        channel=CHANNEL_ENUM.get(s.channel, pb.CHANNEL_UNSPECIFIED) if s else None,
        user_id=(s.user_id or "") if s else "",
        scenario=(s.scenario or "") if s else "",
        language=(s.language or "") if s else "",
        last_user_text=v.last_user_text,
        created_at=timestamp(h.created_at),
        claimed_at=timestamp(h.claimed_at),
        closed_at=timestamp(h.closed_at),
        resolution=RESOLUTION_OUT.get(v.resolution, pb.HANDOFF_RESOLUTION_UNSPECIFIED),
        note=v.note,
        summary=pb.HandoffSummary(
            intents=[str(x) for x in summary.get("intents", [])],
            sentiments=[str(x) for x in summary.get("sentiments", [])],
            sentiment_trend=str(summary.get("sentiment_trend", "")),
            slots={str(k): str(x) for k, x in dict(summary.get("slots") or {}).items()},
            open_flow=str(summary.get("open_flow", "")),
            plugin_failures=[str(x) for x in summary.get("plugin_failures", [])],
            last_messages=[
                pb.Turn(
                    role=roles.get(str(m.get("role")), pb.ROLE_UNSPECIFIED),
                    text=str(m.get("text", "")),
                )
                for m in last
                if isinstance(m, dict)
            ],
        ),
    )
