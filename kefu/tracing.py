"""OpenTelemetry spans across the gateway and the node: off by default and then free.

One process-wide switch. Until :func:`configure` is called nothing of OpenTelemetry is even
imported and :func:`span` returns one shared no-op context manager (a global read and a call),
so the node's import time and hot path do not change. With it on, spans are exported over OTLP
(HTTP/protobuf, batched in a background thread), or to any exporter given (tests collect them
in memory with ``InMemorySpanExporter``).

The spans of one customer message: ``gateway POST /v1/...`` (server) → ``node Converse``
(server, continuing the gateway's W3C ``traceparent`` from gRPC metadata) → ``inference``,
``sqlite commit``, ``plugin call`` (client; its HTTP request carries ``traceparent``).

With tracing off the node still forwards a received ``traceparent`` into plugin HTTP calls
(:func:`set_incoming` / :func:`current_traceparent`), so a trace started at the gateway reaches
the enterprise's systems either way.

Turned on by one line in node.yaml or gateway.yaml::

    tracing: {otlp_endpoint: "http://127.0.0.1:4318/v1/traces"}
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "configure",
    "current_traceparent",
    "enabled",
    "end_span",
    "server_span",
    "set_incoming",
    "shutdown",
    "span",
    "span_traceparent",
    "start_span",
]

log = logging.getLogger("kefu.tracing")

_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None
_NOOP = contextlib.nullcontext(None)
#: The traceparent a request arrived with, kept when tracing is off (for plugin calls).
_incoming: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kefu_traceparent", default=None
)


def enabled() -> bool:
    return _tracer is not None


def configure(
    *,
    service_name: str,
    otlp_endpoint: str | None = None,
    exporter: Any = None,
    batch: bool = True,
) -> None:
    """Turn tracing on for this process: spans to ``otlp_endpoint`` (an OTLP/HTTP traces URL)
    or to ``exporter``. Calling it again replaces the previous set-up."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        if not otlp_endpoint:
            raise ValueError("configure() needs otlp_endpoint or exporter")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint, timeout=5)
    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("kefu")
    log.info("tracing on: %s", otlp_endpoint or type(exporter).__name__)


def shutdown() -> None:
    """Flush and stop (spans still buffered are sent); tracing is off afterwards."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _context(traceparent: str | None) -> Any:
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}.get(kind, SpanKind.INTERNAL)


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: str = "internal"
) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span for the ``with`` block (a no-op while tracing is off)."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, kind=_kind(kind), attributes=attributes)


@contextlib.contextmanager
def server_span(
    name: str, metadata: Any, attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A server span continuing the caller's ``traceparent`` (gRPC metadata pairs). Off: the
    header is only remembered for :func:`current_traceparent`."""
    tp = None
    for key, value in metadata or ():
        if key == "traceparent":
            tp = value if isinstance(value, str) else value.decode("ascii", "replace")
            break
    if _tracer is None:
        token = _incoming.set(tp)
        try:
            yield None
        finally:
            _incoming.reset(token)
        return
    with _tracer.start_as_current_span(
        name, context=_context(tp), kind=_kind("server"), attributes=attributes
    ) as s:
        yield s


def set_incoming(traceparent: str | None) -> contextvars.Token[str | None]:
    return _incoming.set(traceparent)


def start_span(
    name: str, traceparent: str | None, attributes: Mapping[str, Any] | None = None
) -> Any:
    """A server span not made current (ended by :func:`end_span`); None while off."""
    if _tracer is None:
        return None
    return _tracer.start_span(
        name, context=_context(traceparent), kind=_kind("server"), attributes=attributes
    )


def end_span(s: Any, attributes: Mapping[str, Any] | None = None, *, error: bool = False) -> None:
    if s is None:
        return
    if attributes:
        s.set_attributes(dict(attributes))
    if error:
        from opentelemetry.trace import Status, StatusCode

        s.set_status(Status(StatusCode.ERROR))
    s.end()


def span_traceparent(s: Any) -> str:
    """The W3C header naming ``s`` as the parent."""
    ctx = s.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The header for an outgoing call: the current span's, or (tracing off) the one the
    request came with."""
    if _tracer is None:
        return _incoming.get()
    from opentelemetry import trace

    s = trace.get_current_span()
    if not s.get_span_context().is_valid:
        return _incoming.get()
    return span_traceparent(s)
