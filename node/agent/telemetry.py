"""Telemetry aggregates a node sends to the control plane: counts, never conversation text.

:class:`TelemetryRecorder` sums every turn into the open window's aggregate for its tenant ×
scenario × model version (turns, latency histogram, errors, fallbacks, hand-offs, confidence,
feedback). :meth:`close_window` turns the window into a :class:`~kefu.wire.TelemetryBatch`
queued in a bounded buffer; when the buffer is full the **oldest** batch is dropped and counted
(``dropped``, also reported in every batch and in the node status), so a long outage costs old
data, never memory. The agent drains the buffer in order whenever the bus is reachable.

On shutdown the agent saves the batches it could not deliver (:meth:`pending` →
:func:`save_pending`) and the next run puts them back in front of its own
(:func:`load_pending` → :meth:`restore`); each keeps its original (node, run, seq), so a batch
that did arrive before the save is still stored once.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from kefu.wire import (
    LATENCY_BOUNDS_MS,
    TelemetryAggregate,
    TelemetryBatch,
    WireError,
    decode,
    encode,
)

__all__ = ["TelemetryRecorder", "TurnSample", "load_pending", "save_pending"]


@dataclass(frozen=True, kw_only=True)
class TurnSample:
    tenant: str
    scenario: str
    model_version: str
    latency_ms: float
    confidence: float = 0.0
    fallback: bool = False
    handoff: bool = False


@dataclass(kw_only=True)
class TelemetryRecorder:
    node_id: str
    region: str
    #: Closed windows kept while the control plane is unreachable (overload policy: drop oldest).
    max_buffered: int = 360
    #: Identifies this recorder's run: batch seqs restart at 1 with every process.
    started_at: float = field(default_factory=time.time)
    _window_start: float = field(default_factory=time.time)
    _open: dict[tuple[str, str, str], TelemetryAggregate] = field(default_factory=dict)
    _buffer: deque[TelemetryBatch] = field(default_factory=deque)
    _seq: int = 0
    dropped: int = 0

    def _agg(self, tenant: str, scenario: str, model_version: str) -> TelemetryAggregate:
        key = (tenant, scenario, model_version)
        agg = self._open.get(key)
        if agg is None:
            agg = self._open[key] = TelemetryAggregate(
                tenant=tenant,
                scenario=scenario,
                model_version=model_version,
                window_start=self._window_start,
                window_s=0.0,
            )
        return agg

    def record_turn(self, s: TurnSample) -> None:
        agg = self._agg(s.tenant, s.scenario, s.model_version)
        agg.turns += 1
        agg.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS_MS, s.latency_ms)] += 1
        agg.latency_sum_ms += s.latency_ms
        agg.confidence_sum += s.confidence
        agg.fallbacks += int(s.fallback)
        agg.handoffs += int(s.handoff)

    def record_error(self, tenant: str) -> None:
        self._agg(tenant or "-", "", "").errors += 1

    def record_feedback(
        self,
        tenant: str,
        *,
        rating: int = 0,
        corrected_intent: str = "",
        predicted_intent: str = "",
        scenario: str = "",
        model_version: str = "",
    ) -> None:
        agg = self._agg(tenant, scenario, model_version)
        agg.feedback += 1
        agg.rating_sum += rating
        if corrected_intent:
            agg.corrections += 1
            agg.corrected_wrong += int(corrected_intent != predicted_intent)

    def close_window(self, now: float | None = None) -> TelemetryBatch | None:
        """End the open window; queue its batch (None if nothing happened in it)."""
        now = now or time.time()
        aggregates = list(self._open.values())
        for agg in aggregates:
            agg.window_s = round(now - self._window_start, 3)
        self._open = {}
        self._window_start = now
        if not aggregates:
            return None
        self._seq += 1
        batch = TelemetryBatch(
            node_id=self.node_id,
            region=self.region,
            seq=self._seq,
            started_at=self.started_at,
            aggregates=aggregates,
            dropped=self.dropped,
        )
        if len(self._buffer) >= self.max_buffered:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(batch)
        return batch

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def peek(self) -> TelemetryBatch | None:
        return self._buffer[0] if self._buffer else None

    def pop(self) -> None:
        """The oldest batch was delivered."""
        if self._buffer:
            self._buffer.popleft()

    def pending(self) -> list[TelemetryBatch]:
        """The batches not delivered yet, oldest first."""
        return list(self._buffer)

    def restore(self, batches: list[TelemetryBatch]) -> int:
        """Put batches saved by an earlier run in front of this run's; beyond ``max_buffered``
        the oldest go (overload policy as for :meth:`close_window`). Returns the number dropped."""
        merged = list(batches) + list(self._buffer)
        excess = max(0, len(merged) - self.max_buffered)
        self._buffer = deque(merged[excess:])
        self.dropped += excess
        return excess


def save_pending(path: Path, batches: list[TelemetryBatch]) -> None:
    """Write undelivered batches (one JSON document a line) atomically; none: remove the file."""
    if not batches:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            for batch in batches:
                fh.write(encode(batch).replace(b"\n", b" ") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # a crash leaves the old file or the new one, never half
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_pending(path: Path) -> tuple[list[TelemetryBatch], int]:
    """Batches saved by :func:`save_pending` and the number of unreadable lines skipped."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return [], 0
    batches: list[TelemetryBatch] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            batches.append(decode(TelemetryBatch, line, what=str(path)))
        except WireError:
            bad += 1  # a torn or foreign line costs that batch, not the others
    return batches, bad
