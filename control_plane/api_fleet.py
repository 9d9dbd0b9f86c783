"""The fleet view of ``kefu.v1.ControlPlane``: what runs where. Node and rollout messages, and
the rollout RPCs StartRollout, ListRollouts, GetRollout and CommandRollout.

The handlers are named as their RPCs; :class:`~kefu.control_plane.api.ControlPlaneApi`
wraps each with its authentication, authorization (reads for viewers, the rest for
admins) and error mapping. A rollout's message adds the live view the document does not hold:
per member node the weight it should run and whether it reports it (``nodes_converged`` of
``nodes_total``), and the live sessions per arm summed over the nodes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Protocol

from kefu.bus import NotFound
from kefu.control_plane.alerts import Alert, ack_alert, list_alerts
from kefu.control_plane.canary import CanaryPolicy
from kefu.control_plane.canary_store import list_policies, list_stored_policy_names, load_verdict
from kefu.control_plane.policy_file import validate_policy
from kefu.control_plane.state import NotFoundError
from kefu.errors import PermanentError
from kefu.rollout import DEFAULT_STEPS, Rollout, Step, Wave
from kefu.v1 import control_plane_pb2 as pb
from kefu.wire import NodeStatus

if TYPE_CHECKING:
    from kefu.control_plane.service import ControlPlane

__all__ = [
    "FRESH_S",
    "AckAlert",
    "CommandRollout",
    "GetRollout",
    "GetRolloutAnalysis",
    "ListAlerts",
    "ListCanaryPolicies",
    "ListRollouts",
    "PutCanaryPolicy",
    "StartRollout",
    "node_msg",
    "policy_msg",
    "rollout_msg",
]

#: Heartbeats older than this do not count as a node's report (the node is shown offline).
FRESH_S = 30.0
ONLINE_WINDOW_S = FRESH_S


def node_msg(n: NodeStatus, now: float) -> pb.Node:
    return pb.Node(
        node_id=n.node_id,
        region=n.region,
        software_version=n.software_version,
        providers=n.providers,
        gpu=n.gpu,
        listen=n.listen,
        started_at=n.started_at,
        heartbeat_at=n.heartbeat_at,
        online=now - n.heartbeat_at < ONLINE_WINDOW_S,
        tenants=[
            pb.ObservedTenant(
                tenant=t,
                state=o.state,
                config_version=o.config_version,
                models=o.models,
                error=o.error,
                rollout_id=o.rollout_id,
                canary_weight=o.canary_weight,
                sessions_canary=o.sessions_canary,
                sessions_baseline=o.sessions_baseline,
                switched=o.switched,
            )
            for t, o in sorted(n.tenants.items())
        ],
        models_loaded=n.models_loaded,
        telemetry_dropped=n.telemetry_dropped,
        telemetry_buffered=n.telemetry_buffered,
        reconcile_error=n.reconcile_error,
        reconcile_error_at=n.reconcile_error_at,
        capabilities=n.capabilities,
    )


def rollout_msg(ro: Rollout, nodes: list[NodeStatus], now: float) -> pb.Rollout:
    by_id = {n.node_id: n for n in nodes}
    members = []
    converged = 0
    canary = baseline = switched = 0
    for n in nodes:
        seen = n.tenants.get(ro.tenant)
        if seen is not None and seen.rollout_id == ro.id:
            canary += seen.sessions_canary
            baseline += seen.sessions_baseline
        if seen is not None:
            switched += seen.switched
    for m in ro.members:
        want = ro.node_weight(m)
        status = by_id.get(m.node_id)
        seen = status.tenants.get(ro.tenant) if status is not None else None
        ok = (
            status is not None
            and now - status.heartbeat_at <= FRESH_S
            and seen is not None
            and seen.rollout_id == ro.id
            and abs(seen.canary_weight - want) < 1e-9
        )
        converged += ok
        members.append(
            pb.RolloutMember(
                node_id=m.node_id, region=m.region, wave=m.wave, weight=want, converged=ok
            )
        )
    return pb.Rollout(
        id=ro.id,
        tenant=ro.tenant,
        phase=ro.phase,
        wave=ro.wave,
        step=ro.step,
        weight=ro.weight,
        target=ro.target.models,
        target_config_version=ro.target.config_version,
        waves=[pb.RolloutWave(regions=w.regions, node_share=w.node_share) for w in ro.waves],
        steps=[pb.RolloutStep(weight=s.weight, bake_s=s.bake_s) for s in ro.steps],
        baseline={r: pb.ScenarioModels(models=b.models) for r, b in ro.baseline.items()},
        step_started_at=ro.step_started_at,
        converged_at=ro.converged_at,
        created_at=ro.created_at,
        created_by=ro.created_by,
        updated_at=ro.updated_at,
        updated_by=ro.updated_by,
        reason=ro.reason,
        term=ro.term,
        finalized=ro.finalized,
        policy=ro.policy,
        members=members,
        excluded_nodes=ro.excluded_nodes,
        nodes_converged=converged,
        nodes_total=len(ro.members),
        sessions_canary=canary,
        sessions_baseline=baseline,
        switched=switched,
        history=ro.history,
    )


def _waves(request: Any) -> list[Wave]:
    try:
        return [
            Wave(regions=list(w.regions), node_share=w.node_share or 1.0) for w in request.waves
        ]
    except ValueError as exc:
        raise PermanentError(f"invalid wave: {exc} / 批次参数无效") from exc


def _steps(request: Any) -> list[Step]:
    if not request.steps:
        return list(DEFAULT_STEPS)
    try:
        return [Step(weight=s.weight, bake_s=s.bake_s) for s in request.steps]
    except ValueError as exc:
        raise PermanentError(f"invalid step: {exc} / 步骤参数无效") from exc


class _Api(Protocol):
    cp: ControlPlane

    def _actor_name(self) -> str: ...


async def _msg(api: _Api, ro: Rollout) -> pb.Rollout:
    return rollout_msg(ro, await api.cp.list_nodes(), time.time())


# The handlers, named as their RPCs: ControlPlaneApi wraps each with authentication,
# authorization and error mapping (``StartRollout = _rpc(api_fleet.StartRollout)``).


async def StartRollout(api: _Api, request: Any, context: Any) -> pb.Rollout:
    if not request.waves:
        raise PermanentError("name at least one wave (regions) / 请至少指定一个批次")
    ro = await api.cp.start_rollout(
        request.tenant,
        models=dict(request.models),
        waves=_waves(request),
        steps=_steps(request),
        actor=api._actor_name(),
        reason=request.reason,
        config_version=request.config_version,
        policy=request.policy,
    )
    return await _msg(api, ro)


async def ListRollouts(api: _Api, request: Any, context: Any) -> pb.ListRolloutsReply:
    rollouts = await api.cp.list_rollouts(request.tenant, active_only=request.active_only)
    nodes = await api.cp.list_nodes()
    now = time.time()
    return pb.ListRolloutsReply(rollouts=[rollout_msg(r, nodes, now) for r in rollouts])


async def GetRollout(api: _Api, request: Any, context: Any) -> pb.Rollout:
    return await _msg(api, await api.cp.get_rollout(request.rollout_id))


async def CommandRollout(api: _Api, request: Any, context: Any) -> pb.Rollout:
    ro = await api.cp.command_rollout(
        request.rollout_id, request.command, actor=api._actor_name(), why=request.reason
    )
    return await _msg(api, ro)


async def GetRolloutAnalysis(api: _Api, request: Any, context: Any) -> pb.RolloutAnalysis:
    ro = await api.cp.get_rollout(request.rollout_id)  # NotFound for an unknown id
    v = await load_verdict(api.cp.bus, ro.id)
    if v is None:
        return pb.RolloutAnalysis(rollout_id=ro.id, policy=ro.policy)
    ev = v.evidence
    metrics = ev.get("metrics", [])
    srm = ev.get("srm", [])
    return pb.RolloutAnalysis(
        rollout_id=ro.id,
        policy=v.policy,
        at=v.at,
        action=v.action,
        reasons=v.reasons,
        canary_sessions=int(ev.get("canary_sessions", 0)),
        baseline_sessions=int(ev.get("baseline_sessions", 0)),
        metrics=[pb.CanaryMetric(**{k: m[k] for k in _METRIC_FIELDS if k in m}) for m in metrics],
        sample_ratio=[pb.SampleRatio(**s) for s in srm],
    )


_METRIC_FIELDS = tuple(f.name for f in pb.CanaryMetric.DESCRIPTOR.fields)


def policy_msg(p: CanaryPolicy, *, stored: bool = False) -> pb.CanaryPolicy:
    return pb.CanaryPolicy(
        name=p.name,
        alpha=p.alpha,
        advance_alpha=p.advance_alpha,
        tolerance=p.tolerance,
        min_trials=p.min_trials,
        min_sessions=p.min_sessions,
        hard_error_rate=p.hard_error_rate,
        hard_error_turns=p.hard_error_turns,
        srm_p=p.srm_p,
        srm_min_sessions=p.srm_min_sessions,
        step_limit_s=p.step_limit_s,
        min_bake_s=p.min_bake_s,
        stored=stored,
    )


async def ListCanaryPolicies(api: _Api, request: Any, context: Any) -> pb.ListCanaryPoliciesReply:
    stored = await list_stored_policy_names(api.cp.bus)
    return pb.ListCanaryPoliciesReply(
        policies=[policy_msg(p, stored=p.name in stored) for p in await list_policies(api.cp.bus)]
    )


async def PutCanaryPolicy(api: _Api, request: Any, context: Any) -> pb.CanaryPolicy:
    """Every field is taken as sent (a zero is a zero, e.g. ``step_limit_s`` 0 = never)."""
    doc: dict[str, Any] = {
        f.name: getattr(request, f.name)
        for f in request.DESCRIPTOR.fields
        if f.name in CanaryPolicy.model_fields
    }
    doc["tolerance"] = dict(request.tolerance)
    policy = validate_policy(doc)
    saved = await api.cp.set_canary_policy(policy, actor=api._actor_name())
    return policy_msg(saved, stored=True)


def _alert_msg(a: Alert) -> pb.AlertMessage:
    return pb.AlertMessage(
        id=a.id,
        kind=a.kind,
        severity=a.severity,
        at=a.at,
        tenant=a.tenant,
        resource=a.resource,
        title=a.title,
        detail_json=json.dumps(a.detail, ensure_ascii=False, sort_keys=True),
        acked_by=a.acked_by,
        acked_at=a.acked_at,
    )


async def ListAlerts(api: _Api, request: Any, context: Any) -> pb.ListAlertsReply:
    found = await list_alerts(
        api.cp.bus, tenant=request.tenant, unacked=request.unacked, limit=request.limit or 500
    )
    return pb.ListAlertsReply(alerts=[_alert_msg(a) for a in found])


async def AckAlert(api: _Api, request: Any, context: Any) -> pb.AlertMessage:
    try:
        a = await ack_alert(api.cp.bus, request.id, actor=api._actor_name(), note=request.note)
    except NotFound as exc:
        raise NotFoundError(str(exc)) from exc
    return _alert_msg(a)
