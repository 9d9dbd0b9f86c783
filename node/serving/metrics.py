"""Prometheus metrics for a node, served over HTTP at ``/metrics``.

Per tenant: turns (by scenario, intent and intent-model version), turn latency histogram,
fallbacks (clarifications), hand-offs by reason, errors by status code. Per model version,
read from the batching runtime at scrape time: batches and texts, batch-size buckets, queue
depth, in-flight batches, cache hits and misses. Node-wide: admission in-flight / queued /
shed. No conversation text ever becomes a label.

The per-tenant series follow the conversation service's events (:meth:`NodeMetrics.subscribe`
to its :class:`~kefu.node.dialog.events.EventHub`); the per-model and admission series are
read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kefu.errors import PermanentError
from kefu.node.dialog.conversation import TurnResult
from kefu.node.dialog.events import (
    AccessRefused,
    ConversationEvent,
    EventHub,
    RequestFailed,
    TurnServed,
)
from kefu.node.nlu.inference import RuntimeStats
from kefu.node.serving.admission import AdmissionStats

__all__ = ["NodeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class _RuntimeCollector(Collector):
    def __init__(
        self,
        runtime: Callable[[], RuntimeStats | None],
        admission: Callable[[], AdmissionStats | None],
    ):
        self._runtime = runtime
        self._admission = admission

    def collect(self) -> Iterator[Any]:
        stats = self._runtime()
        if stats is not None:
            labels = ["model", "version"]
            batches = CounterMetricFamily("kefu_model_batches", "Batches run", labels=labels)
            texts = CounterMetricFamily("kefu_model_texts", "Texts classified", labels=labels)
            sizes = CounterMetricFamily(
                "kefu_model_batch_size",
                "Batches by size bucket (lower bound)",
                labels=[*labels, "size"],
            )
            queue = GaugeMetricFamily("kefu_model_queue_depth", "Texts waiting", labels=labels)
            busy = GaugeMetricFamily("kefu_model_in_flight", "Batches running", labels=labels)
            hits = CounterMetricFamily(
                "kefu_model_cache_hits", "Prediction cache hits", labels=labels
            )
            miss = CounterMetricFamily(
                "kefu_model_cache_misses", "Prediction cache misses", labels=labels
            )
            for m in stats.models:
                lv = [m.name, m.version]
                batches.add_metric(lv, m.batches)
                texts.add_metric(lv, m.texts)
                for bucket, n in m.batch_sizes.items():
                    sizes.add_metric([*lv, bucket], n)
                queue.add_metric(lv, m.queue_depth)
                busy.add_metric(lv, m.in_flight)
                hits.add_metric(lv, m.cache_hits)
                miss.add_metric(lv, m.cache_misses)
            yield from (batches, texts, sizes, queue, busy, hits, miss)
        adm = self._admission()
        if adm is not None:
            yield GaugeMetricFamily(
                "kefu_admission_in_flight", "Turns being served", value=adm.in_flight
            )
            yield GaugeMetricFamily(
                "kefu_admission_queued", "Turns waiting for a slot", value=adm.queued
            )
            yield CounterMetricFamily(
                "kefu_admission_shed", "Turns shed (overload)", value=adm.shed_total
            )


class NodeMetrics:
    def __init__(
        self,
        *,
        runtime_stats: Callable[[], RuntimeStats | None] = lambda: None,
        admission_stats: Callable[[], AdmissionStats | None] = lambda: None,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter(
            "kefu_turns",
            "Customer turns answered",
            ["tenant", "scenario", "intent", "model_version"],
            registry=r,
        )
        self.latency = Histogram(
            "kefu_turn_latency_seconds",
            "Server-side turn latency",
            ["tenant"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rollout_turns = Counter(
            "kefu_rollout_turns",
            "Turns of sessions pinned to a rollout, per arm (canary / baseline)",
            ["tenant", "rollout", "arm", "model_version"],
            registry=r,
        )
        self.fallbacks = Counter(
            "kefu_fallbacks", "Turns answered with a clarification", ["tenant"], registry=r
        )
        self.handoffs = Counter(
            "kefu_handoffs", "Hand-offs to a human", ["tenant", "reason"], registry=r
        )
        self.errors = Counter(
            "kefu_errors", "Failed requests by status code", ["tenant", "code"], registry=r
        )
        self.plugin_calls = Counter(
            "kefu_plugin_calls",
            "Plugin calls by outcome (ok, not_found, rejected, failed) and code",
            ["tenant", "plugin", "outcome", "code"],
            registry=r,
        )
        self.plugin_latency = Histogram(
            "kefu_plugin_latency_seconds",
            "Plugin call latency, retries included",
            ["tenant", "plugin"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.flow_events = Counter(
            "kefu_flow_events",
            "Task-flow steps (started, asked, confirm, done, rejected, failed, cancelled, ...)",
            ["tenant", "flow", "event"],
            registry=r,
        )
        self.auth_failures = Counter(
            "kefu_auth_failures",
            "Requests refused for a missing or unknown API key (tenant '-') or a key whose "
            "role may not call the RPC (its tenant)",
            ["tenant", "reason"],
            registry=r,
        )
        r.register(_RuntimeCollector(runtime_stats, admission_stats))
        self._server: Any = None
        self._events: EventHub | None = None

    def subscribe(self, events: EventHub) -> None:
        """Count what ``events`` announces: turns, failed requests, refused keys."""
        self._events = events
        events.subscribe(self._on_event, TurnServed, RequestFailed, AccessRefused)

    def _on_event(self, event: ConversationEvent) -> None:
        if isinstance(event, TurnServed):
            self.observe_turn(event.tenant, event.result)
        elif isinstance(event, RequestFailed):
            self.errors.labels(event.tenant or "-", event.code).inc()
        elif isinstance(event, AccessRefused):
            self.auth_failures.labels(event.tenant or "-", event.reason).inc()

    def observe_turn(self, tenant: str, result: TurnResult) -> None:
        self.turns.labels(
            tenant, result.scenario, result.intent, result.model_versions.get("intent", "")
        ).inc()
        self.latency.labels(tenant).observe(result.latency_us / 1e6)
        if result.split is not None:
            self.rollout_turns.labels(
                tenant,
                result.split.rollout_id,
                result.split.arm,
                result.model_versions.get("intent", ""),
            ).inc()
        if result.clarify:
            self.fallbacks.labels(tenant).inc()
        if result.handoff:
            self.handoffs.labels(tenant, result.handoff_reason or "unknown").inc()
        for call in result.plugin_calls:
            self.plugin_calls.labels(tenant, call.plugin, call.outcome, call.code).inc()
            self.plugin_latency.labels(tenant, call.plugin).observe(call.latency_ms / 1000.0)
        if result.flow and result.flow_event:
            self.flow_events.labels(tenant, result.flow, result.flow_event).inc()

    def forget_tenant(self, tenant: str) -> None:
        """Drop a removed tenant's series, so /metrics lists only the tenants served."""
        for metric in (
            self.turns,
            self.latency,
            self.fallbacks,
            self.handoffs,
            self.errors,
            self.plugin_calls,
            self.plugin_latency,
            self.flow_events,
            self.auth_failures,
        ):
            # prometheus_client has no "remove by one label": list the children's label values.
            children = list(getattr(metric, "_metrics", {}))
            for labels in children:
                if labels and labels[0] == tenant:
                    metric.remove(*labels)

    def serve(self, address: str) -> int:
        """Start the HTTP endpoint in a background thread; returns the bound port."""
        host, _, port = address.rpartition(":")
        try:
            server, _thread = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=self.registry
            )
        except (OSError, ValueError) as exc:
            raise PermanentError(f"cannot serve metrics on {address}: {exc}") from exc
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
