"""The HTTP/JSON API (``/v1``) as aiohttp handlers: parse and check the request, call
:class:`~kefu.node.gateway.conversations.Conversations`, answer JSON. Every failure is a JSON
error (:mod:`.answers`), never an HTML page or a traceback.

Bad input stops here: a body over ``max_body_bytes`` (413), a content type other than
``application/json`` (415), bytes that are not UTF-8 JSON or not an object (400) — before any
call to a node. The middleware adds the request id (``X-Request-Id``, kept when the client
sends a sane one), CORS for allowed origins, one JSON access-log line per request (ids, route,
status, latency — never message text) and the per-channel Prometheus metrics.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kefu.node.gateway.answers import ApiError, pick_language
from kefu.node.gateway.conversations import Caller, Conversations
from kefu.node.gateway.metrics import GatewayMetrics
from kefu.node.gateway.tracing import Tracer, new_id

__all__ = ["CONVERSATIONS", "INFO", "RequestInfo", "add_routes", "error_middleware", "read_json"]

log = logging.getLogger("kefu.gateway.access")

CONVERSATIONS: web.AppKey[Conversations] = web.AppKey("conversations", Conversations)
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
TRACER: web.AppKey[Tracer] = web.AppKey("tracer", Tracer)


@dataclass
class RequestInfo:
    """What the middleware and handlers learn about one request (logged, never the text)."""

    request_id: str = ""
    channel: str = "-"
    traceparent: str = ""
    tenant: str = ""
    cors_ok: bool = False


INFO: web.RequestKey[RequestInfo] = web.RequestKey("gateway_request", RequestInfo)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
IDENTITY_HEADER = "X-Kefu-Identity"
_CORS_HEADERS = "Content-Type, X-Kefu-Identity, X-Request-Id, traceparent, Authorization"


def _language(request: web.Request) -> str:
    return pick_language(request.query.get("lang"), request.headers.get("Accept-Language"))


def json_error(request: web.Request, err: ApiError) -> web.Response:
    info = request.get(INFO)
    rid = info.request_id if info is not None else ""
    return web.json_response(
        err.body(_language(request), rid),
        status=err.status,
        headers=err.headers(),
        dumps=lambda o: json.dumps(o, ensure_ascii=False),
    )


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin.rstrip("/") == f"{request.scheme}://{request.host}"


def request_origin(request: web.Request) -> str | None:
    """The Origin to check against the tenant's list; None for same-origin or non-browsers."""
    origin = request.headers.get("Origin")
    if origin is None or _same_origin(request, origin):
        return None
    return origin


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.perf_counter()
    rid = request.headers.get("X-Request-Id", "")
    info = RequestInfo(request_id=rid if _REQUEST_ID.fullmatch(rid) else new_id())
    request[INFO] = info
    tracer = request.app[TRACER]
    span = tracer.start_request(request.headers.get("traceparent"), request.method, request.path)
    info.traceparent = span.traceparent
    try:
        resp = await handler(request)
        code = ""
    except ApiError as err:
        resp, code = json_error(request, err), err.code
    except web.HTTPException as exc:  # aiohttp's own 404/405: as JSON too
        mapped = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        http_err = ApiError.of(mapped.get(exc.status, "invalid_argument"))
        resp, code = json_error(request, http_err), http_err.code
        resp.set_status(exc.status)
    except Exception:
        log.exception("gateway handler failed")
        resp, code = json_error(request, ApiError.of("bad_gateway")), "bad_gateway"
    elapsed = time.perf_counter() - t0
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "-"
    )
    span.end(status=resp.status, route=route)
    if not resp.prepared:
        resp.headers["X-Request-Id"] = info.request_id
        resp.headers["traceparent"] = span.traceparent
        origin = request.headers.get("Origin")
        if origin and info.cors_ok:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
    channel = info.channel
    request.app[METRICS].observe(channel=channel, route=route, status=resp.status, seconds=elapsed)
    log.info(
        "request",
        extra={
            "fields": {
                "request_id": info.request_id,
                "trace_id": span.trace_id,
                "method": request.method,
                "route": route,
                "status": resp.status,
                "code": code,
                "tenant": info.tenant,
                "channel": channel,
                "latency_ms": round(elapsed * 1000, 2),
            }
        },
    )
    return resp


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a clear 4xx (nothing reaches a node)."""
    limit = request.app[MAX_BODY]
    ctype = request.headers.get("Content-Type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise ApiError.of("unsupported_media_type")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError.of("body_too_large")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError.of("body_too_large")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError.of("invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError.of("invalid_json", detail="the body must be a JSON object / 请求体须为对象")
    return body


def _ok(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def admit(request: web.Request, *, channel: str | None = None) -> Caller:
    convs = request.app[CONVERSATIONS]
    info = request[INFO]
    channel = channel or request.query.get("channel", "api")
    info.channel = channel
    public = request.match_info["public_id"]
    caller = convs.admit(
        public,
        origin=request_origin(request),
        identity_token=request.headers.get(IDENTITY_HEADER) or None,
        channel=channel,
        request_id=info.request_id,
        traceparent=info.traceparent,
    )
    info.tenant, info.cors_ok = caller.tenant.id, True
    return caller


# ---------------------------------------------------------------------- customers


async def send_message(request: web.Request) -> web.Response:
    body = await read_json(request)
    channel = body.get("channel", "api")
    caller = admit(request, channel=channel if isinstance(channel, str) else "?")
    return _ok(await request.app[CONVERSATIONS].send(caller, body))


async def get_session(request: web.Request) -> web.Response:
    caller = admit(request)
    return _ok(
        await request.app[CONVERSATIONS].get_session(caller, request.match_info["session_id"])
    )


async def end_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    caller = admit(request)
    sid = request.match_info["session_id"]
    return _ok(await request.app[CONVERSATIONS].end_session(caller, sid, body))


async def feedback(request: web.Request) -> web.Response:
    body = await read_json(request)
    caller = admit(request)
    sid = request.match_info["session_id"]
    return _ok(await request.app[CONVERSATIONS].feedback(caller, sid, body), status=201)


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: allowed only for the tenant's origins (no rate-limit token spent)."""
    convs = request.app[CONVERSATIONS]
    tenant = convs.tenant(request.match_info["public_id"])
    origin = request_origin(request)
    from kefu.node.gateway.identity import origin_allowed

    if not origin_allowed(origin, tenant.allowed_origins):
        raise ApiError.of("forbidden")
    request[INFO].cors_ok = True
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": _CORS_HEADERS,
            "Access-Control-Max-Age": "600",
        },
    )


