"""Pure core of staged rollouts: start a rollout, apply an operator's command, plan the next move.

:func:`plan` is the controller's brain: ``plan(rollout, observed, now) -> Plan`` returns the
rollout's next state, the actions the executor must run (write assignments, release the
tenant's active marker) and the reasons, in words an operator reads in the audit log. It never
reads a clock or the bus, so every decision is reproducible in a unit test and the same inputs
after a leader fail-over give the same step.

The rules:

* ``pending`` → ``running``: wave 1's members are chosen (per region, the capable nodes sorted
  by id, the first ``ceil(share × n)``); a node without the split capability is never a member
  and is reported in ``excluded_nodes``.
* ``running``: a step is **converged** when every member reports the weight it should run;
  its bake time counts from then. A baked step widens to the next step; after the last step
  the next wave begins at step 1 (earlier waves keep the last step's weight); after the last
  wave the rollout is **promoted**.
* A wave with no capable node pauses the rollout (there is nothing to observe).
* ``promoted`` / ``rolled_back`` / ``aborted`` and not yet ``finalized``: write the
  assignments (target on promote, the captured baseline on rollback; abort leaves them), then
  mark it finalized and release the tenant's active marker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kefu.config import TenantConfig
from kefu.control_plane.canary import Verdict
from kefu.errors import PermanentError
from kefu.rollout import (
    FINAL_PHASES,
    Member,
    RegionBaseline,
    Rollout,
    RolloutTarget,
    Step,
    Wave,
    new_rollout_id,
)
from kefu.wire import Assignment

__all__ = [
    "COMMANDS",
    "NodeFacts",
    "Plan",
    "ReleaseActive",
    "RolloutError",
    "SetModels",
    "apply_command",
    "plan",
    "start_rollout",
]

COMMANDS = ("pause", "resume", "promote", "rollback", "abort")


class RolloutError(PermanentError):
    """A rollout cannot be started or changed that way (the message says why)."""

    exit_code = 65


@dataclass(frozen=True, kw_only=True)
class NodeFacts:
    """What the controller knows about one node, from its status."""

    node_id: str
    region: str
    #: Advertises the split (:data:`kefu.rollout.CAPABILITY_SPLIT`).
    capable: bool
    #: Heartbeat recent enough to trust what it reports.
    fresh: bool = True
    #: The rollout and weight the node applied for this tenant ("" / 0.0 = none).
    rollout_id: str = ""
    weight: float = 0.0
    #: The node reports an error applying this tenant (e.g. it refused the canary bundle).
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class SetModels:
    """Write slot → ``name@version`` into the tenant's assignment in ``region``."""

    region: str
    models: Mapping[str, str]
    #: Also pin the assignment to this config version (None = leave it).
    config_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class ReleaseActive:
    """Delete ``active.<tenant>`` so the tenant can start another rollout."""

    tenant: str


Action = SetModels | ReleaseActive


@dataclass(kw_only=True)
class Plan:
    next: Rollout
    actions: list[Action] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions) or bool(self.reasons)


# ---------------------------------------------------------------------------- start


