"""Canary statistics, the shared part: per rollout × arm × region × node counts, never text.

A node folds every turn, error, feedback and session end of a session pinned to a rollout
into an :class:`ArmCounts` (one per rollout × arm in the open telemetry window); the control
plane merges those into durable per-rollout totals and the analysis
(:mod:`kefu.control_plane.canary`) compares the arms.

Every compared metric is a **bad-event rate** (:data:`METRICS`): errors per turn attempted,
fallbacks and slow turns per turn served, hand-offs per session, ≤ 2★ among rated sessions,
wrong intent among corrections. For a variance **clustered by conversation** each metric keeps
a :class:`Tally` of sums over conversations — K (conversations with a trial), Σy (bad events),
Σn (trials), Σy², Σyn, Σn² — enough for the delta-method variance of the ratio Σy/Σn.

Squares are not additive over windows, so :class:`SessionTallies` keeps each live session's
running (y, n) per metric and emits the **increment** of every square
(``(y+dy)² − y²`` …): the increments telescope to the conversation's final square, so windows,
nodes and batches can be summed in any order, and a conversation still in progress already
counts with what it has so far.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "METRICS",
    "RATING_LOW",
    "ArmCounts",
    "SessionTallies",
    "Tally",
]

#: The compared bad-event rates, in the order they are shown.
METRICS: tuple[str, ...] = ("error", "fallback", "slow", "handoff", "low_rating", "wrong_intent")
#: A rating at or below this is a bad event (1–5 stars).
RATING_LOW = 2


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Tally(_Doc):
    """Sums over conversations of one metric: y bad events out of n trials per conversation."""

    k: int = 0  # conversations with at least one trial
    y: float = 0.0
    n: float = 0.0
    yy: float = 0.0
    yn: float = 0.0
    nn: float = 0.0

    def merge(self, o: Tally) -> None:
        self.k += o.k
        self.y += o.y
        self.n += o.n
        self.yy += o.yy
        self.yn += o.yn
        self.nn += o.nn

    def add_step(self, y0: float, n0: float, dy: float, dn: float) -> None:
        """One conversation moved from (y0, n0) to (y0 + dy, n0 + dn)."""
        y1, n1 = y0 + dy, n0 + dn
        if n0 <= 0 < n1:
            self.k += 1
        self.y += dy
        self.n += dn
        self.yy += y1 * y1 - y0 * y0
        self.yn += y1 * n1 - y0 * n0
        self.nn += n1 * n1 - n0 * n0

    @property
    def rate(self) -> float:
        return self.y / self.n if self.n > 0 else 0.0

    def variance(self) -> float:
        """Cluster-robust (delta-method) variance of Σy/Σn: K/(K−1) · Σ(yᵢ − p·nᵢ)² / (Σn)²."""
        if self.k < 2 or self.n <= 0:
            return 0.0
        p = self.y / self.n
        ss = max(0.0, self.yy - 2 * p * self.yn + p * p * self.nn)
        return self.k / (self.k - 1) * ss / (self.n * self.n)


def _zeros(n: int) -> list[int]:
    return [0] * n


class ArmCounts(_Doc):
    """One rollout arm's counts (on one node and region, or merged)."""

    tenant: str
    rollout_id: str
    arm: str  # "canary" | "baseline"
    region: str = ""
    node_id: str = ""
    sessions_started: int = 0
    #: Σ over sessions started of the canary weight at the time (expected canary sessions).
    expected_canary: float = 0.0
    sessions_ended: int = 0
    sessions_handed_off: int = 0
    turns: int = 0
    errors: int = 0
    fallbacks: int = 0
    slow_turns: int = 0
    latency_buckets: list[int] = Field(default_factory=list)
    latency_sum_ms: float = 0.0
    rated_sessions: int = 0
    ratings: list[int] = Field(default_factory=lambda: _zeros(5))  # 1★ … 5★ (last per session)
    resolved_yes: int = 0
    resolved_no: int = 0
    corrections: int = 0
    corrected_right: int = 0
    corrected_wrong: int = 0
    tallies: dict[str, Tally] = Field(default_factory=dict)

    def tally(self, metric: str) -> Tally:
        t = self.tallies.get(metric)
        if t is None:
            t = self.tallies[metric] = Tally()
        return t

    def merge(self, o: ArmCounts) -> None:
        for name in (
            "sessions_started",
            "sessions_ended",
            "sessions_handed_off",
            "turns",
            "errors",
            "fallbacks",
            "slow_turns",
            "rated_sessions",
            "resolved_yes",
            "resolved_no",
            "corrections",
            "corrected_right",
            "corrected_wrong",
        ):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.expected_canary += o.expected_canary
        self.latency_sum_ms += o.latency_sum_ms
        if len(self.latency_buckets) < len(o.latency_buckets):
            self.latency_buckets += _zeros(len(o.latency_buckets) - len(self.latency_buckets))
        for i, v in enumerate(o.latency_buckets):
            self.latency_buckets[i] += v
        self.ratings = [a + b for a, b in zip(self.ratings, o.ratings, strict=False)]
        for metric, t in o.tallies.items():
            self.tally(metric).merge(t)


