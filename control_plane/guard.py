"""Pure core of the steady-state guard (no rollout needed) and of the node-local guard's reports.

The leader folds the telemetry it already receives into per tenant × region × model version
counts (:class:`VersionStats`): a **live window** of one-minute buckets (the last
``window_s``) and the same version's **trailing baseline** (everything older, since the version
first served). Both are stored in the ``kefu_guard`` bucket, so a new leader resumes from them
and the telemetry stream cursor, never from memory.

:func:`plan` compares, per tenant × region × version, the live window with that baseline:

* **error rate** (failed requests among requests) and **wrong-intent rate** (corrections naming
  another intent among corrections) significantly up: the always-valid test of
  :func:`kefu.control_plane.canary.compare` (live as the "canary", baseline as the "baseline";
  each turn its own cluster, as the aggregates carry no conversation ids);
* **latency objective breached**: the live window's p95 above ``latency_objective_ms`` while
  the baseline's p95 was within it (a version that was always slow is the rollout analysis'
  business, not an anomaly);
* **crash loop**: a node whose boot counter (``NodeStatus.boots``) rose ``crash_loop_restarts``
  times or more within ``crash_loop_window_s``.

and, separately, every node-local guard revert a node reports that was not yet reported
(:class:`ReportRevert`). Actions: raise an alert (every finding), roll back the tenant's most
recent rollout when it was promoted within ``rollback_within_s`` (its regions get their
baseline back), mark a crash-looping node drained. Every action has a stable id, so the
executor can run a plan twice (a new leader, a retry) and act once. No I/O here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kefu.canary_stats import Tally
from kefu.control_plane.canary import CanaryPolicy, MetricEvidence, compare
from kefu.rollout import Rollout
from kefu.wire import LATENCY_BOUNDS_MS, GuardRevert, NodeStatus, TelemetryAggregate

__all__ = [
    "BUCKET_GUARD",
    "BootHistory",
    "Breach",
    "Counts",
    "DrainNode",
    "GuardAction",
    "GuardObserved",
    "ReportRevert",
    "RollBack",
    "SteadyPolicy",
    "VersionStats",
    "fold",
    "note_boots",
    "plan",
    "roll",
    "stats_key",
]

BUCKET_GUARD = "kefu_guard"
BUCKET_S = 60.0


class SteadyPolicy(BaseModel):
    """The steady-state guard's knobs (``ControlPlaneOptions.guard``)."""

    model_config = ConfigDict(extra="forbid")

    #: The live window compared with the version's trailing baseline.
    window_s: float = Field(default=300.0, gt=0)
    #: Requests in the live window (and in the baseline) before any statistical verdict.
    min_turns: int = Field(default=100, ge=1)
    #: Family-wise false-alarm bound of the always-valid tests.
    alpha: float = Field(default=0.01, gt=0.0, lt=0.5)
    #: How much worse (absolute rate points) the live window may be before it matters.
    tolerance: dict[str, float] = Field(
        default_factory=lambda: {"error": 0.01, "wrong_intent": 0.05}
    )
    #: The response-time objective (p95 of the live window).
    latency_objective_ms: float = Field(default=1000.0, gt=0)
    #: Restarts of one node within ``crash_loop_window_s`` that make a crash loop.
    crash_loop_restarts: int = Field(default=3, ge=1)
    crash_loop_window_s: float = Field(default=600.0, gt=0)
    #: A rollout promoted this recently is rolled back on a finding (0: never).
    rollback_within_s: float = Field(default=3600.0, ge=0)


class Counts(BaseModel):
    model_config = ConfigDict(extra="ignore")

    turns: int = 0
    errors: int = 0
    corrections: int = 0
    wrong: int = 0
    latency_buckets: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def add(self, o: Counts) -> None:
        self.turns += o.turns
        self.errors += o.errors
        self.corrections += o.corrections
        self.wrong += o.wrong
        self.latency_buckets = [
            a + b for a, b in zip(self.latency_buckets, o.latency_buckets, strict=False)
        ]


class VersionStats(BaseModel):
    """One tenant × region × model version (the intent model's version, as telemetry keys it)."""

    model_config = ConfigDict(extra="ignore")

    tenant: str
    region: str
    version: str
    first_seen: float = 0.0
    baseline: Counts = Field(default_factory=Counts)
    #: minute bucket start (str: JSON keys) → counts.
    live: dict[str, Counts] = Field(default_factory=dict)


class BootHistory(BaseModel):
    """A node's boot counter as the leader saw it change: (when, boots), oldest first."""

    model_config = ConfigDict(extra="ignore")

    node_id: str
    seen: list[tuple[float, int]] = Field(default_factory=list)


