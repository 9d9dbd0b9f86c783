"""``kefu cp rollout start|list|show|pause|resume|promote|rollback|abort|analysis`` and
``kefu cp rollout policy list|set``: staged rollouts from the command line (human tables, or JSON
with ``--json``).

``start`` takes the target as ``--model slot=name@version`` (repeatable), waves as ``--wave
REGION[,REGION...][:SHARE]`` (repeatable, in order; SHARE = share of each region's nodes,
default 100 %) and steps as ``--steps 1%,5%,25%,50%,100%`` with ``--bake 300`` seconds per step
(or ``--step WEIGHT:BAKE_S`` repeatable for a per-step bake). Example::

    kefu cp rollout start demo-shop --model intent=demo-shop-intent@2026.12.01 \\
        --wave east:50% --wave east,west --steps 5%,25%,100% --bake 600
"""

from __future__ import annotations

import argparse
from typing import Any

from kefu.control_plane.tables import ago, listed, table, when
from kefu.errors import KefuError, PermanentError
from kefu.rollout import parse_weight, target_text

__all__ = ["ROLLOUT_VERBS", "add_rollout_args", "show_analysis", "show_policies", "show_rollouts"]

PHASE_NAMES = {
    "pending": "pending / 待开始",
    "running": "running / 进行中",
    "paused": "paused / 已暂停",
    "promoted": "promoted / 已全量",
    "rolled_back": "rolled back / 已回滚",
    "aborted": "aborted / 已中止",
}


