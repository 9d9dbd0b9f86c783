"""Errors as channels see them: a stable code, an HTTP status and a message in English and
Chinese; and the mapping from the node's gRPC status codes. Pure.

Every error body is ``{"error": {"code", "message", "messages": {"en", "zh"}, "detail"?,
"retry_after_s"?, "request_id"}}``; ``message`` follows the request's language (``?lang=``,
then ``Accept-Language``, English by default). ``code`` never changes meaning once released;
clients switch on it, people read the messages. ``detail`` carries the node's own (bilingual,
tenant-safe) explanation when it has one, e.g. which field was out of range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CODES", "ApiError", "from_grpc", "pick_language"]

#: code -> (HTTP status, English, Chinese).
CODES: dict[str, tuple[int, str, str]] = {
    "invalid_json": (400, "The request body is not valid JSON.", "请求内容不是有效的 JSON。"),
    "invalid_argument": (400, "A field of the request is invalid.", "请求中的字段无效。"),
    "invalid_xml": (400, "The request body is not valid XML.", "请求内容不是有效的 XML。"),
    "unauthenticated": (
        401,
        "Missing, invalid or expired credentials.",
        "身份凭证缺失、无效或已过期。",
    ),
    "identity_required": (
        401,
        "This shop requires a signed-in customer (identity token).",
        "该商户要求客户登录（需要身份令牌）。",
    ),
    "forbidden": (403, "This origin or key may not do that.", "该来源或密钥无权执行此操作。"),
    "bad_signature": (403, "The signature does not match.", "签名校验失败。"),
    "not_found": (404, "No such conversation or resource.", "会话或资源不存在。"),
    "unknown_tenant": (404, "Unknown chat widget id.", "未知的客服组件 ID。"),
    "method_not_allowed": (405, "Method not allowed here.", "不支持该请求方法。"),
    "conversation_closed": (
        409,
        "This conversation has ended; start a new one.",
        "该会话已结束，请开始新的会话。",
    ),
    "body_too_large": (413, "The request body is too large.", "请求内容过大。"),
    "unsupported_media_type": (
        415,
        "Wrong content type (send application/json).",
        "内容类型错误（请使用 application/json）。",
    ),
    "rate_limited": (
        429,
        "Too many messages; please wait a moment.",
        "消息发送过于频繁，请稍候再试。",
    ),
    "bad_gateway": (
        502,
        "The service answered unexpectedly; please try again later.",
        "服务响应异常，请稍后再试。",
    ),
    "overloaded": (
        503,
        "The service is busy; please try again shortly.",
        "服务繁忙，请稍后再试。",
    ),
    "no_node": (
        503,
        "No customer-service node is available right now.",
        "当前没有可用的客服节点。",
    ),
    "region_unavailable": (
        503,
        "This service is temporarily unavailable; please try again later.",
        "服务暂时不可用，请稍后再试。",
    ),
    "node_down": (
        503,
        "The server holding this conversation is unavailable; start a new conversation or "
        "try again later.",
        "保存该会话的服务器暂不可用，请开始新的会话或稍后再试。",
    ),
    "timeout": (504, "The service took too long to answer.", "服务响应超时。"),
}

#: gRPC status name -> code. UNAUTHENTICATED / PERMISSION_DENIED depend on whose key it was.
_GRPC: dict[str, str] = {
    "INVALID_ARGUMENT": "invalid_argument",
    "OUT_OF_RANGE": "invalid_argument",
    "NOT_FOUND": "not_found",
    "FAILED_PRECONDITION": "conversation_closed",
    "RESOURCE_EXHAUSTED": "rate_limited",
    "UNAVAILABLE": "overloaded",
    "DEADLINE_EXCEEDED": "timeout",
    "CANCELLED": "timeout",
}


@dataclass(eq=False)
class ApiError(Exception):
    """An error a channel gets as JSON; raised by the core and the adapters alike."""

    code: str
    status: int
    en: str
    zh: str
    detail: str = ""
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        super().__init__(f"{self.code}: {self.en}")

    @classmethod
    def of(cls, code: str, *, detail: str = "", retry_after_s: float | None = None) -> ApiError:
        status, en, zh = CODES[code]
        return cls(code, status, en, zh, detail=detail, retry_after_s=retry_after_s)

    def body(self, language: str, request_id: str = "") -> dict[str, Any]:
        err: dict[str, Any] = {
            "code": self.code,
            "message": self.zh if language == "zh" else self.en,
            "messages": {"en": self.en, "zh": self.zh},
        }
        if self.detail:
            err["detail"] = self.detail
        if self.retry_after_s is not None:
            err["retry_after_s"] = round(self.retry_after_s, 3)
        if request_id:
            err["request_id"] = request_id
        return {"error": err}

    def headers(self) -> dict[str, str]:
        """Retry-After in whole seconds (HTTP allows no fractions), at least 1."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, int(self.retry_after_s + 0.999)))}


def from_grpc(
    status_name: str,
    details: str,
    *,
    retry_after_ms: int | None = None,
    caller_key: bool = False,
) -> ApiError:
    """The node's status as a channel error.

    ``caller_key``: the credentials were the caller's own (agent console), so the node refusing
    them is the caller's 401/403; otherwise they were the gateway's configured tenant key and a
    refusal is the operator's misconfiguration — the customer sees 502 and the log says why.
    """
    retry = retry_after_ms / 1000 if retry_after_ms is not None else None
    if status_name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        if caller_key:
            refused = "unauthenticated" if status_name == "UNAUTHENTICATED" else "forbidden"
            return ApiError.of(refused, detail=details)
        return ApiError.of("bad_gateway")
    mapped = _GRPC.get(status_name)
    if mapped is None:  # INTERNAL, UNKNOWN, ...: nothing the customer can act on
        return ApiError.of("bad_gateway")
    if mapped in ("rate_limited", "overloaded") and retry is None:
        retry = 1.0
    return ApiError.of(mapped, detail=details, retry_after_s=retry)


def pick_language(query_lang: str | None, accept_language: str | None) -> str:
    """``zh`` or ``en``: ``?lang=`` first, then the first supported Accept-Language tag."""
    for raw in [query_lang or "", *(accept_language or "").split(",")]:
        tag = raw.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"