def stats_key(tenant: str, region: str, version: str) -> str:
    """A KV key for one tenant × region × version (versions may hold characters keys may not)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", version) or "_"
    return f"stats.{tenant}.{region}.{safe}"


def fold(stats: VersionStats, agg: TelemetryAggregate) -> VersionStats:
    """``stats`` with one aggregate added to its minute bucket (failed requests count as
    requests too: the error rate is errors / (turns + errors))."""
    at = agg.window_start - agg.window_start % BUCKET_S
    live = dict(stats.live)
    c = live.get(str(at), Counts()).model_copy(deep=True)
    c.add(
        Counts(
            turns=agg.turns + agg.errors,
            errors=agg.errors,
            corrections=agg.corrections,
            wrong=agg.corrected_wrong,
            latency_buckets=list(agg.latency_buckets),
        )
    )
    live[str(at)] = c
    first = min(stats.first_seen or agg.window_start, agg.window_start)
    return stats.model_copy(update={"live": live, "first_seen": first})


def roll(stats: VersionStats, now: float, window_s: float) -> VersionStats:
    """Buckets that left the live window join the baseline."""
    cutoff = now - window_s
    baseline = stats.baseline.model_copy(deep=True)
    live = {}
    for at, c in stats.live.items():
        if float(at) + BUCKET_S <= cutoff:
            baseline.add(c)
        else:
            live[at] = c
    return stats.model_copy(update={"baseline": baseline, "live": live})


def note_boots(h: BootHistory, boots: int, now: float, window_s: float) -> BootHistory:
    """``h`` with the counter seen now (kept when it changed) and entries older than the
    window dropped (the newest older one stays: the count before the window)."""
    seen = list(h.seen)
    if not seen or seen[-1][1] != boots:
        seen.append((now, boots))
    old = [s for s in seen if s[0] < now - window_s]
    seen = old[-1:] + [s for s in seen if s[0] >= now - window_s]
    return h.model_copy(update={"seen": seen})


def restarts(h: BootHistory, now: float, window_s: float) -> int:
    """Restarts within the window: the counter's rise since the window began."""
    inside = [b for at, b in h.seen if at >= now - window_s]
    before = [b for at, b in h.seen if at < now - window_s]
    if not inside:
        return 0
    start = before[-1] if before else inside[0]
    return max(0, max(inside) - start)


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, kw_only=True)
class ReportRevert:
    """A node-local guard revert the control plane has not reported yet."""

    id: str
    node_id: str
    region: str
    revert: GuardRevert


@dataclass(frozen=True, kw_only=True)
class Breach:
    """A steady-state finding: alert (and audit) with its evidence."""

    id: str
    tenant: str
    region: str
    kind: str  # error | wrong_intent | latency | crash_loop
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RollBack:
    """Give the rollout's regions their baseline back (it was promoted recently)."""

    id: str
    tenant: str
    rollout_id: str
    regions: dict[str, dict[str, Any]]
    because: str


@dataclass(frozen=True, kw_only=True)
class DrainNode:
    id: str
    node_id: str
    region: str
    because: str


GuardAction = ReportRevert | Breach | RollBack | DrainNode


@dataclass(kw_only=True)
class GuardObserved:
    nodes: Sequence[NodeStatus] = ()
    stats: Sequence[VersionStats] = ()
    boots: Mapping[str, BootHistory] = field(default_factory=dict)
    #: tenant → its rollouts (any phase).
    rollouts: Mapping[str, Sequence[Rollout]] = field(default_factory=dict)
    #: Ids of actions already carried out.
    done: Container[str] = frozenset()
    #: Nodes already marked drained.
    drained: frozenset[str] = frozenset()


def _tally(events: int, trials: int) -> Tally:
    """Turn-level counts as a tally (each turn its own cluster)."""
    return Tally(k=trials, y=events, n=trials, yy=events, yn=events, nn=trials)


def p95_ms(buckets: Sequence[int]) -> float:
    total = sum(buckets)
    if not total:
        return 0.0
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= 0.95 * total:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else math.inf
    return math.inf


def _live(s: VersionStats) -> Counts:
    total = Counts()
    for c in s.live.values():
        total.add(c)
    return total