def _models(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        slot, sep, ref = spec.partition("=")
        if not sep or not slot or not ref:
            raise PermanentError(
                f"--model {spec!r}: use slot=name@version, e.g. intent=demo-shop-intent@2 / "
                "格式应为 槽位=模型@版本"
            )
        out[slot.strip()] = ref.strip()
    return out


def _waves(pb: Any, specs: list[str]) -> list[Any]:
    out = []
    for spec in specs:
        regions, sep, share = spec.partition(":")
        try:
            node_share = parse_weight(share) if sep else 1.0
        except KefuError as exc:
            raise PermanentError(f"--wave {spec!r}: {exc}") from exc
        names = [r.strip() for r in regions.split(",") if r.strip()]
        if not names:
            raise PermanentError(f"--wave {spec!r}: name at least one region / 请指定区域")
        out.append(pb.RolloutWave(regions=names, node_share=node_share))
    return out


def _steps(pb: Any, a: argparse.Namespace) -> list[Any]:
    if a.step:
        out = []
        for spec in a.step:
            weight, _, bake = spec.partition(":")
            try:
                out.append(
                    pb.RolloutStep(weight=parse_weight(weight), bake_s=float(bake or a.bake))
                )
            except (KefuError, ValueError) as exc:
                raise PermanentError(f"--step {spec!r}: use WEIGHT:BAKE_S ({exc})") from exc
        return out
    if not a.steps:
        return []  # the control plane's default: 1 % → 5 % → 25 % → 50 % → 100 %
    return [pb.RolloutStep(weight=parse_weight(w), bake_s=a.bake) for w in a.steps.split(",") if w]


def _start(pb: Any, a: argparse.Namespace) -> tuple[str, Any]:
    return "StartRollout", pb.StartRolloutRequest(
        tenant=a.tenant,
        models=_models(a.model or []),
        waves=_waves(pb, a.wave),
        steps=_steps(pb, a),
        reason=a.reason or "",
        config_version=a.config_version or 0,
        policy=a.policy or "",
    )


def show_rollouts(r: Any) -> None:
    rows = listed(r, "rollouts")
    table(
        "rollouts / 灰度发布",
        [
            "rollout",
            "tenant",
            "phase",
            "wave",
            "step",
            "weight",
            "nodes converged",
            "sessions canary/baseline",
            "target",
            "updated",
            "reason",
        ],
        [
            (
                x.id,
                x.tenant,
                PHASE_NAMES.get(x.phase, x.phase),
                f"{x.wave + 1}/{len(x.waves)}",
                f"{x.step + 1}/{len(x.steps)}",
                f"{x.weight:.0%}",
                f"{x.nodes_converged}/{x.nodes_total}",
                f"{x.sessions_canary}/{x.sessions_baseline}",
                target_text(x.target, x.target_config_version),
                ago(x.updated_at),
                x.reason[:80],
            )
            for x in rows
        ],
    )


def _show_one(r: Any) -> None:
    show_rollouts(r)
    table(
        f"waves of {r.id} / 批次",
        ["wave", "regions", "node share"],
        [(i + 1, ", ".join(w.regions), f"{w.node_share:.0%}") for i, w in enumerate(r.waves)],
    )
    table(
        f"nodes of {r.id} / 节点",
        ["node", "region", "wave", "weight", "serving it"],
        [
            (m.node_id, m.region, m.wave + 1, f"{m.weight:.0%}", "yes" if m.converged else "NO")
            for m in r.members
        ],
    )
    if r.excluded_nodes:
        print("kept out (no split capability) / 不支持分流、未纳入: " + ", ".join(r.excluded_nodes))
    print(f"created {when(r.created_at)} by {r.created_by}; leader term {r.term}")
    if r.policy:
        print(
            f"canary analysis policy / 金丝雀分析策略: {r.policy} (kefu cp rollout analysis {r.id})"
        )
    for line in r.history[-10:]:
        print("  " + line)


ACTION_NAMES = {
    "continue": "continue / 继续观察",
    "advance": "advance / 推进",
    "rollback": "roll back / 回滚",
    "pause": "pause / 暂停",
}


def show_analysis(r: Any) -> None:
    """``kefu cp rollout analysis ID``: per metric baseline vs canary, difference, interval."""
    if not r.at:
        print(f"{r.rollout_id}: no analysis yet (policy {r.policy or 'none'}) / 尚无金丝雀分析结果")
        return
    print(
        f"{r.rollout_id}: {ACTION_NAMES.get(r.action, r.action)} — policy {r.policy}, "
        f"{when(r.at)}; sessions canary {r.canary_sessions} / baseline {r.baseline_sessions}"
    )
    for reason in r.reasons:
        print("  " + reason)
    table(
        "metrics (bad-event rates) / 指标（不良事件率）",
        ["metric", "baseline", "canary", "diff", "interval", "p", "tolerance", "status"],
        [
            (
                m.metric,
                f"{m.baseline_rate:.2%} ({m.baseline_events:.0f}/{m.baseline_trials:.0f})",
                f"{m.canary_rate:.2%} ({m.canary_events:.0f}/{m.canary_trials:.0f})",
                f"{m.diff:+.2%}",
                f"{m.lower:+.2%} .. {m.upper:+.2%}" if m.enough else "-",
                f"{m.p_value:.3g}",
                f"{m.tolerance:.1%}",
                "WORSE / 变差"
                if m.worse
                else "ok / 达标"
                if m.within
                else "too few / 样本不足"
                if not m.enough
                else "undecided / 未定",
            )
            for m in r.metrics
        ],
    )
    table(
        "sample ratio / 样本比例",
        ["scope", "canary", "baseline", "expected canary", "chi2", "p", "mismatch"],
        [
            (
                s.scope,
                s.canary,
                s.baseline,
                f"{s.expected_canary:.1f}",
                f"{s.chi2:.2f}",
                f"{s.p_value:.3g}",
                "YES / 失衡" if s.mismatch else "no",
            )
            for s in r.sample_ratio
        ],
    )


SEVERITY_NAMES = {"info": "info / 提示", "warning": "warning / 警告", "critical": "CRITICAL / 严重"}


def show_alerts(r: Any) -> None:
    table(
        "alerts / 告警",
        ["alert", "severity", "when", "tenant", "title", "acknowledged"],
        [
            (
                a.id,
                SEVERITY_NAMES.get(a.severity, a.severity),
                ago(a.at),
                a.tenant or "-",
                a.title,
                f"{a.acked_by} {ago(a.acked_at)}" if a.acked_by else "no / 未确认",
            )
            for a in r.alerts
        ],
    )


def _policy(pb: Any, a: argparse.Namespace) -> tuple[str, Any]:
    """``policy list``, or ``policy set NAME``: the policy built and validated here first."""
    if a.action == "list":
        return "ListCanaryPolicies", pb.ListCanaryPoliciesRequest()
    from kefu.config.yamlsource import load_yaml
    from kefu.control_plane.policy_file import PolicyFlags, build_policy

    if not a.name:
        raise PermanentError("policy set NAME: name the policy / 请指定策略名")
    doc = load_yaml(a.file) if a.file else None
    flags = PolicyFlags(
        tolerance=a.tolerance or (),
        alpha=a.alpha,
        min_trials=a.min_trials,
        min_sessions=a.min_sessions,
        bake=a.bake,
        step_limit=a.step_limit,
    )
    p = build_policy(a.name, doc, flags)
    return "PutCanaryPolicy", pb.CanaryPolicy(
        **p.model_dump(exclude={"tolerance"}), tolerance=p.tolerance
    )


def show_policies(r: Any) -> None:
    policies = r.policies if hasattr(r, "policies") else [r]
    table(
        "canary policies / 金丝雀策略",
        ["policy", "alpha", "advance alpha", "tolerances", "min trials", "min sessions",
         "min bake", "hard stop", "SRM p", "step limit"],
        [
            (
                p.name + (" (stored / 已保存)" if p.stored else ""),
                p.alpha,
                p.advance_alpha,
                ", ".join(f"{k} {v:.0%}" for k, v in sorted(p.tolerance.items())),
                p.min_trials,
                p.min_sessions,
                f"{p.min_bake_s:.0f} s" if p.min_bake_s else "-",
                f"errors ≥ {p.hard_error_rate:.0%} over ≥ {p.hard_error_turns} turns",
                p.srm_p,
                f"{p.step_limit_s:.0f} s" if p.step_limit_s else "none",
            )
            for p in policies
        ],
    )  # fmt: skip


def _command(verb: str) -> dict[str, Any]:
    return {
        "build": lambda pb, a: (
            "CommandRollout",
            pb.CommandRolloutRequest(rollout_id=a.rollout_id, command=verb, reason=a.reason or ""),
        ),
        "show": _show_one,
    }


ROLLOUT_VERBS: dict[tuple[str, ...], dict[str, Any]] = {
    ("rollout", "start"): {"build": _start, "show": _show_one},
    ("rollout", "list"): {
        "build": lambda pb, a: (
            "ListRollouts",
            pb.ListRolloutsRequest(tenant=a.tenant or "", active_only=a.active),
        ),
        "show": show_rollouts,
    },
    ("rollout", "show"): {
        "build": lambda pb, a: ("GetRollout", pb.GetRolloutRequest(rollout_id=a.rollout_id)),
        "show": _show_one,
    },
    **{("rollout", v): _command(v) for v in ("pause", "resume", "promote", "rollback", "abort")},
    ("rollout", "analysis"): {
        "build": lambda pb, a: (
            "GetRolloutAnalysis",
            pb.GetRolloutRequest(rollout_id=a.rollout_id),
        ),
        "show": show_analysis,
    },
    ("alerts", "list"): {
        "build": lambda pb, a: (
            "ListAlerts",
            pb.ListAlertsRequest(tenant=a.tenant or "", unacked=a.unacked, limit=a.limit),
        ),
        "show": show_alerts,
    },
    ("alerts", "ack"): {
        "build": lambda pb, a: ("AckAlert", pb.AckAlertRequest(id=a.alert_id, note=a.note or "")),
        "show": lambda r: show_alerts(type("R", (), {"alerts": [r]})()),
    },
    ("rollout", "policy"): {"build": _policy, "show": show_policies},
}


def add_rollout_args(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    verb = path[1]
    if path[0] == "alerts":
        if verb == "list":
            p.add_argument("--tenant")
            p.add_argument("--unacked", action="store_true", help="only alerts not acknowledged")
            p.add_argument("--limit", type=int, default=100, help="newest N (default 100)")
        else:
            p.add_argument("alert_id")
            p.add_argument("--note", help="why / what was done (kept with the acknowledgement)")
        return
    if verb == "start":
        p.add_argument("tenant")
        p.add_argument("--model", action="append", help="slot=name@version (repeatable)")
        p.add_argument(
            "--config-version",
            type=int,
            help="a tenant config version for the canary arm (`config put --staged` first)",
        )
        p.add_argument(
            "--wave",
            action="append",
            required=True,
            help="REGION[,REGION...][:SHARE of each region's nodes] (repeatable, in order)",
        )
        p.add_argument("--steps", help="in-node weights, e.g. 1%%,5%%,25%%,50%%,100%%")
        p.add_argument("--step", action="append", help="WEIGHT:BAKE_S (repeatable)")
        p.add_argument("--bake", type=float, default=300.0, help="seconds per step (default 300)")
        p.add_argument("--reason", help="why (recorded in the audit log)")
        p.add_argument(
            "--policy",
            help="canary-analysis policy (see `rollout policy list`): steps advance only when "
            "the analysis says so, a significantly worse canary is rolled back",
        )
    elif verb == "policy":
        _policy_args(p)
    elif verb == "list":
        p.add_argument("--tenant")
        p.add_argument("--active", action="store_true", help="only rollouts in progress")
    else:
        p.add_argument("rollout_id")
        if verb not in ("show", "analysis"):
            p.add_argument("--reason", help="why (recorded in the audit log)")


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["list", "set"],
        help="list: built-in and stored policies; set NAME: store one (defaults ← --file ← flags)",
    )
    p.add_argument("name", nargs="?", help="the policy's name (set)")
    p.add_argument("--file", help="a YAML policy file (see docs/control-plane.md)")
    p.add_argument(
        "--tolerance",
        action="append",
        metavar="METRIC=RATE",
        help="how much worse the canary may be, e.g. fallback=3%% (repeatable)",
    )
    p.add_argument("--alpha", type=float, help="family-wise false-rollback bound (default 0.01)")
    p.add_argument("--min-trials", type=int, help="trials per arm before a metric decides")
    p.add_argument("--min-sessions", type=int, help="sessions per arm before advancing")
    p.add_argument("--bake", type=float, help="advance no sooner than this many seconds a step")
    p.add_argument(
        "--step-limit", type=float, help="pause as inconclusive after this many seconds (0: never)"
    )
