"""JSON-lines log records, shared by the node (with PII redaction) and the gateway.

Every record becomes one JSON line: time, level, logger, message, plus whatever fields the
caller passed in ``extra={"fields": {...}}``. A subclass may redact string field values
(:meth:`JsonFormatter.clean`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter"]


class JsonFormatter(logging.Formatter):
    def clean(self, value: str) -> str:
        """A string field value as written (the node's subclass redacts personal data)."""
        return value

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: self.clean(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_text or record.exc_info:
            entry["error"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)