def findings(s: VersionStats, now: float, policy: SteadyPolicy) -> list[Breach]:
    """What is wrong with one version's live window compared with its own baseline."""
    live, base = _live(s), s.baseline
    window = int(now // policy.window_s)
    prefix = f"steady:{s.tenant}:{s.region}:{s.version}"
    canary = CanaryPolicy(
        alpha=policy.alpha,
        tolerance=dict(policy.tolerance),
        min_trials=policy.min_turns,
    )
    out: list[Breach] = []
    pairs = {
        "error": ((live.errors, live.turns), (base.errors, base.turns)),
        "wrong_intent": ((live.wrong, live.corrections), (base.wrong, base.corrections)),
    }
    tests: list[tuple[str, MetricEvidence]] = [
        (metric, compare(metric, _tally(*cur), _tally(*old), canary))
        for metric, (cur, old) in pairs.items()
        if cur[1] and old[1]
    ]
    for metric, ev in tests:
        if ev.worse:
            out.append(
                Breach(
                    id=f"{prefix}:{metric}:{window}",
                    tenant=s.tenant,
                    region=s.region,
                    kind=metric,
                    title=(
                        f"{s.tenant} in {s.region}: {metric.replace('_', ' ')} rate of "
                        f"{s.version} up from {ev.baseline_rate:.1%} to {ev.canary_rate:.1%} / "
                        f"{'错误率' if metric == 'error' else '意图错误率'}显著上升"
                    ),
                    evidence={"version": s.version, **vars(ev)},
                )
            )
    if live.turns >= policy.min_turns and base.turns >= policy.min_turns:
        live_p95, base_p95 = p95_ms(live.latency_buckets), p95_ms(base.latency_buckets)
        if live_p95 > policy.latency_objective_ms >= base_p95:
            out.append(
                Breach(
                    id=f"{prefix}:latency:{window}",
                    tenant=s.tenant,
                    region=s.region,
                    kind="latency",
                    title=(
                        f"{s.tenant} in {s.region}: p95 of {s.version} is {live_p95:.0f} ms, over "
                        f"the {policy.latency_objective_ms:.0f} ms objective / 响应时间超出目标"
                    ),
                    evidence={
                        "version": s.version,
                        "live_p95_ms": live_p95,
                        "baseline_p95_ms": base_p95,
                        "objective_ms": policy.latency_objective_ms,
                        "live_turns": live.turns,
                        "baseline_turns": base.turns,
                    },
                )
            )
    return out


def _recent_promoted(rollouts: Sequence[Rollout], now: float, within: float) -> Rollout | None:
    done = [r for r in rollouts if r.phase == "promoted" and r.finalized]
    if not done or within <= 0:
        return None
    latest = max(done, key=lambda r: r.updated_at)
    return latest if now - latest.updated_at <= within else None


def plan(observed: GuardObserved, now: float, policy: SteadyPolicy) -> list[GuardAction]:
    """Everything the guard should do now that it has not done yet (see the module doc)."""
    actions: list[GuardAction] = []
    for n in observed.nodes:
        for r in n.guard:
            actions.append(ReportRevert(id=r.id, node_id=n.node_id, region=n.region, revert=r))
    breaches: list[Breach] = []
    for s in observed.stats:
        breaches += findings(s, now, policy)
    for n in observed.nodes:
        h = observed.boots.get(n.node_id)
        count = restarts(h, now, policy.crash_loop_window_s) if h is not None else 0
        if count >= policy.crash_loop_restarts:
            window = int(now // policy.crash_loop_window_s)
            breaches.append(
                Breach(
                    id=f"crash:{n.node_id}:{window}",
                    tenant="",
                    region=n.region,
                    kind="crash_loop",
                    title=(
                        f"node {n.node_id} restarted {count} times in "
                        f"{policy.crash_loop_window_s:.0f}s: drained / 节点反复重启，已标记为排空"
                    ),
                    evidence={"node_id": n.node_id, "restarts": count, "boots": n.boots},
                )
            )
            if n.node_id not in observed.drained:
                actions.append(
                    DrainNode(
                        id=f"drain:{n.node_id}:{window}",
                        node_id=n.node_id,
                        region=n.region,
                        because=f"restarted {count} times in {policy.crash_loop_window_s:.0f}s",
                    )
                )
    actions += breaches
    # A finding on a tenant whose last rollout was promoted recently: roll it back.
    for tenant in sorted({b.tenant for b in breaches if b.tenant}):
        ro = _recent_promoted(observed.rollouts.get(tenant, ()), now, policy.rollback_within_s)
        if ro is None:
            continue
        because = "; ".join(b.kind for b in breaches if b.tenant == tenant)
        actions.append(
            RollBack(
                id=f"rollback:{ro.id}",
                tenant=tenant,
                rollout_id=ro.id,
                regions={r: b.model_dump() for r, b in sorted(ro.baseline.items())},
                because=because,
            )
        )
    return [a for a in actions if a.id not in observed.done]