def start_rollout(
    *,
    tenant: str,
    target: Mapping[str, str],
    target_config: int = 0,
    current_config: int = 0,
    waves: Iterable[Wave],
    steps: Iterable[Step],
    assignments: Iterable[Assignment],
    actor: str,
    now: float,
    rollout_id: str = "",
) -> Rollout:
    """A new ``pending`` rollout with the baseline captured from the tenant's assignments
    (a region following the tenant's current config is captured at ``current_config``).
    Every region of every wave must already run the tenant; the target must change something."""
    by_region = {a.region: a for a in assignments if a.tenant == tenant}
    try:
        ro = Rollout(
            id=rollout_id or new_rollout_id(),
            tenant=tenant,
            target=RolloutTarget(models=dict(target), config_version=target_config),
            waves=list(waves),
            steps=list(steps),
            created_at=now,
            created_by=actor,
            updated_at=now,
            updated_by=actor,
        )
    except ValueError as exc:
        raise RolloutError(f"invalid rollout: {_first_error(exc)} / 灰度发布参数无效") from exc
    missing = [r for r in ro.regions if r not in by_region]
    if missing:
        raise RolloutError(
            f"tenant {tenant!r} is not assigned to region(s) {', '.join(missing)}: assign it "
            f"first / 租户尚未分配到区域 {', '.join(missing)}"
        )
    baseline = {
        r: RegionBaseline(
            models=dict(by_region[r].models),
            config_version=by_region[r].config_version or current_config,
        )
        for r in ro.regions
    }
    if all(
        all(baseline[r].models.get(s) == ref for s, ref in ro.target.models.items())
        and ro.target.config_version in (0, baseline[r].config_version)
        for r in ro.regions
    ):
        raise RolloutError(
            "the target is what every region already runs: nothing to roll out / "
            "目标版本与当前版本相同"
        )
    return ro.model_copy(
        update={"baseline": baseline, "history": [f"{_ts(now)} created by {actor}"]}
    )


def check_config_target(
    config: TenantConfig, ro: Rollout, assignments: Iterable[Assignment]
) -> None:
    """A config canary's config must name, per slot, the model each region of the rollout runs
    (with the target's models) and know every scenario the regions pin models for: a node
    would refuse it otherwise, and the rollout would never converge."""
    by_region = {a.region: a for a in assignments if a.tenant == ro.tenant}
    problems = []
    for region in ro.regions:
        a = by_region.get(region)
        if a is None:
            continue
        for slot, ref in sorted({**a.models, **ro.target.models}.items()):
            named = getattr(config.models, slot, None)
            runs = ref.partition("@")[0]
            if named is not None and named.name != runs:
                problems.append(f"{region}: models.{slot} names {named.name!r}, it runs {runs!r}")
        known = {s.id for s in config.scenarios}
        problems += [
            f"{region}: no scenario {s!r} (the assignment pins models for it)"
            for s in sorted(a.scenario_models)
            if s not in known
        ]
    if problems:
        raise RolloutError(
            f"config version {ro.target.config_version} cannot run where the rollout goes: "
            + "; ".join(problems)
            + " / 该配置版本与区域的模型分配不一致"
        )


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))
    return str(exc)


def _ts(now: float) -> str:
    """UTC, so every replica and every operator reads the same time."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))


def _moved(ro: Rollout, now: float, by: str, reason: str, **update: object) -> Rollout:
    history = [*ro.history, f"{_ts(now)} {reason} ({by})"][-256:]
    return ro.model_copy(
        update={"updated_at": now, "updated_by": by, "reason": reason, "history": history} | update
    )


# ---------------------------------------------------------------------------- commands


def apply_command(ro: Rollout, command: str, *, actor: str, now: float, why: str = "") -> Rollout:
    """The operator's ``pause``, ``resume``, ``promote``, ``rollback`` or ``abort``."""
    if command not in COMMANDS:
        raise RolloutError(f"unknown command {command!r} (use {', '.join(COMMANDS)})")
    if ro.phase in FINAL_PHASES:
        raise RolloutError(
            f"rollout {ro.id} is already {ro.phase}: start a new one / 灰度发布已结束"
        )
    note = f"{command} by operator" + (f": {why}" if why else "")
    if command == "pause":
        if ro.phase == "paused":
            raise RolloutError(f"rollout {ro.id} is already paused / 已暂停")
        return _moved(ro, now, actor, note, phase="paused")
    if command == "resume":
        if ro.phase != "paused":
            raise RolloutError(f"rollout {ro.id} is {ro.phase}, not paused / 未暂停")
        # Bake time restarts: a paused step was not observed at its weight meanwhile.
        return _moved(ro, now, actor, note, phase="running", step_started_at=now, converged_at=0.0)
    if command == "promote":
        return _moved(
            ro, now, actor, note, phase="promoted", wave=len(ro.waves) - 1, step=len(ro.steps) - 1
        )
    if command == "rollback":
        return _moved(ro, now, actor, note, phase="rolled_back")
    return _moved(ro, now, actor, note, phase="aborted")


