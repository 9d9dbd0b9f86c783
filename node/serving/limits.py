"""Size limits of the node API's request fields: one table, checked before any handler runs.

Every string and map field of every KefuNode request has a limit here; a request beyond one
is INVALID_ARGUMENT naming the field and the limit, never echoing the value (a 64 KB id in an
error message would break the client's metadata size limit). The API documentation's limits
table lists these constants. Pure: no gRPC, no protobuf imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kefu.node.sessions.session_rules import MAX_COMMENT_CHARS, InvalidRecord

__all__ = [
    "FIELD_CHARS",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_CHARS",
    "MAX_TEXT_BYTES",
    "LimitExceeded",
    "check_fields",
    "shown",
]

#: The customer's (or the agent's) message, UTF-8 bytes.
MAX_TEXT_BYTES = 4096
#: Characters per string field (text: see MAX_TEXT_BYTES; metadata: see below).
FIELD_CHARS: dict[str, int] = {
    "session_id": 64,  # node-made ids are 22 characters
    "handoff_id": 64,
    "request_id": 128,  # a UUID is 36
    "user_id": 128,
    "agent_id": 128,
    "language": 16,  # a BCP 47 primary tag
    "entry_path": 1024,
    "page_token": 512,
    "corrected_intent": 128,
    "reason": 256,  # EndSession
    "note": MAX_COMMENT_CHARS,  # CloseHandoff
    "comment": MAX_COMMENT_CHARS,  # SubmitFeedback
}
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
#: How much of an over-long id an error message may quote.
SHOWN_CHARS = 64


class LimitExceeded(InvalidRecord):
    """A request field is over its documented limit (INVALID_ARGUMENT)."""


def shown(value: str) -> str:
    """``value`` for an error message: repr, cut to SHOWN_CHARS characters."""
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…")


def _over(name: str, limit: int, unit: str) -> LimitExceeded:
    return LimitExceeded(
        f"{name} is longer than {limit} {unit} / {name} 超过 {limit} 个{_ZH[unit]}"
    )


_ZH = {"characters": "字符", "bytes": "字节", "entries": "条目"}


def _check_map(name: str, value: Mapping[str, str]) -> None:
    if len(value) > MAX_METADATA_ENTRIES:
        raise _over(name, MAX_METADATA_ENTRIES, "entries")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise _over(f"{name} key", MAX_METADATA_KEY_CHARS, "characters")
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise _over(f"{name} value", MAX_METADATA_VALUE_CHARS, "characters")


def check_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """Check ``(field name, value)`` pairs of one request; LimitExceeded on the first over.

    A string field missing from the table is held to the smallest limit, so a field added to
    the proto is never unbounded.
    """
    for name, value in fields:
        if isinstance(value, str):
            if name == "text":
                if len(value) > MAX_TEXT_BYTES or len(value.encode("utf-8", "replace")) > (
                    MAX_TEXT_BYTES
                ):
                    raise _over(name, MAX_TEXT_BYTES, "bytes")
            elif len(value) > FIELD_CHARS.get(name, min(FIELD_CHARS.values())):
                raise _over(name, FIELD_CHARS.get(name, min(FIELD_CHARS.values())), "characters")
        elif isinstance(value, Mapping):
            _check_map(name, value)
