"""A customer's turn as the node's service sees it: the request, the result, and why a request
is refused (empty or oversize text, an unknown session, a rate limit).

:class:`~kefu.node.dialog.conversation.ConversationService` takes a :class:`TurnRequest` and
answers with a :class:`TurnResult`; the adapters (gRPC, CLI) translate these errors into status
codes and messages (Chinese and English).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from kefu.errors import PermanentError, TemporaryError
from kefu.node.dialog.plugin_api import PluginCall
from kefu.node.dialog.split import SplitTag
from kefu.node.nlu.entities import Entity
from kefu.node.serving.limits import MAX_TEXT_BYTES

__all__ = [
    "MAX_TEXT_BYTES",
    "InvalidTurn",
    "RateLimited",
    "SessionNotFound",
    "TurnRequest",
    "TurnResult",
    "validate_text",
]


class InvalidTurn(PermanentError):
    """The request itself is unusable (empty, oversize or control-character text, ...)."""


class SessionNotFound(PermanentError):
    """No such session for this tenant (another tenant's id looks exactly the same)."""


class RateLimited(TemporaryError):
    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(
            f"rate limit exceeded, retry in {retry_after:.2f} s / "
            f"请求过于频繁，请 {retry_after:.2f} 秒后重试"
        )


def validate_text(text: str) -> str:
    """The customer's text, or InvalidTurn with a message in both languages."""
    if not text or not text.strip():
        raise InvalidTurn("text is empty / 消息内容为空")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise InvalidTurn(
            f"text is {size} bytes, the limit is {MAX_TEXT_BYTES} / "
            f"消息过长（{size} 字节，上限 {MAX_TEXT_BYTES}）"
        )
    for ch in text:
        if ch in "\t\n\r":
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs") or (cat == "Cf" and ch not in "\u200d\u200c"):
            raise InvalidTurn(
                f"text contains a control character U+{ord(ch):04X} / "
                f"消息包含控制字符 U+{ord(ch):04X}"
            )
    return text.strip()


@dataclass(frozen=True, kw_only=True)
class TurnRequest:
    text: str
    session_id: str | None = None
    #: None: the session's channel (refused for a new session).
    channel: str | None = "web"
    user_id: str | None = None
    entry_path: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    language: str | None = None
    request_id: str | None = None
    #: The id a new session gets (ConverseStream announces it before the turn runs).
    new_session_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class TurnResult:
    session_id: str
    seq: int
    reply: str
    language: str
    intent: str
    confidence: float
    sentiment: str
    sentiment_score: float
    scenario: str
    entities: list[Entity]
    handoff: bool
    handoff_reason: str
    handoff_id: str
    clarify: bool
    kb_entry_id: str
    model_versions: dict[str, str]
    latency_us: int
    request_id: str
    plugin_calls: tuple[PluginCall, ...] = ()
    flow: str = ""
    flow_event: str = ""
    #: The stored reply of an earlier request with the same request_id (a retry): no turn ran.
    replayed: bool = False
    #: The rollout arm that served this turn (None: the session is not in a rollout).
    split: SplitTag | None = None
    #: The scenario's response-time objective (0: the node-wide default applies).
    latency_objective_ms: float = 0.0
