"""W3C Trace Context at the gateway: a request's ``traceparent`` is accepted (or a trace
started), the gateway's span becomes the parent of the node call (the header travels to the
node as gRPC metadata ``traceparent``) and is returned to the client. Pure.

Spans are kept by a :class:`SpanSink` when one is set. With OpenTelemetry on
(:mod:`kefu.tracing`, ``tracing: {otlp_endpoint: ...}`` in gateway.yaml) the request span is
also an OpenTelemetry server span, and its ids are the ones sent to the node.
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from kefu import tracing

__all__ = ["Span", "SpanSink", "Tracer", "new_id", "parse_traceparent"]

#: Trace, span and request ids: random but not secret, so a seeded PRNG (no syscall each).
_ids = random.Random(os.urandom(16))


def new_id(bits: int = 128) -> str:
    """``bits`` random bits as lower-case hex (a trace id by default; 64 for a span id)."""
    return f"{_ids.getrandbits(bits):0{bits // 4}x}"


_TP = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid version-00 header; None otherwise."""
    m = _TP.fullmatch((value or "").strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2), m.group(3)


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    flags: str = "01"
    start: float = field(default_factory=time.time)
    end_time: float = 0.0
    attributes: dict[str, object] = field(default_factory=dict)
    sink: SpanSink | None = None
    otel: Any = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def end(self, **attributes: object) -> None:
        self.attributes.update(attributes)
        self.end_time = time.time()
        if self.otel is not None:
            status = attributes.get("status")
            error = isinstance(status, int) and status >= 500
            attrs = {"http.status_code": status, "http.route": attributes.get("route")}
            tracing.end_span(
                self.otel, {k: v for k, v in attrs.items() if v is not None}, error=error
            )
        if self.sink is not None:
            self.sink.spans.append(self)


@dataclass
class SpanSink:
    """Finished spans, newest last (bounded)."""

    max_spans: int = 10_000
    spans: list[Span] = field(default_factory=list)


@dataclass
class Tracer:
    sink: SpanSink | None = None

    def start_request(self, traceparent: str | None, method: str, path: str) -> Span:
        parsed = parse_traceparent(traceparent)
        trace_id, parent, flags = parsed or (new_id(128), "", "01")
        if self.sink is not None and len(self.sink.spans) >= self.sink.max_spans:
            del self.sink.spans[: self.sink.max_spans // 2]
        attributes: dict[str, object] = {"http.method": method, "http.target": path}
        otel = None
        span_id = ""
        if tracing.enabled():
            header = f"00-{trace_id}-{parent}-{flags}" if parsed else None
            otel = tracing.start_span(f"gateway {method}", header, attributes)
            _, trace_id, span_id, flags = tracing.span_traceparent(otel).split("-")
        return Span(
            name=f"gateway {method}",
            trace_id=trace_id,
            span_id=span_id or new_id(64),
            parent_id=parent,
            flags=flags,
            attributes=attributes,
            sink=self.sink,
            otel=otel,
        )
