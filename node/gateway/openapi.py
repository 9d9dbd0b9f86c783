"""The gateway's OpenAPI 3.1 document: built here, served at ``/v1/openapi.json`` and checked
in as ``docs/gateway-openapi.json``. ``python -m kefu.node.gateway.openapi --write`` refreshes
the checked-in copy; ``--check`` fails when it is stale (tests do the same, and check that every
route of the application is documented and nothing else).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kefu.node.gateway.answers import CODES

__all__ = ["CHECKED_IN", "document", "main"]

CHECKED_IN = Path("docs/gateway-openapi.json")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        codes = sorted(c for c, (s, _, _) in CODES.items() if s == status)
        out[str(status)] = _json(_ref("Error"), "error: " + ", ".join(codes))
    return out


def _param(
    name: str, where: str = "path", *, required: bool = True, desc: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": {"type": "string"},
        "description": desc,
    }


_PUBLIC = _param("public_id", desc="the tenant's public widget id (not a secret)")
_SESSION = _param("session_id", desc="a session id as returned by the gateway (node.prefixed)")
_HANDOFF = _param("handoff_id", desc="a hand-off id as returned by the gateway")
_IDENTITY = _param(
    "X-Kefu-Identity",
    "header",
    required=False,
    desc="identity token (JWT HS256 signed with the tenant's secret); required unless the "
    "tenant allows anonymous customers",
)
_CHANNEL = {
    "name": "channel",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["web", "app", "mini_program", "api"], "default": "api"},
}
_CUSTOMER_ERRORS = (400, 401, 403, 404, 409, 413, 415, 429, 502, 503, 504)
_CONSOLE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 502, 503, 504)


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: Sequence[dict[str, Any]] = (),
    body: str | None = None,
    errors: Sequence[int] = _CUSTOMER_ERRORS,
    ok_status: str = "200",
    security: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": list(params),
        "responses": {ok_status: ok, **_errors(*errors)},
    }
    if body:
        op["requestBody"] = _body(body)
    if security:
        op["security"] = [{"agentKey": []}]
    return op


def _obj(props: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


S, INT, B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _schemas() -> dict[str, Any]:
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": {"type": "string", "enum": sorted(CODES)},
                        "message": S,
                        "messages": _obj({"en": S, "zh": S}),
                        "detail": S,
                        "retry_after_s": {"type": "number"},
                        "request_id": S,
                    },
                    ["code", "message", "messages"],
                )
            },
            ["error"],
        ),
        "SendMessage": _obj(
            {
                "text": {"type": "string", "maxLength": 4096},
                "session_id": S,
                "channel": {"type": "string", "enum": ["web", "app", "mini_program", "api"]},
                "language": S,
                "entry_path": S,
                "metadata": _MAP,
                "request_id": S,
            },
            ["text"],
        ),
        "Reply": {
            "type": "object",
            "properties": {
                "session_id": S,
                "text": S,
                "language": S,
                "intent": S,
                "confidence": {"type": "number"},
                "sentiment": _obj({"label": S, "score": {"type": "number"}}),
                "scenario": S,
                "entities": {"type": "array", "items": {"type": "object"}},
                "handoff": B,
                "handoff_reason": S,
                "handoff_id": S,
                "clarify": B,
                "turn_seq": INT,
                "request_id": S,
                "kb_entry_id": S,
                "model_versions": _MAP,
                "server_latency_us": INT,
            },
        },
        "Turn": {
            "type": "object",
            "properties": {
                "seq": INT,
                "role": {"type": "string", "enum": ["user", "bot", "agent", "system"]},
                "text": S,
                "language": S,
                "created_at": S,
                "intent": S,
                "sentiment": S,
                "agent_id": S,
            },
        },
        "Session": {
            "type": "object",
            "properties": {
                "session_id": S,
                "status": {"type": "string", "enum": ["active", "handoff", "ended", "expired"]},
                "channel": S,
                "user_id": S,
                "created_at": S,
                "updated_at": S,
                "scenario": S,
                "language": S,
                "slots": _MAP,
                "handoff_id": S,
                "turns": {"type": "array", "items": _ref("Turn")},
            },
        },
        "EndSession": _obj({"reason": S}),
        "Ended": _obj({"session_id": S, "status": S}),
        "Feedback": _obj(
            {
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "turn_seq": INT,
                "resolved": B,
                "comment": S,
            },
            ["rating"],
        ),
        "FeedbackId": _obj({"feedback_id": S}),
        "Handoff": {
            "type": "object",
            "properties": {
                "handoff_id": S,
                "session_id": S,
                "status": {"type": "string", "enum": ["waiting", "claimed", "closed"]},
                "reason": S,
                "agent_id": S,
                "channel": S,
                "user_id": S,
                "scenario": S,
                "language": S,
                "last_user_text": S,
                "created_at": S,
                "resolution": S,
                "note": S,
                "summary": {"type": "object"},
            },
        },
        "Handoffs": _obj(
            {"handoffs": {"type": "array", "items": _ref("Handoff")}, "next_page_token": S}
        ),
        "Claim": _obj({"agent_id": S}, ["agent_id"]),
        "AgentReply": _obj({"agent_id": S, "text": S, "request_id": S}, ["agent_id", "text"]),
        "AgentReplied": _obj({"session_id": S, "turn_seq": INT}),
        "Close": _obj(
            {
                "agent_id": S,
                "note": S,
                "resolution": {
                    "type": "string",
                    "enum": ["resolved", "unresolved", "returned_to_bot", "abandoned"],
                },
            },
            ["resolution"],
        ),
    }


def document() -> dict[str, Any]:
    chat = "/v1/chat/{public_id}"
    cors = {
        "summary": "CORS preflight (allowed origins of the tenant)",
        "parameters": [_PUBLIC],
        "responses": {"204": {"description": "allowed"}, **_errors(403, 404)},
    }
    sess = [_PUBLIC, _SESSION, _IDENTITY, _CHANNEL]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kefu access gateway / 客服接入网关",
            "version": "1",
            "description": "Customers' channels in front of the regional Kefu nodes. Errors are "
            "JSON with a stable code and zh/en messages; 429 and 503 carry Retry-After. "
            "WebSocket streaming: GET /v1/chat/{public_id}/ws (see docs/gateway.md).",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "agentKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a tenant API key with the agent role",
                }
            },
        },
        "paths": {
            f"{chat}/messages": {
                "post": _op(
                    "Send a customer message; without session_id a new conversation starts",
                    _json(_ref("Reply")),
                    params=[_PUBLIC, _IDENTITY],
                    body="SendMessage",
                ),
                "options": cors,
            },
            f"{chat}/sessions/{{session_id}}": {
                "get": _op("A conversation and its turns", _json(_ref("Session")), params=sess),
                "options": cors,
            },
            f"{chat}/sessions/{{session_id}}/end": {
                "post": _op(
                    "End a conversation (idempotent)",
                    _json(_ref("Ended")),
                    params=sess,
                    body="EndSession",
                ),
                "options": cors,
            },
            f"{chat}/sessions/{{session_id}}/feedback": {
                "post": _op(
                    "Rate a conversation or one answer",
                    _json(_ref("FeedbackId"), "Created"),
                    params=sess,
                    body="Feedback",
                    ok_status="201",
                ),
                "options": cors,
            },
            f"{chat}/ws": {
                "get": _op(
                    "WebSocket: typing, reply, hand-off and agent messages (upgrade required)",
                    {"description": "Switching Protocols"},
                    params=[
                        _PUBLIC,
                        _CHANNEL,
                        _param("session_id", "query", required=False),
                        _param("identity", "query", required=False),
                    ],
                    errors=(400, 401, 403, 404, 503),
                    ok_status="101",
                )
            },
            "/v1/console/handoffs": {
                "get": _op(
                    "Open (or filtered) hand-offs of the key's tenant across the region's nodes",
                    _json(_ref("Handoffs")),
                    security=True,
                    errors=_CONSOLE_ERRORS,
                    params=[
                        _param("status", "query", required=False),
                        _param("page_size", "query", required=False),
                        _param("page_token", "query", required=False),
                    ],
                )
            },
            "/v1/console/handoffs/{handoff_id}/claim": {
                "post": _op(
                    "Claim a waiting hand-off",
                    _json(_ref("Handoff")),
                    params=[_HANDOFF],
                    body="Claim",
                    security=True,
                    errors=_CONSOLE_ERRORS,
                )
            },
            "/v1/console/handoffs/{handoff_id}/reply": {
                "post": _op(
                    "Write to the customer (pushed over their WebSocket)",
                    _json(_ref("AgentReplied")),
                    params=[_HANDOFF],
                    body="AgentReply",
                    security=True,
                    errors=_CONSOLE_ERRORS,
                )
            },
            "/v1/console/handoffs/{handoff_id}/close": {
                "post": _op(
                    "Close a hand-off",
                    _json(_ref("Handoff")),
                    params=[_HANDOFF],
                    body="Close",
                    security=True,
                    errors=_CONSOLE_ERRORS,
                )
            },
            "/v1/console/sessions/{session_id}": {
                "get": _op(
                    "A conversation, for the agent",
                    _json(_ref("Session")),
                    params=[_SESSION],
                    security=True,
                    errors=_CONSOLE_ERRORS,
                )
            },
            "/v1/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}
            },
            "/healthz": {
                "get": {
                    "summary": "Gateway and node pool health",
                    "responses": {
                        "200": {"description": "a node is up"},
                        "503": {"description": "no node is up"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/demo": {
                "get": {
                    "summary": "Demo page with the chat widget",
                    "responses": {"200": {"description": "HTML"}},
                }
            },
            "/widget/kefu-widget.js": {
                "get": {
                    "summary": "The chat widget script",
                    "responses": {"200": {"description": "JS"}},
                }
            },
            "/widget/kefu-widget.css": {
                "get": {
                    "summary": "The chat widget style",
                    "responses": {"200": {"description": "CSS"}},
                }
            },
            "/wechat/{public_id}": {
                "get": {
                    "summary": "WeChat URL verification (signature, echostr)",
                    "parameters": [_PUBLIC],
                    "responses": {"200": {"description": "echostr"}, **_errors(403, 404)},
                },
                "post": {
                    "summary": "WeChat message webhook (XML)",
                    "parameters": [_PUBLIC],
                    "responses": {
                        "200": {"description": "passive XML reply or 'success'"},
                        **_errors(400, 403, 404, 413),
                    },
                },
            },
        },
    }


def render() -> str:
    return json.dumps(document(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kefu.node.gateway.openapi", description=__doc__)
    p.add_argument("--write", action="store_true", help=f"write {CHECKED_IN}")
    p.add_argument("--check", action="store_true", help=f"fail when {CHECKED_IN} is stale")
    args = p.parse_args(argv)
    if args.write:
        CHECKED_IN.write_text(render(), encoding="utf-8")
        print(f"wrote {CHECKED_IN}")
        return 0
    if args.check:
        ok = CHECKED_IN.is_file() and CHECKED_IN.read_text(encoding="utf-8") == render()
        print(f"{CHECKED_IN}: {'up to date' if ok else 'STALE: run with --write'}")
        return 0 if ok else 1
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
