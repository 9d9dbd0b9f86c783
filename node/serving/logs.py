"""Structured JSON logs for a node, with personal data redacted on the way out.

Every record becomes one JSON line: time, level, logger, message, plus whatever fields the
caller passed in ``extra={"fields": {...}}`` (request id, session id, tenant, intent, latency).
The :class:`~kefu.node.nlu.redaction.RedactingFilter` sits on the handler, so phone numbers,
e-mail addresses, ID and card numbers are replaced before anything is written — including in
exception text. Conversation text itself is never logged by the node, only ids and labels.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from kefu.node.nlu.redaction import RedactingFilter, redact

__all__ = ["JsonFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # Field values are redacted too: a caller may pass a user id that is a phone number.
            entry.update({k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_text or record.exc_info:
            entry["error"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    *, level: int = logging.INFO, fmt: str = "json", stream: TextIO | None = None
) -> None:
    """Route the ``kefu`` loggers to one redacting handler (JSON lines or plain text)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("kefu")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
