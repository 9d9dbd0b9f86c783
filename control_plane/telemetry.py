"""Telemetry time series: node batches in, per tenant × scenario × model version summaries out.

The time series *is* the ``KEFU_TELEMETRY`` stream (kept 7 days by JetStream), so a restarted
control plane has all of it. :class:`TelemetryIndex` follows the stream live into in-memory
minute buckets for fast queries (rebuilt from the stream on start); :func:`summarise` is the
pure aggregation both use. Percentiles come from the fixed latency histogram buckets (upper
bound of the bucket holding the quantile; the overflow bucket reports twice the last bound).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kefu.bus import Bus, BusUnavailable, NotFound, cancel_and_wait
from kefu.errors import KefuError
from kefu.wire import (
    LATENCY_BOUNDS_MS,
    STREAM_TELEMETRY,
    TelemetryAggregate,
    TelemetryBatch,
    decode,
)

__all__ = ["Series", "TelemetryIndex", "percentile_ms", "summarise"]

log = logging.getLogger("kefu.control_plane.telemetry")


def percentile_ms(buckets: list[int], q: float) -> float:
    total = sum(buckets)
    if not total:
        return 0.0
    need = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= need:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 2
    return LATENCY_BOUNDS_MS[-1] * 2


@dataclass(kw_only=True)
class Series:
    tenant: str
    scenario: str
    model_version: str
    total: TelemetryAggregate
    #: bucket start → aggregate of that bucket
    points: dict[float, TelemetryAggregate] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        t = self.total
        turns = max(t.turns, 1)
        return {
            "mean_latency_ms": t.latency_sum_ms / turns,
            "p50_ms": percentile_ms(t.latency_buckets, 0.5),
            "p95_ms": percentile_ms(t.latency_buckets, 0.95),
            "fallback_rate": t.fallbacks / turns,
            "handoff_rate": t.handoffs / turns,
            "mean_confidence": t.confidence_sum / turns,
            "mean_rating": t.rating_sum / t.rated if t.rated else 0.0,
            "rated": float(t.rated),
            "resolved_rate": t.resolved_yes / (t.resolved_yes + t.resolved_no)
            if t.resolved_yes + t.resolved_no
            else -1.0,
            "corrected_accuracy": 1 - t.corrected_wrong / t.corrections if t.corrections else -1.0,
        }


def summarise(
    batches: Iterable[TelemetryBatch],
    *,
    tenant: str = "",
    since: float = 0.0,
    bucket_s: float = 60.0,
) -> list[Series]:
    out: dict[tuple[str, str, str], Series] = {}
    seen: set[tuple[str, float, int]] = set()
    for b in batches:
        if (b.node_id, b.started_at, b.seq) in seen:
            continue  # delivered twice (retry after a lost acknowledgement)
        seen.add((b.node_id, b.started_at, b.seq))
        for a in b.aggregates:
            if (tenant and a.tenant != tenant) or a.window_start + a.window_s < since:
                continue
            key = (a.tenant, a.scenario, a.model_version)
            s = out.get(key)
            if s is None:
                zero = TelemetryAggregate(
                    tenant=a.tenant,
                    scenario=a.scenario,
                    model_version=a.model_version,
                    window_start=a.window_start,
                    window_s=0.0,
                )
                s = out[key] = Series(
                    tenant=a.tenant, scenario=a.scenario, model_version=a.model_version, total=zero
                )
            s.total.merge(a)
            at = a.window_start - a.window_start % bucket_s
            p = s.points.get(at)
            if p is None:
                p = s.points[at] = a.model_copy(deep=True)
            else:
                p.merge(a)
    return [out[k] for k in sorted(out)]


class TelemetryIndex:
    """Follows the telemetry stream; keeps the last ``retain_s`` of batches in memory."""

    def __init__(self, bus: Bus, *, retain_s: float = 3600.0, poll_s: float = 1.0):
        self.bus = bus
        self.retain_s = retain_s
        self.poll_s = poll_s
        self.batches: list[TelemetryBatch] = []
        self.dropped_by_node: dict[str, int] = {}
        self.received = 0
        self._last_seq = 0
        self._task: asyncio.Task[None] | None = None

    def ingest(self, batch: TelemetryBatch) -> None:
        self.batches.append(batch)
        self.dropped_by_node[batch.node_id] = batch.dropped
        self.received += 1

    def _trim(self) -> None:
        cutoff = time.time() - self.retain_s
        if self.batches and self.batches[0].sent_at < cutoff:
            self.batches = [b for b in self.batches if b.sent_at >= cutoff]

    async def poll_once(self) -> int:
        if self._last_seq:
            msgs = await self.bus.stream_read(
                STREAM_TELEMETRY, since_seq=self._last_seq + 1, limit=0
            )
        else:
            since = time.time() - self.retain_s
            msgs = await self.bus.stream_read(STREAM_TELEMETRY, since=since, limit=0)
        n = 0
        for m in msgs:
            if m.seq <= self._last_seq:
                continue
            self._last_seq = m.seq
            try:
                self.ingest(decode(TelemetryBatch, m.data, what="telemetry batch"))
                n += 1
            except KefuError as exc:
                log.warning("skipping telemetry message %d: %s", m.seq, exc)
        self._trim()
        return n

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except (BusUnavailable, NotFound) as exc:
                log.debug("telemetry poll: %s", exc)
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="kefu-telemetry-index")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
