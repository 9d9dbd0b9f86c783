"""Region health: a state machine with hysteresis over the leader's signals (pure).

    up ──bad──▶ suspect ──bad for ≥ down_after_s──▶ down ──good──▶ recovering ──good for dwell──▶ up
     ▲            │good                                ▲               │bad
     └────────────┘                                    └───────────────┘ (relapse: dwell doubles)

* **Signals** (:class:`RegionSignals`): how many of the region's nodes heartbeat (timed by when
  the leader *received* each status update, never by the nodes' clocks) and how many of them a
  gateway recently reported it can reach. A region is *good* while any node heartbeats **or**
  any node answers a gateway: a region cut off from NATS whose nodes still serve customers is
  not down (the verdict says so, and the adapter alerts).
* **Traffic** follows :func:`serves_traffic`: ``up`` and ``suspect`` keep their tenants, so a
  stall shorter than ``down_after_s`` (a SIGSTOP/SIGCONT, a GC pause, one lost heartbeat)
  moves nothing. ``down`` and ``recovering`` serve nobody, so traffic only returns after the
  region stayed good for the whole dwell; every relapse during ``recovering`` doubles the dwell
  (up to ``max_dwell_s``): a flapping region never pulls traffic back and forth.
* **Operators**: :func:`drain` takes a region out of routing on purpose (maintenance);
  :func:`failback` returns it (and ends a ``recovering`` dwell early); a ``down`` region cannot
  be failed back to.

This module does no I/O; :mod:`kefu.control_plane.failover` feeds it and stores its result.
"""

from __future__ import annotations

from dataclasses import dataclass

from kefu.errors import PermanentError
from kefu.wire import RegionHealth, RegionState

__all__ = [
    "FailbackRefused",
    "HealthPolicy",
    "RegionSignals",
    "Transition",
    "Verdict",
    "drain",
    "failback",
    "judge",
    "serves_traffic",
    "step",
]


class FailbackRefused(PermanentError):
    """``failback`` asked for a region that is still down."""

    exit_code = 65


@dataclass(frozen=True, kw_only=True)
class HealthPolicy:
    #: How long a region must stay bad (``suspect``) before it is ``down``.
    down_after_s: float = 2.0
    #: How long a ``recovering`` region must stay good before it is ``up`` (first time).
    dwell_s: float = 60.0
    #: Cap of the dwell after relapses.
    max_dwell_s: float = 900.0

    def dwell_for(self, relapses: int) -> float:
        return min(self.dwell_s * (2 ** min(relapses, 16)), max(self.max_dwell_s, self.dwell_s))


@dataclass(frozen=True, kw_only=True)
class RegionSignals:
    """What the leader observed of one region at one moment."""

    #: Nodes registered in the region (status keys in ``kefu_nodes``).
    nodes: int
    #: Of those, nodes whose last status update arrived less than the heartbeat timeout ago.
    heartbeating: int
    #: Nodes a fresh gateway report says answer; None = no fresh gateway report.
    gateway_reachable: int | None = None


@dataclass(frozen=True, kw_only=True)
class Verdict:
    good: bool
    #: Good only thanks to gateway reports: the region's NATS link is cut, its nodes serve.
    nats_partition: bool
    evidence: str


@dataclass(frozen=True, kw_only=True)
class Transition:
    region: str
    before: RegionState
    after: RegionState
    at: float
    evidence: str
    #: Whether this transition changes which tenants the region may serve.
    moves_traffic: bool


def judge(s: RegionSignals) -> Verdict:
    """Good or bad, and why (the evidence every audited transition carries)."""
    gw = "no gateway report" if s.gateway_reachable is None else f"{s.gateway_reachable} reachable"
    evidence = f"{s.heartbeating}/{s.nodes} nodes heartbeating; gateways: {gw}"
    if s.nodes == 0:
        return Verdict(good=False, nats_partition=False, evidence="no nodes registered")
    if s.heartbeating > 0:
        return Verdict(good=True, nats_partition=False, evidence=evidence)
    if s.gateway_reachable:
        return Verdict(
            good=True,
            nats_partition=True,
            evidence=evidence + " (NATS link lost, nodes still serve / NATS 断开但节点仍在服务)",
        )
    return Verdict(good=False, nats_partition=False, evidence=evidence)


def serves_traffic(h: RegionHealth) -> bool:
    """Whether tenants may be routed to the region."""
    return h.state in ("up", "suspect") and not h.drained


def _moved(before: RegionHealth, after: RegionHealth) -> Transition | None:
    if before.state == after.state:
        return None
    return Transition(
        region=after.region,
        before=before.state,
        after=after.state,
        at=after.since,
        evidence=after.evidence,
        moves_traffic=serves_traffic(before) != serves_traffic(after),
    )


def step(
    h: RegionHealth, verdict: Verdict, now: float, policy: HealthPolicy = HealthPolicy()
) -> tuple[RegionHealth, Transition | None]:
    """The region's next health after one observation, and the transition if any."""
    good = verdict.good
    upd: dict[str, object] = {"evidence": verdict.evidence}
    if h.state == "up":
        if not good:
            upd |= {"state": "suspect", "since": now, "streak_since": now}
    elif h.state == "suspect":
        if good:
            upd |= {"state": "up", "since": now, "streak_since": 0.0}
        elif now - (h.streak_since or h.since) >= policy.down_after_s:
            upd |= {"state": "down", "since": now, "streak_since": 0.0}
    elif h.state == "down":
        if good:
            upd |= {"state": "recovering", "since": now, "streak_since": now}
    elif h.state == "recovering":
        if not good:
            upd |= {"state": "down", "since": now, "streak_since": 0.0, "relapses": h.relapses + 1}
        elif now - (h.streak_since or h.since) >= policy.dwell_for(h.relapses):
            upd |= {"state": "up", "since": now, "streak_since": 0.0, "relapses": 0}
    new = h.model_copy(update=upd)
    new.next_at = _next_at(new, policy)
    return new, _moved(h, new)


def _next_at(h: RegionHealth, policy: HealthPolicy) -> float:
    start = h.streak_since or h.since
    if h.state == "suspect":
        return start + policy.down_after_s
    if h.state == "recovering":
        return start + policy.dwell_for(h.relapses)
    return 0.0


def drain(h: RegionHealth) -> RegionHealth:
    """Take the region out of routing on purpose; its health keeps being evaluated."""
    return h.model_copy(update={"drained": True})


def failback(h: RegionHealth, now: float) -> tuple[RegionHealth, Transition | None]:
    """Return a drained or recovering region to routing (an operator's decision)."""
    if h.state == "down":
        raise FailbackRefused(
            f"region {h.region!r} is down ({h.evidence}); it cannot take traffic back / "
            f"区域 {h.region!r} 仍处于故障状态，不能回切"
        )
    upd: dict[str, object] = {"drained": False}
    if h.state == "recovering":
        upd |= {"state": "up", "since": now, "streak_since": 0.0, "relapses": 0, "next_at": 0.0}
        upd["evidence"] = "failback by an operator / 运维人员手动回切"
    new = h.model_copy(update=upd)
    return new, _moved(h, new)