# ---------------------------------------------------------------------------- plan


def _choose_members(
    ro: Rollout, wave: int, nodes: list[NodeFacts]
) -> tuple[list[Member], list[str]]:
    """Members of ``wave`` and the nodes of its regions kept out for lack of the capability."""
    already = {m.node_id for m in ro.members}
    members: list[Member] = []
    excluded: list[str] = []
    w = ro.waves[wave]
    for region in w.regions:
        here = sorted((n for n in nodes if n.region == region), key=lambda n: n.node_id)
        excluded += [n.node_id for n in here if not n.capable]
        capable = [n for n in here if n.capable and n.fresh]
        # The share counts every capable node of the region, members of earlier waves too.
        have = sum(n.node_id in already for n in capable)
        take = max(0, math.ceil(w.node_share * len(capable) - 1e-9) - have)
        new = [n for n in capable if n.node_id not in already][:take]
        members += [Member(node_id=n.node_id, region=region, wave=wave) for n in new]
    return members, excluded


def _lagging(ro: Rollout, facts: Mapping[str, NodeFacts]) -> list[str]:
    """Members that do not (yet) report the weight they should run."""
    out = []
    for m in ro.members:
        f = facts.get(m.node_id)
        want = ro.node_weight(m)
        if (
            f is None
            or not f.fresh
            or f.rollout_id != ro.id
            or not math.isclose(f.weight, want, abs_tol=1e-9)
        ):
            out.append(m.node_id)
    return out


def _begin_wave(ro: Rollout, wave: int, nodes: list[NodeFacts], now: float) -> Plan:
    members, excluded = _choose_members(ro, wave, nodes)
    excluded = [n for n in excluded if n not in ro.excluded_nodes]
    regions = ", ".join(ro.waves[wave].regions)
    reasons = []
    if excluded:
        reasons.append(
            f"nodes without the split capability kept out of wave {wave + 1}: "
            f"{', '.join(sorted(excluded))}"
        )
    all_excluded = sorted({*ro.excluded_nodes, *excluded})
    if not members:
        reason = f"wave {wave + 1} ({regions}) has no capable node: paused"
        nxt = _moved(ro, now, "controller", reason, phase="paused", excluded_nodes=all_excluded)
        return Plan(next=nxt, reasons=[*reasons, reason])
    reason = (
        f"wave {wave + 1}/{len(ro.waves)} begins in {regions} on {len(members)} node(s) "
        f"at {ro.steps[0].weight:.0%}"
    )
    nxt = _moved(
        ro,
        now,
        "controller",
        reason,
        phase="running",
        wave=wave,
        step=0,
        step_started_at=now,
        converged_at=0.0,
        members=[*ro.members, *members],
        excluded_nodes=all_excluded,
    )
    return Plan(next=nxt, reasons=[*reasons, reason])


def _finalize(ro: Rollout) -> Plan:
    actions: list[Action] = []
    if ro.phase == "promoted":
        cfg = ro.target.config_version or None
        actions += [
            SetModels(region=r, models=dict(ro.target.models), config_version=cfg)
            for r in ro.regions
        ]
        reason = f"promoted: every region of {ro.id} now runs the target"
    elif ro.phase == "rolled_back":
        actions += [
            SetModels(
                region=r,
                models=dict(ro.baseline[r].models),
                config_version=ro.baseline[r].config_version if ro.target.config_version else None,
            )
            for r in ro.regions
            if r in ro.baseline
        ]
        reason = f"rolled back: every region of {ro.id} runs its captured baseline"
    else:
        reason = f"aborted: {ro.id} ended, assignments unchanged"
    actions.append(ReleaseActive(tenant=ro.tenant))
    nxt = ro.model_copy(update={"finalized": True})
    return Plan(next=nxt, actions=actions, reasons=[reason])