@dataclass
class _Live:
    y: dict[str, float] = field(default_factory=dict)
    n: dict[str, float] = field(default_factory=dict)
    rating: int = 0
    handed_off: bool = False


@dataclass
class SessionTallies:
    """Each live rollout session's running (y, n) per metric, bounded (oldest forgotten)."""

    max_sessions: int = 100_000
    _live: OrderedDict[str, _Live] = field(default_factory=OrderedDict)

    def _get(self, session_id: str) -> _Live:
        live = self._live.get(session_id)
        if live is None:
            live = self._live[session_id] = _Live()
            while len(self._live) > self.max_sessions:
                self._live.popitem(last=False)
        else:
            self._live.move_to_end(session_id)
        return live

    def step(self, into: ArmCounts, session_id: str, metric: str, dy: float, dn: float) -> None:
        live = self._get(session_id)
        y0, n0 = live.y.get(metric, 0.0), live.n.get(metric, 0.0)
        into.tally(metric).add_step(y0, n0, dy, dn)
        live.y[metric], live.n[metric] = y0 + dy, n0 + dn

    def turn(
        self, into: ArmCounts, session_id: str, *, fallback: bool, slow: bool, handoff: bool
    ) -> None:
        """A turn served in this session (first turn: one hand-off trial for the session)."""
        first = session_id not in self._live or not self._live[session_id].n.get("handoff")
        self.step(into, session_id, "error", 0, 1)
        self.step(into, session_id, "fallback", float(fallback), 1)
        self.step(into, session_id, "slow", float(slow), 1)
        live = self._get(session_id)
        if first:
            self.step(into, session_id, "handoff", 0, 1)
        if handoff and not live.handed_off:
            live.handed_off = True
            into.sessions_handed_off += 1
            self.step(into, session_id, "handoff", 1, 0)

    def error(self, into: ArmCounts, session_id: str) -> None:
        self.step(into, session_id, "error", 1, 1)

    def rating(self, into: ArmCounts, session_id: str, rating: int) -> None:
        """The session's rating is its last one: a changed rating moves the histogram."""
        live = self._get(session_id)
        if live.rating:
            into.ratings[live.rating - 1] -= 1
            self.step(into, session_id, "low_rating", -float(live.rating <= RATING_LOW), 0)
        else:
            into.rated_sessions += 1
            self.step(into, session_id, "low_rating", 0, 1)
        live.rating = rating
        into.ratings[rating - 1] += 1
        self.step(into, session_id, "low_rating", float(rating <= RATING_LOW), 0)

    def correction(self, into: ArmCounts, session_id: str, *, wrong: bool) -> None:
        into.corrections += 1
        if wrong:
            into.corrected_wrong += 1
        else:
            into.corrected_right += 1
        self.step(into, session_id, "wrong_intent", float(wrong), 1)

    def end(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._live)
