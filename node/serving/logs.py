"""Structured JSON logs for a node, with personal data redacted on the way out.

Every record becomes one JSON line: time, level, logger, message, plus whatever fields the
caller passed in ``extra={"fields": {...}}`` (request id, session id, tenant, intent, latency).
The :class:`~kefu.node.nlu.redaction.RedactingFilter` sits on the handler, so phone numbers,
e-mail addresses, ID and card numbers are replaced before anything is written — including in
exception text. Conversation text itself is never logged by the node, only ids and labels.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from kefu.logformat import JsonFormatter as BaseJsonFormatter
from kefu.node.nlu.redaction import RedactingFilter, redact

__all__ = ["JsonFormatter", "configure_logging"]


class JsonFormatter(BaseJsonFormatter):
    def clean(self, value: str) -> str:
        # Field values are redacted too: a caller may pass a user id that is a phone number.
        return redact(value)


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
