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
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kefu.bus import Bus
from kefu.canary_stats import ArmCounts, SessionTallies
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
    session_id: str = ""
    #: The rollout arm that served the turn ("" when the session is in no rollout).
    rollout_id: str = ""
    arm: str = ""
    #: The node's canary weight when this turn started the session (0 otherwise).
    weight: float = 0.0
    new_session: bool = False
    #: The scenario's response-time objective (``latency_objective_ms`` in its config);
    #: 0 = the recorder's ``slow_ms``.
    latency_objective_ms: float = 0.0


#: A turn slower than this is a "slow turn" in the canary comparison (the node-wide
#: response-time objective; ``TelemetryRecorder.slow_ms`` overrides it, a scenario's
#: ``latency_objective_ms`` overrides that for its turns).
SLOW_TURN_MS = 1000.0
#: Sessions the recorder remembers (for attributing errors, feedback and ends); oldest first out.
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class _Seen:
    """What a session's latest turn ran on."""

    tenant: str
    scenario: str
    model_version: str
    rollout_id: str
    arm: str


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
    slow_ms: float = SLOW_TURN_MS
    _arms: dict[tuple[str, str, str], ArmCounts] = field(default_factory=dict)
    _sessions: OrderedDict[str, _Seen] = field(default_factory=OrderedDict)
    _tallies: SessionTallies = field(default_factory=SessionTallies)

    def _arm(self, tenant: str, rollout_id: str, arm: str) -> ArmCounts:
        key = (tenant, rollout_id, arm)
        counts = self._arms.get(key)
        if counts is None:
            counts = self._arms[key] = ArmCounts(
                tenant=tenant,
                rollout_id=rollout_id,
                arm=arm,
                region=self.region,
                node_id=self.node_id,
                latency_buckets=[0] * (len(LATENCY_BOUNDS_MS) + 1),
            )
        return counts

    def _remember(self, session_id: str, seen: _Seen) -> None:
        self._sessions[session_id] = seen
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

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
        if not s.session_id:
            return
        self._remember(
            s.session_id, _Seen(s.tenant, s.scenario, s.model_version, s.rollout_id, s.arm)
        )
        if not s.rollout_id:
            return
        c = self._arm(s.tenant, s.rollout_id, s.arm)
        if s.new_session:
            c.sessions_started += 1
            c.expected_canary += s.weight
        c.turns += 1
        slow = s.latency_ms > (s.latency_objective_ms or self.slow_ms)
        c.fallbacks += int(s.fallback)
        c.slow_turns += int(slow)
        c.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS_MS, s.latency_ms)] += 1
        c.latency_sum_ms += s.latency_ms
        self._tallies.turn(c, s.session_id, fallback=s.fallback, slow=slow, handoff=s.handoff)

    def record_error(self, tenant: str, session_id: str = "") -> None:
        """A failed request; attributed to the scenario, model version and rollout arm its
        session's latest turn ran on (unknown session: the tenant alone)."""
        seen = self._sessions.get(session_id) if session_id else None
        if seen is None or seen.tenant != tenant:
            self._agg(tenant or "-", "", "").errors += 1
            return
        self._agg(tenant, seen.scenario, seen.model_version).errors += 1
        if seen.rollout_id:
            c = self._arm(tenant, seen.rollout_id, seen.arm)
            c.errors += 1
            self._tallies.error(c, session_id)

    def record_session_end(self, tenant: str, session_id: str) -> None:
        seen = self._sessions.pop(session_id, None)
        if seen is not None and seen.tenant == tenant and seen.rollout_id:
            self._arm(tenant, seen.rollout_id, seen.arm).sessions_ended += 1
        self._tallies.end(session_id)

    def record_feedback(
        self,
        tenant: str,
        *,
        rating: int = 0,
        corrected_intent: str = "",
        predicted_intent: str = "",
        scenario: str = "",
        model_version: str = "",
        session_id: str = "",
        resolved: bool | None = None,
    ) -> None:
        """Feedback; ``rating`` 0 means none was given (it adds nothing to the rating mean).
        Without a rated turn's labels it counts for the session's latest turn."""
        seen = self._sessions.get(session_id) if session_id else None
        if seen is not None and seen.tenant == tenant and not model_version:
            scenario, model_version = seen.scenario, seen.model_version
        agg = self._agg(tenant, scenario, model_version)
        agg.feedback += 1
        rated = 1 <= rating <= 5
        if rated:
            agg.rated += 1
            agg.rating_sum += rating
            agg.ratings[rating - 1] += 1
        if resolved is not None:
            agg.resolved_yes += int(resolved)
            agg.resolved_no += int(not resolved)
        wrong = bool(corrected_intent) and corrected_intent != predicted_intent
        if corrected_intent:
            agg.corrections += 1
            agg.corrected_wrong += int(wrong)
        if seen is None or seen.tenant != tenant or not seen.rollout_id:
            return
        c = self._arm(tenant, seen.rollout_id, seen.arm)
        if rated:
            self._tallies.rating(c, session_id, rating)
        if resolved is not None:
            c.resolved_yes += int(resolved)
            c.resolved_no += int(not resolved)
        if corrected_intent:
            self._tallies.correction(c, session_id, wrong=wrong)

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
        arms = list(self._arms.values())
        self._open = {}
        self._arms = {}
        self._window_start = now
        audit, self._audit = self._audit, []
        if not aggregates and not audit and not arms:
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
            arms=arms,
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
