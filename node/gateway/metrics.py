"""Prometheus metrics of the gateway, per channel (``/metrics`` on the gateway's port).

``kefu_gateway_requests_total{channel,route,status}``, ``kefu_gateway_request_seconds
{channel,route}``, ``kefu_gateway_websockets{channel}`` (open connections),
``kefu_gateway_node_up{node}`` and ``kefu_gateway_node_in_flight{node}`` (read from the pool at
scrape time), ``kefu_gateway_shed_total`` (backlog full). Routes are templates
(``/v1/chat/{public_id}/messages``), never ids or text.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kefu.node.gateway.routing import NodeHealth, NodePool
from kefu.node.gateway.traffic import Backlog

__all__ = ["GatewayMetrics"]


class _PoolCollector(Collector):
    def __init__(self, pool: NodePool, backlog: Backlog):
        self.pool, self.backlog = pool, backlog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "kefu_gateway_node_up", "1 when the node is in the pool", labels=["node"]
        )
        busy = GaugeMetricFamily(
            "kefu_gateway_node_in_flight", "Requests in flight per node", labels=["node"]
        )
        for n in self.pool.nodes.values():
            up.add_metric([n.id], 1.0 if n.health is NodeHealth.UP else 0.0)
            busy.add_metric([n.id], float(n.in_flight))
        yield up
        yield busy
        shed = GaugeMetricFamily("kefu_gateway_shed", "Requests shed (backlog full), total")
        shed.add_metric([], float(self.backlog.shed))
        yield shed
        waiting = GaugeMetricFamily("kefu_gateway_waiting", "Requests waiting for a slot")
        waiting.add_metric([], float(self.backlog.waiting))
        yield waiting


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kefu_gateway_requests",
            "Requests by channel, route and status",
            ["channel", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kefu_gateway_request_seconds",
            "Request latency at the gateway",
            ["channel", "route"],
            registry=r,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.websockets = Gauge(
            "kefu_gateway_websockets", "Open WebSocket connections", ["channel"], registry=r
        )

    def watch_pool(self, pool: NodePool, backlog: Backlog) -> None:
        self.registry.register(_PoolCollector(pool, backlog))

    def observe(self, *, channel: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(channel, route, str(status)).inc()
        self.latency.labels(channel, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
