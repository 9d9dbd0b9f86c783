"""The public JSON of the HTTP/WebSocket API, from and to the node's protobuf messages. Pure.

Field names are the proto's (snake_case); enums become short lower-case words (``active``,
``handoff``, ``user``, ``bot``, ``agent``); timestamps are RFC 3339 UTC strings; ids that name
a session or hand-off carry the node prefix (:mod:`.routing`). These shapes are what the
OpenAPI document (:mod:`.openapi`) describes.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from kefu.node.gateway.answers import ApiError
from kefu.node.gateway.routing import public_id
from kefu.v1 import node_pb2 as pb

__all__ = [
    "CHANNELS",
    "RESOLUTIONS",
    "handoff_json",
    "reply_json",
    "session_json",
]

CHANNELS = {
    "web": pb.CHANNEL_WEB,
    "app": pb.CHANNEL_APP,
    "mini_program": pb.CHANNEL_MINI_PROGRAM,
    "social": pb.CHANNEL_SOCIAL,
    "api": pb.CHANNEL_API,
}
_CHANNEL_NAMES = {v: k for k, v in CHANNELS.items()}
_STATUS = {
    pb.SESSION_STATUS_ACTIVE: "active",
    pb.SESSION_STATUS_HANDOFF: "handoff",
    pb.SESSION_STATUS_ENDED: "ended",
    pb.SESSION_STATUS_EXPIRED: "expired",
}
_ROLE = {pb.ROLE_USER: "user", pb.ROLE_BOT: "bot", pb.ROLE_AGENT: "agent", pb.ROLE_SYSTEM: "system"}
HANDOFF_STATUS = {
    "waiting": pb.HANDOFF_STATUS_WAITING,
    "claimed": pb.HANDOFF_STATUS_CLAIMED,
    "closed": pb.HANDOFF_STATUS_CLOSED,
}
_HANDOFF_STATUS_NAMES = {v: k for k, v in HANDOFF_STATUS.items()}
RESOLUTIONS = {
    "resolved": pb.HANDOFF_RESOLUTION_RESOLVED,
    "unresolved": pb.HANDOFF_RESOLUTION_UNRESOLVED,
    "returned_to_bot": pb.HANDOFF_RESOLUTION_RETURNED_TO_BOT,
    "abandoned": pb.HANDOFF_RESOLUTION_ABANDONED,
}
_RESOLUTION_NAMES = {v: k for k, v in RESOLUTIONS.items()}


def _time(ts: Timestamp, present: bool) -> str | None:
    if not present:
        return None
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reply_json(node_id: str, r: pb.ConverseReply) -> dict[str, Any]:
    return {
        "session_id": public_id(node_id, r.session_id),
        "text": r.text,
        "language": r.language,
        "intent": r.intent,
        "confidence": round(r.confidence, 4),
        "sentiment": {"label": r.sentiment.label, "score": round(r.sentiment.score, 4)},
        "scenario": r.scenario,
        "entities": [
            {
                "type": e.type,
                "value": e.value,
                "normalized": e.normalized,
                "start": e.start,
                "end": e.end,
            }
            for e in r.entities
        ],
        "handoff": r.handoff,
        "handoff_reason": r.handoff_reason,
        "handoff_id": public_id(node_id, r.handoff_id),
        "clarify": r.clarify,
        "turn_seq": r.turn_seq,
        "request_id": r.request_id,
        "kb_entry_id": r.kb_entry_id,
        "model_versions": dict(r.model_versions),
        "server_latency_us": r.server_latency_us,
    }


def turn_json(t: pb.Turn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": t.seq,
        "role": _ROLE.get(t.role, "unknown"),
        "text": t.text,
        "language": t.language,
        "created_at": _time(t.created_at, t.HasField("created_at")),
    }
    if t.role == pb.ROLE_USER:
        out.update(intent=t.intent, sentiment=t.sentiment.label)
    if t.role == pb.ROLE_AGENT:
        out["agent_id"] = t.agent_id
    if t.handoff:
        out["handoff"] = True
    return out


def session_json(node_id: str, s: pb.SessionView) -> dict[str, Any]:
    return {
        "session_id": public_id(node_id, s.session_id),
        "status": _STATUS.get(s.status, "unknown"),
        "channel": _CHANNEL_NAMES.get(s.channel, ""),
        "user_id": s.user_id,
        "created_at": _time(s.created_at, s.HasField("created_at")),
        "updated_at": _time(s.updated_at, s.HasField("updated_at")),
        "scenario": s.scenario,
        "language": s.language,
        "slots": dict(s.slots),
        "handoff_id": public_id(node_id, s.handoff_id),
        "turns": [turn_json(t) for t in s.turns],
    }


def handoff_json(node_id: str, h: pb.Handoff) -> dict[str, Any]:
    return {
        "handoff_id": public_id(node_id, h.handoff_id),
        "session_id": public_id(node_id, h.session_id),
        "status": _HANDOFF_STATUS_NAMES.get(h.status, "unknown"),
        "reason": h.reason,
        "agent_id": h.agent_id,
        "channel": _CHANNEL_NAMES.get(h.channel, ""),
        "user_id": h.user_id,
        "scenario": h.scenario,
        "language": h.language,
        "last_user_text": h.last_user_text,
        "created_at": _time(h.created_at, h.HasField("created_at")),
        "resolution": _RESOLUTION_NAMES.get(h.resolution, ""),
        "note": h.note,
        "summary": {
            "intents": list(h.summary.intents),
            "sentiment_trend": h.summary.sentiment_trend,
            "slots": dict(h.summary.slots),
            "open_flow": h.summary.open_flow,
        },
    }


# ---------------------------------------------------------------------- request bodies


def field(
    body: dict[str, Any], name: str, kind: type, *, required: bool = False, max_len: int = 0
) -> Any:
    """``body[name]`` checked against ``kind``; a clear ``invalid_argument`` otherwise."""
    if name not in body or body[name] is None:
        if required:
            raise ApiError.of("invalid_argument", detail=f"'{name}' is required / 缺少 '{name}'")
        return None
    value = body[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ApiError.of(
            "invalid_argument",
            detail=f"'{name}' must be {kind.__name__} / '{name}' 类型应为 {kind.__name__}",
        )
    if max_len and isinstance(value, str | dict | list) and len(value) > max_len:
        raise ApiError.of(
            "invalid_argument",
            detail=f"'{name}' is longer than {max_len} / '{name}' 超过 {max_len}",
        )
    return value


def string_map(body: dict[str, Any], name: str, *, max_entries: int = 16) -> dict[str, str]:
    value = field(body, name, dict, max_len=max_entries) or {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 256:
            raise ApiError.of(
                "invalid_argument",
                detail=f"'{name}' must map short names to short strings / '{name}' 格式错误",
            )
        out[k] = v
    return out


def check_known(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError.of(
            "invalid_argument", detail=f"unknown field(s) {unknown} / 未知字段 {unknown}"
        )