def _judged(ro: Rollout, verdict: Verdict, now: float) -> Plan:
    """Roll back or pause on the canary analysis's word; the reason carries its evidence."""
    why = "; ".join(verdict.reasons)[:400]
    if verdict.action == "rollback":
        reason = f"canary analysis: rolling back — {why}"
        moved = _moved(ro, now, "controller", reason, phase="rolled_back")
        done = _finalize(moved)
        return Plan(next=done.next, actions=done.actions, reasons=[reason, *done.reasons])
    reason = f"canary analysis: pausing — {why}"
    return Plan(next=_moved(ro, now, "controller", reason, phase="paused"), reasons=[reason])


def plan(
    ro: Rollout, observed: Iterable[NodeFacts], now: float, verdict: Verdict | None = None
) -> Plan:
    """The next state of ``ro`` given the nodes' reports at ``now``, with actions and reasons.
    A plan with no reasons and no actions changes nothing (the executor writes nothing).

    With a canary-analysis ``policy`` the ``verdict`` (:func:`kefu.control_plane.canary.analyse`)
    rolls back or pauses a running rollout, and a baked step widens only on ``advance``."""
    nodes = [n for n in observed if n.region in set(ro.regions)]
    facts = {n.node_id: n for n in nodes}
    if ro.phase in FINAL_PHASES:
        return _finalize(ro) if not ro.finalized else Plan(next=ro)
    if ro.phase == "running" and ro.policy and verdict and verdict.action in ("rollback", "pause"):
        return _judged(ro, verdict, now)
    if ro.phase == "pending":
        return _begin_wave(ro, 0, nodes, now)
    if ro.phase == "paused":
        return Plan(next=ro)
    if not any(m.wave == ro.wave for m in ro.members):  # resumed after "no capable node"
        return _begin_wave(ro, ro.wave, nodes, now)
    lagging = _lagging(ro, facts)
    if lagging:
        if ro.converged_at:  # a member fell behind (restart, lost heartbeat): bake again
            reason = f"{len(lagging)} node(s) no longer at the step's weight: bake restarts"
            return Plan(
                next=_moved(ro, now, "controller", reason, converged_at=0.0), reasons=[reason]
            )
        return Plan(next=ro)  # still converging: nothing to write
    if not ro.converged_at:
        reason = (
            f"wave {ro.wave + 1} step {ro.step + 1} ({ro.weight:.0%}) serving on "
            f"{len(ro.members)} node(s)"
        )
        return Plan(next=_moved(ro, now, "controller", reason, converged_at=now), reasons=[reason])
    step = ro.steps[ro.step]
    if now - ro.converged_at < step.bake_s:
        return Plan(next=ro)
    if ro.policy and (verdict is None or verdict.action != "advance"):
        return Plan(next=ro)  # baked, but the analysis has not shown the canary good enough
    if ro.step + 1 < len(ro.steps):
        nxt_weight = ro.steps[ro.step + 1].weight
        reason = (
            f"step {ro.step + 1} baked {step.bake_s:.0f} s: widening to {nxt_weight:.0%} "
            f"(wave {ro.wave + 1})"
        )
        nxt = _moved(
            ro,
            now,
            "controller",
            reason,
            step=ro.step + 1,
            step_started_at=now,
            converged_at=0.0,
        )
        return Plan(next=nxt, reasons=[reason])
    if ro.wave + 1 < len(ro.waves):
        return _begin_wave(ro, ro.wave + 1, nodes, now)
    reason = f"last step of the last wave baked {step.bake_s:.0f} s: promoting"
    promoted = _moved(ro, now, "controller", reason, phase="promoted")
    done = _finalize(promoted)
    return Plan(next=done.next, actions=done.actions, reasons=[reason, *done.reasons])