# ---------------------------------------------------------------------- agent console


def _agent_key(request: web.Request) -> str:
    request[INFO].channel = "console"
    auth = request.headers.get("Authorization", "")
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError.of("unauthenticated", detail="Authorization: Bearer <agent key>")
    return key.strip()


def _int_query(request: web.Request, name: str, default: int, hi: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= hi:
        raise ApiError.of("invalid_argument", detail=f"'{name}' must be 0-{hi}")
    return int(raw)


async def list_handoffs(request: web.Request) -> web.Response:
    key = _agent_key(request)
    return _ok(
        await request.app[CONVERSATIONS].list_handoffs(
            key,
            status=request.query.get("status", ""),
            page_size=_int_query(request, "page_size", 50, 500),
            page_token=request.query.get("page_token", "")[:4096],
        )
    )


def _console(action: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        key = _agent_key(request)
        body = await read_json(request)
        convs = request.app[CONVERSATIONS]
        fn = {"claim": convs.claim, "reply": convs.agent_reply, "close": convs.close_handoff}[
            action
        ]
        return _ok(await fn(key, request.match_info["handoff_id"], body))

    return handle


async def console_session(request: web.Request) -> web.Response:
    key = _agent_key(request)
    sid = request.match_info["session_id"]
    return _ok(await request.app[CONVERSATIONS].agent_session(key, sid))


def add_routes(app: web.Application) -> None:
    chat = "/v1/chat/{public_id}"
    app.router.add_post(f"{chat}/messages", send_message)
    app.router.add_get(f"{chat}/sessions/{{session_id}}", get_session)
    app.router.add_post(f"{chat}/sessions/{{session_id}}/end", end_session)
    app.router.add_post(f"{chat}/sessions/{{session_id}}/feedback", feedback)
    for path in (
        "messages",
        "sessions/{session_id}",
        "sessions/{session_id}/end",
        "sessions/{session_id}/feedback",
    ):
        app.router.add_route("OPTIONS", f"{chat}/{path}", preflight)
    app.router.add_get("/v1/console/handoffs", list_handoffs)
    for action in ("claim", "reply", "close"):
        app.router.add_post(f"/v1/console/handoffs/{{handoff_id}}/{action}", _console(action))
    app.router.add_get("/v1/console/sessions/{session_id}", console_session)
