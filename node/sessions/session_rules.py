"""The rules of session storage: the storage errors, the session / turn-role / hand-off
statuses and the moves allowed between them, and the checks and encodings every store uses
(tenant ids, record ids, UTC timestamps, JSON values, text limits, paging cursors).

The records and the :class:`~kefu.node.sessions.store.SessionStore` seam built on these are in
:mod:`kefu.node.sessions.store`, which re-exports every name here. Pure: no sqlite3, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from kefu.errors import PermanentError, TemporaryError

__all__ = [
    "MAX_COMMENT_CHARS",
    "MAX_PAGE_SIZE",
    "MAX_TEXT_CHARS",
    "TERMINAL_STATUSES",
    "DuplicateRequest",
    "HandoffStatus",
    "InvalidRecord",
    "InvalidTenant",
    "RecordNotFound",
    "SessionStatus",
    "StateConflict",
    "StorageBusy",
    "StorageCorrupt",
    "StorageUnavailable",
    "TurnRole",
    "as_utc",
    "check_limit",
    "check_retention",
    "check_session_move",
    "check_text",
    "decode_cursor",
    "encode_cursor",
    "from_iso",
    "json_clone",
    "json_dumps",
    "new_record_id",
    "to_iso",
    "utc_now",
    "validate_tenant_id",
]

MAX_TEXT_CHARS = 20_000  # longer turn text is refused rather than bloating the store
MAX_PAGE_SIZE = 500
MAX_COMMENT_CHARS = 2000  # a feedback comment
_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


# --------------------------------------------------------------------------- errors


class StorageUnavailable(TemporaryError):
    """Storage cannot take writes now: disk/quota full, I/O error, read-only, or store closed."""


class StorageBusy(TemporaryError):
    """Lock contention outlasted the retries, or the store's bounded queue is full."""


class StorageCorrupt(PermanentError):
    """The database file is damaged or is not a database; an operator must restore it."""


class InvalidTenant(PermanentError):
    """A tenant id is not a safe slug, or a database file belongs to another tenant."""


class InvalidRecord(PermanentError):
    """A record or argument is malformed (bad rating, non-JSON value, bad cursor, …)."""


class StateConflict(PermanentError):
    """The record's state forbids the change (ended session, hand-off already claimed)."""


class DuplicateRequest(StateConflict):
    """The session already has a turn with this request id (a retry): nothing was written."""

    def __init__(self, session_id: str, request_id: str):
        self.session_id = session_id
        self.request_id = request_id
        super().__init__("request_id already answered in this session / 该请求已处理")


class RecordNotFound(PermanentError):
    """No such session, turn or hand-off in this tenant's store."""

    _ZH: ClassVar[dict[str, str]] = {"session": "会话", "turn": "对话轮次", "handoff": "转人工记录"}

    def __init__(self, kind: str, record_id: object):
        self.kind = kind
        self.record_id = record_id
        zh = self._ZH.get(kind, kind)
        super().__init__(f"{kind} {record_id!r} not found / 未找到{zh} {record_id!r}")


# --------------------------------------------------------------------------- enums and rules


class SessionStatus(StrEnum):
    OPEN = "open"
    HANDED_OFF = "handed_off"
    ENDED = "ended"
    EXPIRED = "expired"


class TurnRole(StrEnum):
    CUSTOMER = "customer"
    BOT = "bot"
    AGENT = "agent"


class HandoffStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    CLOSED = "closed"


TERMINAL_STATUSES = frozenset({SessionStatus.ENDED, SessionStatus.EXPIRED})
_S = SessionStatus
_SESSION_MOVES = {
    _S.OPEN: {_S.HANDED_OFF, _S.ENDED, _S.EXPIRED},
    _S.HANDED_OFF: {_S.OPEN, _S.ENDED, _S.EXPIRED},
    _S.ENDED: set(),
    _S.EXPIRED: set(),
}
_H = HandoffStatus
# CLAIMED → OPEN is an agent releasing the conversation back to the queue.
_HANDOFF_MOVES = {
    _H.OPEN: {_H.CLAIMED, _H.CLOSED},
    _H.CLAIMED: {_H.OPEN, _H.CLOSED},
    _H.CLOSED: set(),
}


def validate_tenant_id(tenant: str) -> str:
    """Return ``tenant`` if it is a slug (``[a-z0-9][a-z0-9_-]{0,62}``). It names a directory,
    so dots and slashes are refused and it can never escape the data directory."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidTenant(
            f"invalid tenant id {tenant!r}: use 1-63 of a-z 0-9 _ - / "
            f"租户 ID {tenant!r} 无效：只能使用 a-z 0-9 _ -，1-63 个字符"
        )
    return tenant


def new_record_id() -> str:
    """A random, unguessable id: 128 bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC; naive datetimes are ambiguous and refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRecord(f"timestamp {value!r} has no time zone / 时间戳缺少时区")
    return value.astimezone(UTC)


def to_iso(value: datetime) -> str:
    """Fixed-width UTC ISO text, so string order equals time order (SQL, cursors)."""
    return as_utc(value).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    return as_utc(datetime.fromisoformat(text))


def json_dumps(value: Any, *, what: str = "value") -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{what} is not JSON-serialisable / {what} 无法序列化为 JSON") from exc


def json_clone(value: Any, *, what: str = "value") -> Any:
    """What a JSON round trip gives back; both stores hand out exactly this."""
    return json.loads(json_dumps(value, what=what))


def check_text(name: str, value: str | None, max_len: int, *, required: bool = False) -> None:
    """Refuse non-text or over-long values (and missing or empty ones when ``required``)."""
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value) or len(value) > max_len:
        raise InvalidRecord(
            f"{name} must be text of 1-{max_len} characters / {name} 须为 1-{max_len} 个字符的文本"
        )


def check_session_move(old: SessionStatus, new: SessionStatus) -> None:
    if new != old and new not in _SESSION_MOVES[old]:
        raise StateConflict(
            f"session cannot go from {old} to {new} / 会话状态不能从 {old} 变为 {new}"
        )


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRecord(f"limit must be 1-{MAX_PAGE_SIZE} / 每页数量须为 1-{MAX_PAGE_SIZE}")
    return limit


def check_retention(retention: timedelta) -> timedelta:
    if retention <= timedelta(0):
        raise InvalidRecord("retention must be positive / 保留期必须为正")
    return retention


def encode_cursor(created_at: datetime, record_id: str) -> str:
    """Opaque keyset cursor: the (created_at, id) of the last item returned."""
    return base64.urlsafe_b64encode(f"{to_iso(created_at)}|{record_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    """Return (created_at ISO text, id); the ISO text compares like the timestamp."""
    try:
        stamp, record_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return to_iso(from_iso(stamp)), record_id
    except (binascii.Error, UnicodeError, ValueError, OverflowError, InvalidRecord) as exc:
        raise InvalidRecord("malformed paging cursor / 分页游标无效") from exc
