"""``kefu cp rollout start|list|show|pause|resume|promote|rollback|abort``: staged rollouts from
the command line (human tables, or JSON with ``--json``).

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

from kefu.control_plane.tables import ago, table, when
from kefu.errors import KefuError, PermanentError
from kefu.rollout import parse_weight, target_text

__all__ = ["ROLLOUT_VERBS", "add_rollout_args", "show_rollouts"]

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
    )


def show_rollouts(r: Any) -> None:
    rows = getattr(r, "rollouts", None)
    rows = rows if rows is not None else [r]
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
    for line in r.history[-10:]:
        print("  " + line)


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
}


def add_rollout_args(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    verb = path[1]
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
    elif verb == "list":
        p.add_argument("--tenant")
        p.add_argument("--active", action="store_true", help="only rollouts in progress")
    else:
        p.add_argument("rollout_id")
        if verb != "show":
            p.add_argument("--reason", help="why (recorded in the audit log)")
