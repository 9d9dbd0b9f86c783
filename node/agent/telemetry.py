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

:class:`TelemetryShipper` is the agent's side: every ``telemetry_s`` it closes the open window
and flushes the buffer to the telemetry stream, each batch with a message id
(``node:started_at:seq``) so a resend after a lost acknowledgement is stored once; on close it
flushes the last window within ``flush_timeout_s`` and saves what is still undelivered.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kefu.bus import Bus
from kefu.errors import KefuError
from kefu.node.audit.chain import AuditRecord
from kefu.wire import (
    LATENCY_BOUNDS_MS,
    NodeAuditEvent,
    TelemetryAggregate,
    TelemetryBatch,
    WireError,
    decode,
    encode,
    telemetry_subject,
)

__all__ = [
    "TelemetryRecorder",
    "TelemetryShipper",
    "TelemetryShutdown",
    "TurnSample",
    "load_pending",
    "save_pending",
]

log = logging.getLogger("kefu.node.agent.telemetry")


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
    #: Audit records per window at most (the node's own log keeps every one).
    max_audit_per_window: int = 2000
    _audit: list[NodeAuditEvent] = field(default_factory=list)
    audit_dropped: int = 0

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

    def record_audit(self, record: AuditRecord) -> None:
        """A node audit-log record, shipped with the next batch."""
        if len(self._audit) >= self.max_audit_per_window:
            self.audit_dropped += 1
            return
        self._audit.append(NodeAuditEvent.model_validate(asdict(record)))

    def close_window(self, now: float | None = None) -> TelemetryBatch | None:
        """End the open window; queue its batch (None if nothing happened in it)."""
        now = now or time.time()
        aggregates = list(self._open.values())
        for agg in aggregates:
            agg.window_s = round(now - self._window_start, 3)
        self._open = {}
        self._window_start = now
        audit, self._audit = self._audit, []
        if not aggregates and not audit:
            return None
        self._seq += 1
        batch = TelemetryBatch(
            node_id=self.node_id,
            region=self.region,
            seq=self._seq,
            started_at=self.started_at,
            aggregates=aggregates,
            dropped=self.dropped,
            audit=audit,
            audit_dropped=self.audit_dropped,
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


@dataclass(frozen=True, kw_only=True)
class TelemetryShutdown:
    """What became of the telemetry when the agent closed (batches, not turns)."""

    sent: int = 0
    #: Saved to ``telemetry-pending.jsonl``: sent after the restart.
    saved: int = 0
    #: Lost over this run's lifetime (buffer overflow while offline, or the save failed).
    dropped: int = 0
    #: Why the save failed, if it did (the node then exits with EXIT_SHUTDOWN_FAILED).
    save_error: str = ""


class TelemetryShipper:
    def __init__(
        self,
        recorder: TelemetryRecorder,
        *,
        bus: Callable[[], Bus | None],
        region: str,
        node_id: str,
        pending_path: Path,
        interval_s: float,
        flush_timeout_s: float,
    ):
        self.recorder = recorder
        self._bus = bus
        self.subject = telemetry_subject(region, node_id)
        self.node_id = node_id
        self.pending_path = pending_path
        self.interval_s = interval_s
        self.flush_timeout_s = flush_timeout_s
        self.sent = 0  # batches delivered

    def restore(self) -> None:
        """Batches an earlier run could not deliver go first (the file stays until the next
        close rewrites it, so a crash cannot lose them; resending is deduplicated)."""
        try:
            batches, bad = load_pending(self.pending_path)
        except OSError as exc:
            log.error("cannot read saved telemetry %s: %s", self.pending_path, exc)
            return
        if bad:
            log.warning("skipped %d unreadable lines of %s", bad, self.pending_path)
        if batches:
            dropped = self.recorder.restore(batches)
            log.info(
                "%d telemetry batches from an earlier run queued (%d over the bound dropped)",
                len(batches),
                dropped,
            )

    async def flush(self) -> None:
        while (bus := self._bus()) is not None and (batch := self.recorder.peek()) is not None:
            # A batch whose acknowledgement was lost is sent again: the message id makes
            # JetStream store it once (and the control plane also dedupes by node and seq).
            await bus.publish(
                self.subject,
                encode(batch),
                msg_id=f"{self.node_id}:{batch.started_at}:{batch.seq}",
            )
            self.recorder.pop()
            self.sent += 1

    async def try_flush(self) -> None:
        try:
            await self.flush()
        except KefuError as exc:
            log.debug("telemetry buffered (%d batches): %s", self.recorder.buffered, exc)

    async def run(self, connected: asyncio.Event) -> None:
        if self.recorder.buffered:  # saved by an earlier run: sent as soon as connected
            await connected.wait()
            await self.try_flush()
        while True:
            await asyncio.sleep(self.interval_s)
            self.recorder.close_window()
            await self.try_flush()

    async def close(self) -> TelemetryShutdown:
        """Close the open window, flush within ``flush_timeout_s``, save what is left."""
        self.recorder.close_window()
        self.sent = 0
        if self._bus() is not None:
            try:
                async with asyncio.timeout(self.flush_timeout_s):
                    await self.flush()
            except (KefuError, TimeoutError) as exc:
                log.warning("final telemetry not delivered: %s", exc or "timeout")
        sent = self.sent  # counted per batch: survives a timeout in the middle
        pending = self.recorder.pending()
        error = ""
        try:
            await asyncio.to_thread(save_pending, self.pending_path, pending)
        except OSError as exc:
            error = f"{self.pending_path}: {exc.strerror or exc}"
            log.error("could not save %d telemetry batches: %s", len(pending), error)
            self.recorder.dropped += len(pending)
        return TelemetryShutdown(
            sent=sent,
            saved=0 if error else len(pending),
            dropped=self.recorder.dropped,
            save_error=error,
        )
